"""permessage-deflate negotiated end to end, so that compressed frames can pass through.

The relay forwards the peers' own frames, so both legs must agree on compression: the
CSMS is offered exactly what the charger offered, and the charger is answered with
exactly what the CSMS accepted. Two parameters are added on the way (RFC 7692 allows
both): ``server_no_context_takeover`` in the offer to the CSMS and
``client_no_context_takeover`` in the answer to the charger. With them neither peer
keeps its compression window across messages, so the proxy can take a message out of
either stream (the answer to a CALL it injected) without breaking the next one, and
needs no inflater between messages. Offers of other extensions are not passed on.
"""

from __future__ import annotations

from collections.abc import Sequence

from websockets.exceptions import NegotiationError
from websockets.extensions.base import ClientExtensionFactory, Extension
from websockets.frames import Frame
from websockets.headers import build_extension, parse_extension
from websockets.typing import ExtensionName, ExtensionParameter

from ocproxy.core.wire import Deflate

PERMESSAGE_DEFLATE = ExtensionName("permessage-deflate")
_SERVER_RESETS = "server_no_context_takeover"
_CLIENT_RESETS = "client_no_context_takeover"


class Negotiated(Extension):
    """What the CSMS accepted. Never used on frames: websockets parses none of the relay's."""

    name = PERMESSAGE_DEFLATE

    def __init__(self, params: Sequence[ExtensionParameter]) -> None:
        self.params = list(params)

    def decode(self, frame: Frame, *, max_size: int | None = None) -> Frame:
        raise NotImplementedError("the relay reads its frames itself")  # pragma: no cover

    def encode(self, frame: Frame) -> Frame:
        raise NotImplementedError("the relay sends the peers' frames")  # pragma: no cover


class Offer(ClientExtensionFactory):
    """One of the charger's permessage-deflate offers, made to the CSMS."""

    name = PERMESSAGE_DEFLATE

    def __init__(self, params: Sequence[ExtensionParameter]) -> None:
        self.params = list(params)
        if all(name != _SERVER_RESETS for name, _ in self.params):
            self.params.append((_SERVER_RESETS, None))

    def get_request_params(self) -> Sequence[ExtensionParameter]:
        return self.params

    def process_response_params(
        self, params: Sequence[ExtensionParameter], accepted_extensions: Sequence[Extension]
    ) -> Extension:
        if any(e.name == PERMESSAGE_DEFLATE for e in accepted_extensions):
            raise NegotiationError("permessage-deflate accepted twice")
        return Negotiated(params)


def offers(header_values: Sequence[str]) -> list[Offer]:
    """The charger's permessage-deflate offers, in its order, for the CSMS leg."""
    found: list[Offer] = []
    for value in header_values:
        try:
            parsed = parse_extension(value)
        except Exception:  # a malformed header is not ours to judge: offer nothing from it
            continue
        found += [Offer(params) for name, params in parsed if name == PERMESSAGE_DEFLATE]
    return found


def accepted(extensions: Sequence[Extension]) -> Negotiated | None:
    return next((e for e in extensions if isinstance(e, Negotiated)), None)


def charger_answer(negotiated: Negotiated) -> str:
    """The Sec-WebSocket-Extensions header the charger gets: the CSMS's, resetting too."""
    params = list(negotiated.params)
    if all(name != _CLIENT_RESETS for name, _ in params):
        params.append((_CLIENT_RESETS, None))
    return build_extension([(PERMESSAGE_DEFLATE, params)])


def deflate_of(negotiated: Negotiated | None) -> Deflate | None:
    """How each side compresses on a relayed connection (None: neither does)."""
    if negotiated is None:
        return None
    names = {name for name, _ in negotiated.params}
    # The charger was told client_no_context_takeover; the CSMS chose for itself.
    return Deflate(
        client_no_context_takeover=True, server_no_context_takeover=_SERVER_RESETS in names
    )
