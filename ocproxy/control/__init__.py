"""The control endpoint of a running proxy: live connections, frame stream, live SQL,
injection and closing, behind a token; and its client."""
