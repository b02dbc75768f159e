"""``ocproxy import``: captures (pcap/pcapng, through tshark) and CSV / JSON-lines logs
recorded as ``ocproxy proxy`` records, with every message's own time."""
