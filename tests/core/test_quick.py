"""quick_frame(): the four facts of a plain CALL or CALLRESULT, or None for the rest."""

from __future__ import annotations

import pytest

from ocproxy.core.frames import Call, CallResult, parse_frame
from ocproxy.core.quick import quick_frame


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b'[2,"1","Heartbeat",{}]', (2, "1", "Heartbeat", "{}")),
        (b'[3,"1",{"currentTime":"x"}]', (3, "1", None, '{"currentTime":"x"}')),
        # The payload as the peer wrote it: spacing and number spelling kept.
        (b'[2,"7","A", { "n" : 1.50 } ]', (2, "7", "A", '{ "n" : 1.50 }')),
        (b'[2,"id{1}","A{",{"a":"}"}]', (2, "id{1}", "A{", '{"a":"}"}')),
        (b'[2,"a\\"b","A",{}]', (2, 'a"b', "A", "{}")),
        (b'[3,"1",{"a":1e999}]\n', (3, "1", None, '{"a":1e999}')),
        (b'[2,"' + b"x" * 36 + b'","A",{}]', (2, "x" * 36, "A", "{}")),
    ],
)
def test_plain_frames(data: bytes, expected: tuple[object, ...]) -> None:
    assert quick_frame(data) == expected
    frame = parse_frame(data)
    assert isinstance(frame, Call | CallResult)
    assert frame.message_id == expected[1]


@pytest.mark.parametrize(
    "data",
    [
        b'[ 2,"1","A",{}]',  # whitespace before the type: the general path's
        b'[2, "1","A",{}]',  # ... or before the id
        b'[4,"1","E","d",{}]',  # a CALLERROR
        b'[2,"1","A",[]]',  # a payload that is no object
        b'[3,"1",null]',
        b'[2,"1","A",{}',  # broken JSON
        b'[2,"1","A",{"a":NaN}]',
        b'[2,"1","A",{}] x',
        b'[2,"1","A",{},1]',  # wrong arity
        b'[3,"1","A",{}]',
        b'[2,1,"A",{}]',
        b'[2,"\xff","A",{}]',  # invalid UTF-8, in a string msgspec reads
        b'[2,"1","A",{"a":"\xff"}]',  # ... and in the payload it only skips
        b'[2,"\\u0041","A",{}]',  # a \u escape (it may be a lone surrogate)
        b'[2,"1","A",{"a":"\\ud800"}]',
        b'[2,"' + b"x" * 37 + b'","A",{}]',  # an id over 36 characters
        b'[2,"1","A",{"a":' + b"[" * 5000 + b"]" * 5000 + b"}]",  # nested too deep
        b"",
        b"[",
    ],
)
def test_everything_else_takes_the_general_path(data: bytes) -> None:
    assert quick_frame(data) is None
