"""Pure OCPP-J core: parsing, identity, correlation. No I/O, no clock reads."""
