"""Compliance audit: OCPP schemas and RPC/connection rules applied to recorded frames."""
