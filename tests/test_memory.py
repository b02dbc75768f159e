"""release_free_memory() gives the pages a storm freed back to the system (glibc)."""

from __future__ import annotations

import os

from ocproxy.memory import release_free_memory


def _rss_kib() -> int:
    with open(f"/proc/{os.getpid()}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_freed_pages_go_back() -> None:
    # Larger than pymalloc's 512 bytes: glibc's malloc holds them, as it holds a
    # handshake's buffers. Keeping one in a hundred pins the heap's top, so that only
    # trimming (not the heap shrinking from its end) can give the rest back.
    blocks = [bytes(1000) for _ in range(150_000)]
    kept = blocks[::100]
    del blocks
    before = _rss_kib()
    assert release_free_memory()
    after = _rss_kib()
    assert before - after > 50_000, (before, after)
    assert len(kept) == 1_500
