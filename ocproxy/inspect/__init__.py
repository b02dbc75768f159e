"""``ocproxy inspect``: an interactive terminal inspector (Textual), live or on recordings.

:mod:`~ocproxy.inspect.filters` parses filter expressions (pure);
:mod:`~ocproxy.inspect.recording` and :mod:`~ocproxy.inspect.live` are the two data
sources (keyset-paged DuckDB queries on read-only recordings; the control endpoint of a
running proxy, in bounded memory); :mod:`~ocproxy.inspect.app` is the application and
:mod:`~ocproxy.inspect.screens` its dialogs; :mod:`~ocproxy.inspect.cli` the command.
"""
