"""The gossip seen-message cache: what it remembers, for how long, and what it costs next to py-libp2p's."""

from __future__ import annotations

import hashlib
import time
import tracemalloc

from libp2p.tools.timed_cache.last_seen_cache import LastSeenCache

from node.p2p.seen_cache import BUCKET_S, KEY_BYTES, WindowedSeenCache

TTL = 720


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def digest(i: int) -> bytes:
    return hashlib.sha256(i.to_bytes(8, "big")).digest()


def test_an_id_is_new_once_and_seen_after() -> None:
    cache = WindowedSeenCache(TTL, Clock())
    assert not cache.has(digest(1))
    assert cache.add(digest(1)) is True
    assert cache.add(digest(1)) is False
    assert cache.has(digest(1)) and not cache.has(digest(2))
    assert cache.length() == 1


def test_an_id_is_kept_for_at_least_the_window_and_at_most_one_bucket_more() -> None:
    for offset in range(0, BUCKET_S, 7):  # wherever in its bucket it was added
        clock = Clock(1_000_000.0 + offset)
        cache = WindowedSeenCache(TTL, clock)
        cache.add(digest(1))
        added = clock.now
        clock.now = added + TTL - 1
        cache.add(digest(2))  # other traffic starts new buckets and drops old ones
        assert cache.length() == 2  # id 1 still held, unasked (asking would refresh it)
        clock.now = added + TTL + BUCKET_S + 1
        assert not cache.has(digest(1))
        assert cache.length() == 1  # only id 2


def test_an_id_seen_again_counts_from_then() -> None:
    clock = Clock()
    cache = WindowedSeenCache(TTL, clock)
    cache.add(digest(1))
    clock.now += TTL - 10
    assert cache.has(digest(1))  # a copy arrives: kept a whole window from now
    clock.now += TTL - 10
    assert cache.has(digest(1))
    clock.now += TTL + BUCKET_S + 1
    assert not cache.has(digest(1))


def test_ids_are_told_apart_by_their_first_bytes_only_and_short_ids_never_match() -> None:
    cache = WindowedSeenCache(TTL, Clock())
    cache.add(digest(1))
    assert cache.has(digest(1)[:KEY_BYTES] + b"\x00" * 17)  # the same 120-bit prefix: the same id
    assert not cache.has(digest(1)[:8])  # a shorter id (a hostile IHAVE) is another key
    assert not cache.has(b"")


def test_a_quiet_cache_forgets_on_the_next_call_without_a_thread() -> None:
    clock = Clock()
    cache = WindowedSeenCache(TTL, clock)
    for i in range(100):
        cache.add(digest(i))
    clock.now += 10 * TTL
    assert not cache.has(digest(5))
    assert cache.length() == 0
    cache.stop()  # py-libp2p's interface; nothing to stop


def _traced_bytes(fill: object) -> int:
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = fill()  # type: ignore[operator]
        used = tracemalloc.get_traced_memory()[0] - before
        del kept
        return used
    finally:
        tracemalloc.stop()


def test_it_holds_an_id_in_less_memory_than_py_libp2ps_cache() -> None:
    n = 50_000

    def fill_ours() -> WindowedSeenCache:
        cache = WindowedSeenCache(TTL, Clock())
        for i in range(n):
            cache.add(digest(i))
        return cache

    def fill_theirs() -> LastSeenCache:
        cache = LastSeenCache(TTL, 3600)
        for i in range(n):
            cache.add(digest(i))
        cache.stop()
        return cache

    ours, theirs = _traced_bytes(fill_ours), _traced_bytes(fill_theirs)
    # ~101 against ~145 bytes as requested (tracemalloc); the allocator rounds their 65-byte key up to 80.
    assert ours < 0.75 * theirs, (ours / n, theirs / n)


def test_ids_seen_again_and_again_are_listed_once_per_bucket() -> None:
    # A hostile IHAVE may name the same known ids many times a second: each is moved to the
    # current bucket once, not listed again on every lookup.
    clock = Clock()
    cache = WindowedSeenCache(TTL, clock)
    for i in range(100):
        cache.add(digest(i))
    clock.now += BUCKET_S
    for _ in range(50):
        for i in range(100):
            assert cache.has(digest(i))
    assert sum(len(ids) for _, ids in cache._buckets) == 200  # once in the first bucket, once in this one
    clock.now += TTL  # the first bucket goes: the ids moved on to the second stay
    cache.add(digest(10_000))
    assert cache.length() == 101


def test_the_window_is_a_duration_on_the_monotonic_clock() -> None:
    # On the wall clock, setting it back an hour would keep every id an hour longer, and forward forget them all.
    assert WindowedSeenCache(TTL)._clock is time.monotonic
