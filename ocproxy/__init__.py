"""ocproxy: a transparent OCPP-J WebSocket proxy that records every frame into DuckDB.

Layout (each layer only imports the ones above it):

- ``ocproxy.core``: pure OCPP-J logic (frames, identity, correlation). No I/O, no clock.
- ``ocproxy.recorder``: the DuckDB recording, one writer thread, numbered migrations.
- ``ocproxy.proxy``: the asyncio/websockets relay; it owns every await.
- ``ocproxy.console``: rich output (live lines, summary).
- ``ocproxy.cli``: the command line, a thin layer over the library.
"""

__version__ = "0.1.0.dev0"
