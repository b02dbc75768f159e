"""The ``ocproxy.inject`` command: send an OCPP CALL on a live flow and keep its answer.

The CALL goes out through mitmproxy's own ``inject.websocket`` command, so mitmproxy
marks it injected and the addon records it with ``injected = true``. Its message id is
remembered on the flow's :class:`~ocproxy.mitm.flows.Live` until the answer comes back
the other way; that answer is recorded (injected too) and dropped, since the peer
that gets it never sent the CALL.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterable

from mitmproxy import ctx, exceptions, http

from ocproxy.core.frames import Direction, MessageType, parse_frame
from ocproxy.mitm.flows import Live

# The addon's logger: these lines are the addon's, wherever they are written from.
logger = logging.getLogger("ocproxy.mitm.addon")

_ANSWERS = frozenset({int(MessageType.CALLRESULT), int(MessageType.CALLERROR)})

INJECT_HELP = (
    "Send the OCPP CALL [2, id, ACTION, PAYLOAD] on a live OCPP WebSocket flow, with a fresh "
    'UUID as message id: to the charger, or to the CSMS with a last argument "--to csms" (or '
    '"csms"). PAYLOAD is a JSON object; quote it with single quotes. The CALL and its answer '
    "are recorded with injected = true, and the answer is not forwarded. Returns the id."
)


def injection_target(words: Iterable[str]) -> Direction:
    """Where ``ocproxy.inject`` sends its CALL.

    Nothing or ``charger``: to the charger; ``csms``, ``--to csms`` or ``--to=csms``: to
    the CSMS (``--to charger`` works too).
    """
    tokens = [w for word in words for w in word.replace("=", " ").split()]
    if tokens[:1] == ["--to"]:
        tokens = tokens[1:]
    if not tokens or tokens == ["charger"]:
        return Direction.TO_CHARGER
    if tokens == ["csms"]:
        return Direction.TO_CSMS
    raise ValueError(f"expected nothing, 'csms' or '--to csms|charger', got {' '.join(words)!r}")


def send_call(live: Live, flow: http.HTTPFlow, action: str, payload: str, to: Iterable[str]) -> str:
    """Send the CALL on ``flow`` and remember it on ``live``; returns its message id.

    Raises mitmproxy's CommandError for arguments it cannot use, which mitmproxy shows
    to whoever ran the command.
    """
    try:
        target = injection_target(to)
        body = json.loads(payload)
    except ValueError as exc:
        raise exceptions.CommandError(f"ocproxy.inject: {exc}") from exc
    if not isinstance(body, dict):
        raise exceptions.CommandError("ocproxy.inject: the payload must be a JSON object")
    message_id = str(uuid.uuid4())
    frame = json.dumps([2, message_id, action, body], separators=(",", ":"), ensure_ascii=False)
    live.pending[message_id] = target
    to_client = target is Direction.TO_CHARGER
    ctx.master.commands.call("inject.websocket", flow, to_client, frame.encode(), True)
    peer = "charger" if to_client else "CSMS"
    logger.info(
        f"ocproxy: injected {action} CALL {message_id} to the {peer} of {live.opened.identity!r}"
    )
    return message_id


def answers_injected(live: Live, content: bytes, direction: Direction) -> bool:
    """Whether this message answers a CALL sent by ocproxy.inject (and forget that CALL)."""
    frame = parse_frame(content)
    if frame.message_type not in _ANSWERS or frame.message_id is None:
        return False
    sent_to = live.pending.get(frame.message_id)
    if sent_to is None or sent_to is direction:  # an answer travels the other way
        return False
    del live.pending[frame.message_id]
    return True
