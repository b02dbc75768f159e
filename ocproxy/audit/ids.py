"""The message ids a sender has used, in bounded memory, for the uniqueness rule.

OCPP wants every id unique per sender (1.6: on the connection; 2.x: across every
connection of the identity). Remembering every id is not possible for a fleet: a charger
sending a Heartbeat a minute sends 10,000 ids a week, which as a dict of strings is
~1.7 MB per charger. So :class:`IdMemory` keeps, per sender:

- the last :data:`WINDOW` ids as 8-byte hashes packed in one ``bytearray`` (8 bytes an
  id; Python's string hash, stable within the process; two different ids share one with
  odds of about ``WINDOW / 2**64``);
- numeric ids (counters: the usual scheme) as ranges, the last :data:`RANGES` of them,
  so that a counter starting again from 1 on a new connection of the same identity is
  caught however long ago 1 was sent.

A reused id older than both is not found: the audit documents the window. The ids of
the last :data:`UNANSWERED` CALLs still without an answer are kept as they are: 2.1 lets
a retry reuse such an id, on the same connection or the next.
"""

from __future__ import annotations

import struct
from array import array

WINDOW = 128  # ids remembered exactly, per sender (scanning them: ~0.4 us a CALL)
RANGES = 16  # runs of consecutive numeric ids remembered, per sender
UNANSWERED = 16  # ids of CALLs without an answer (yet) remembered, per sender
_HASH = struct.Struct("<q")  # hash() is a signed 64-bit integer on 64-bit builds
_WIDTH = _HASH.size
_MAX_DIGITS = 18  # fits a signed 64-bit integer


class IdMemory:
    """The ids one sender used; :meth:`add` each, ask :meth:`seen` before adding."""

    __slots__ = ("_hashes", "_ranges", "_unanswered")

    def __init__(self) -> None:
        self._hashes = bytearray()
        self._unanswered: dict[str, None] = {}  # insertion-ordered: the oldest first
        # Flat [low, high, low, high, ...], oldest first; None until a numeric id comes.
        self._ranges: array[int] | None = None

    def seen(self, message_id: str) -> bool:
        number = _number(message_id)
        ranges = self._ranges
        if number is not None and ranges is not None:
            for i in range(0, len(ranges), 2):
                if ranges[i] <= number <= ranges[i + 1]:
                    return True
        hashes = self._hashes
        key = _HASH.pack(hash(message_id))
        at = hashes.find(key)
        while at != -1 and at % _WIDTH:  # a match across two hashes is no match
            at = hashes.find(key, at + 1)
        return at != -1

    def unanswered(self, message_id: str) -> bool:
        """The CALL that last used this id got no answer (or none yet)."""
        return message_id in self._unanswered

    def answered(self, message_id: str) -> None:
        self._unanswered.pop(message_id, None)

    def add(self, message_id: str, *, call: bool = True) -> None:
        """Remember an id; ``call``: that of a CALL, unanswered until :meth:`answered`."""
        if call:
            unanswered = self._unanswered
            unanswered.pop(message_id, None)
            unanswered[message_id] = None
            if len(unanswered) > UNANSWERED:
                del unanswered[next(iter(unanswered))]
        hashes = self._hashes
        hashes += _HASH.pack(hash(message_id))
        if len(hashes) > WINDOW * _WIDTH:
            del hashes[:_WIDTH]  # cheap: a bytearray drops its head without copying
        number = _number(message_id)
        if number is not None:
            self._add_number(number)

    def _add_number(self, number: int) -> None:
        ranges = self._ranges
        if ranges is None:
            self._ranges = array("q", (number, number))
            return
        if ranges[-1] + 1 == number:  # the counter goes on
            ranges[-1] = number
            return
        ranges.extend((number, number))
        if len(ranges) > 2 * RANGES:
            del ranges[:2]


def _number(message_id: str) -> int | None:
    """The id as a counter value: ASCII digits, no leading zero ("007" is not "7")."""
    if (
        message_id.isdigit()
        and message_id.isascii()
        and len(message_id) <= _MAX_DIGITS
        and (message_id[0] != "0" or message_id == "0")
    ):
        return int(message_id)
    return None
