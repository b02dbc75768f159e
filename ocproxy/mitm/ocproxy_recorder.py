"""The script mitmproxy loads: ``mitmdump -s "$(ocproxy addon-path)" --set ocproxy_db=FILE``.

Records every OCPP WebSocket flow into an ocproxy recording (see
:mod:`ocproxy.mitm.addon` for the options and the ``ocproxy.inject`` command).
"""

from ocproxy.mitm.addon import OcproxyRecorder

addons = [OcproxyRecorder()]
