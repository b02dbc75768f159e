"""The asyncio relay: websockets legs, handshake mirroring, sessions, the server."""
