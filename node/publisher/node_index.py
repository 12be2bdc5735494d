"""Which nodes claim which model, for node choice that looks at a bounded number of them.

Anyone can make keys, and every key may heartbeat, claiming every model: a choice that weighed each
node of a full table (10,000) spent ~90 ms of the event loop. `ModelIndex` keeps, per model named in
a heartbeat, the addresses that claim it (and all addresses, for `*`, `!` and `llamacpp`) in sets
that draw a random member in O(1); a choice draws a bounded sample from them instead of scanning the
table. The table drops the entry of a node a draw finds silent (its next heartbeat puts it back),
so each heartbeat pays for at most one such drop per model it names.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator

from node.wire.topics import ANY_LOCAL_MODEL, ANY_MODEL, FIRST_MODEL

WILDCARDS = (ANY_MODEL, ANY_LOCAL_MODEL, FIRST_MODEL)


class AddressSet:
    """A set of addresses with O(1) add, discard and random draw."""

    def __init__(self) -> None:
        self._items: list[str] = []
        self._at: dict[str, int] = {}

    def add(self, address: str) -> None:
        """Add the address (nothing if held)."""
        if address not in self._at:
            self._at[address] = len(self._items)
            self._items.append(address)

    def discard(self, address: str) -> None:
        """Remove the address (nothing if not held)."""
        index = self._at.pop(address, None)
        if index is None:
            return
        last = self._items.pop()
        if index < len(self._items):
            self._items[index] = last
            self._at[last] = index

    def draw(self, rng: random.Random) -> str:
        """An address drawn at random."""
        return self._items[rng.randrange(len(self._items))]

    def __contains__(self, address: object) -> bool:
        return address in self._at

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._items))


class ModelIndex:
    """Addresses by the models their last heartbeat named."""

    def __init__(self) -> None:
        self._by_model: dict[str, AddressSet] = {}
        self._all = AddressSet()

    def add(self, address: str, models: Iterable[str]) -> None:
        """Index the address under each of its models."""
        self._all.add(address)
        for model in models:
            self._by_model.setdefault(model, AddressSet()).add(address)

    def discard(self, address: str, models: Iterable[str]) -> None:
        """Remove the address from under each of its models."""
        self._all.discard(address)
        for model in models:
            members = self._by_model.get(model)
            if members is not None:
                members.discard(address)
                if not members:
                    del self._by_model[model]

    def count(self, model: str) -> int:
        """How many indexed addresses claim `model` (live or not: see the module doc)."""
        members = self._by_model.get(model)
        return len(members) if members is not None else 0

    def pools(self, wanted: list[str]) -> list[AddressSet]:
        """The sets whose members serve one of `wanted` (every address for a wildcard)."""
        if any(entry in WILDCARDS for entry in wanted):
            return [self._all]
        return [self._by_model[m] for m in dict.fromkeys(wanted) if m in self._by_model]

    def sample(
        self, wanted: list[str], k: int, rng: random.Random, usable: Callable[[str], bool | None]
    ) -> tuple[list[str], float]:
        """Up to `k` addresses serving one of `wanted` for which `usable` is True, at random, and how
        many addresses of the pools each stands for (1.0 when the pools were read whole).

        `usable(address)`: True to take it, False to pass it over (excluded, banned), None when it
        took the address out of the index (a silent node). Pools of up to `k` addresses in all are read
        whole; larger ones get random draws, at most 4k of them passed over (drops are not counted:
        each is paid for by the heartbeat that added it).
        """
        pools = [p for p in self.pools(wanted) if len(p)]
        total = sum(map(len, pools))
        if total <= k:
            found: dict[str, None] = {}
            for pool in pools:
                for address in pool:
                    if usable(address):
                        found[address] = None
            return list(found), 1.0
        taken: dict[str, None] = {}
        seen: set[str] = set()
        passed = 0
        while len(taken) < k and passed < 4 * k:
            pools = [p for p in pools if len(p)]
            if not pools:
                break
            weights = [len(p) for p in pools]
            pool = pools[0] if len(pools) == 1 else rng.choices(pools, weights=weights)[0]
            address = pool.draw(rng)
            if address in seen:
                passed += 1
                continue
            verdict = usable(address)
            if verdict is None:
                continue
            seen.add(address)
            if verdict:
                taken[address] = None
            else:
                passed += 1
        remaining = sum(len(p) for p in pools)
        return list(taken), max(remaining / max(len(seen), 1), 1.0)
