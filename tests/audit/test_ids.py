"""The bounded memory of message ids behind the uniqueness rule (ocproxy.audit.ids)."""

from __future__ import annotations

import uuid

from ocproxy.audit.ids import RANGES, UNANSWERED, WINDOW, IdMemory


def test_an_id_is_seen_once_added() -> None:
    memory = IdMemory()
    assert not memory.seen("abc")
    memory.add("abc")
    assert memory.seen("abc")
    assert not memory.seen("abd")


def test_exact_window_forgets_the_oldest_non_numeric_ids() -> None:
    memory = IdMemory()
    ids = [str(uuid.UUID(int=i)) for i in range(WINDOW + 10)]
    for message_id in ids:
        memory.add(message_id)
    assert all(memory.seen(message_id) for message_id in ids[10:])
    assert not any(memory.seen(message_id) for message_id in ids[:10])


def test_memory_stays_bounded_however_many_ids() -> None:
    memory = IdMemory()
    for i in range(20 * WINDOW):
        memory.add(f"id-{i}")
        memory.add(str(i * 3))  # numeric but never consecutive: one range each
    assert len(memory._hashes) == WINDOW * 8
    assert memory._ranges is not None
    assert len(memory._ranges) == 2 * RANGES


def test_a_counter_is_remembered_as_a_range_beyond_the_window() -> None:
    """A charger counting 1, 2, 3, ... that starts again from 1 (a reboot, 2.x's
    identity-wide scope) is caught however long ago 1 was sent."""
    memory = IdMemory()
    for i in range(1, 10 * WINDOW):
        assert not memory.seen(str(i))
        memory.add(str(i))
    assert memory.seen("1")
    assert memory.seen(str(5 * WINDOW))
    assert not memory.seen(str(10 * WINDOW))
    assert memory._ranges is not None
    assert list(memory._ranges) == [1, 10 * WINDOW - 1]


def test_leading_zeros_are_other_ids_than_the_number() -> None:
    memory = IdMemory()
    memory.add("7")
    assert not memory.seen("007")
    memory.add("007")
    assert memory.seen("007")
    assert memory._ranges is not None
    assert list(memory._ranges) == [7, 7]


def test_unanswered_ids_until_answered_and_bounded() -> None:
    memory = IdMemory()
    memory.add("a")
    memory.add("b", call=False)  # a SEND: never answered, never a retry
    assert memory.unanswered("a")
    assert not memory.unanswered("b")
    memory.answered("a")
    assert not memory.unanswered("a")
    for i in range(UNANSWERED + 5):
        memory.add(f"c{i}")
    assert not memory.unanswered("c0")
    assert memory.unanswered(f"c{UNANSWERED + 4}")
