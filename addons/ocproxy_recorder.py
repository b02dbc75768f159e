"""mitmproxy addon recording OCPP traffic into an ocproxy recording, for use from the repository.

    mitmdump -s addons/ocproxy_recorder.py --set ocproxy_db=site.duckdb \
        --mode reverse:http://127.0.0.1:8180@9000

A shim: the addon itself ships inside the installed package (``ocproxy addon-path``
prints its path); this file only re-exports it, so both load the same code.
"""

from ocproxy.mitm.ocproxy_recorder import addons

__all__ = ["addons"]
