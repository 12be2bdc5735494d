"""Acceptance rules: does this node accept a valid task?

Pure decisions, no I/O: the publisher allow-list, `pickedNodes`, the bloom
`filter`, the deadline (passed, or further ahead than the node's horizon),
replays, and model matching (only models serving now: not crash-looping, engine
up). A task that is not for this node is ignored with
a reason (a metric label; `TaskIntake` logs it at debug).
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass

from node.wire.bloom import BloomFilter, BloomFilterError
from node.wire.messages import TaskBody
from node.wire.topics import ANY_LOCAL_MODEL, ANY_MODEL, FIRST_MODEL

DEFAULT_HORIZON_S = 3600.0
COMPACT_SLACK = 64  # heap entries of forgotten ids SeenTasks holds beyond twice its live ones


@dataclass(frozen=True)
class Accept:
    """Accept the task and run it on `model`."""

    model: str


@dataclass(frozen=True)
class Ignore:
    """Leave the task to other nodes; `reason` is a stable code (a metric label), `detail` says more."""

    reason: str
    detail: str = ""


def requested_models(requested: list[str], hosted: list[str], local: list[str] | None = None) -> list[str]:
    """The hosted models the requested entries resolve to (`*`: all, `llamacpp`: the locally hosted GGUF
    models, `local`, by default all; `!`: the first configured)."""
    candidates: list[str] = []
    for entry in requested:
        if entry == ANY_MODEL:
            candidates.extend(hosted)
        elif entry == ANY_LOCAL_MODEL:
            candidates.extend(hosted if local is None else [name for name in hosted if name in local])
        elif entry == FIRST_MODEL:
            candidates.extend(hosted[:1])
        elif entry in hosted:
            candidates.append(entry)
    return list(dict.fromkeys(candidates))


class SeenTasks:
    """Task ids remembered at least until their deadline, so a replay is never run twice.

    Bounded: past `max_entries` the entry with the earliest deadline is forgotten first. A forgotten id
    (`discard`: a task answered busy, which may come back) leaves its heap entry behind until the
    heap holds more than twice the live ids (plus `COMPACT_SLACK`); then the heap is rebuilt, so the
    same task replayed while the node is busy costs no entry per replay.
    """

    def __init__(self, max_entries: int = 100_000) -> None:
        self._deadlines: dict[str, int] = {}
        self._by_deadline: list[tuple[int, str]] = []
        self._max_entries = max_entries

    def __contains__(self, task_id: str) -> bool:
        return task_id in self._deadlines

    def __len__(self) -> int:
        return len(self._deadlines)

    def add(self, task_id: str, deadline_ns: int, now_ns: int) -> bool:
        """Remember a task id; False if it was already known."""
        self.prune(now_ns)
        if task_id in self._deadlines:
            return False
        while len(self._deadlines) >= self._max_entries:
            deadline, oldest = heapq.heappop(self._by_deadline)
            if self._deadlines.get(oldest) == deadline:  # else a forgotten id's entry (it may be back since)
                del self._deadlines[oldest]
        self._deadlines[task_id] = deadline_ns
        heapq.heappush(self._by_deadline, (deadline_ns, task_id))
        return True

    def discard(self, task_id: str) -> None:
        """Forget a task id (it was not accepted after all); its heap entry goes at its deadline, or sooner."""
        self._deadlines.pop(task_id, None)
        if len(self._by_deadline) > 2 * len(self._deadlines) + COMPACT_SLACK:
            self._by_deadline = [(deadline, kept) for kept, deadline in self._deadlines.items()]
            heapq.heapify(self._by_deadline)

    def prune(self, now_ns: int) -> None:
        """Forget the task ids whose deadline is before `now_ns`."""
        while self._by_deadline and self._by_deadline[0][0] < now_ns:
            deadline, task_id = heapq.heappop(self._by_deadline)
            if self._deadlines.get(task_id) == deadline:
                del self._deadlines[task_id]


class Acceptance:
    """Decides, for each valid task, whether this node accepts it."""

    def __init__(
        self,
        address: str,
        hosted_models: list[str],
        publishers: list[str] | None = None,
        rng: random.Random | None = None,
        seen: SeenTasks | None = None,
        horizon_s: float = DEFAULT_HORIZON_S,
        serving: Callable[[], list[str]] | None = None,
        local_models: list[str] | None = None,
        has_room: Callable[[str], bool] | None = None,
    ) -> None:
        self._address = address.lower()
        self._address_bytes = bytes.fromhex(self._address)
        self._hosted = list(hosted_models)
        self._publishers = {p.lower() for p in publishers} if publishers else None
        self._rng = rng or random.Random()
        self.seen = seen if seen is not None else SeenTasks()  # an empty one passed is falsy (it has a length)
        self._horizon_ns = int(horizon_s * 1e9)
        # The hosted models serving now (what heartbeats advertise): a crash-looping
        # model or a down remote engine takes no task, so another node can.
        self._serving = serving
        # The hosted models served from a GGUF file here (what `llamacpp` names); None: all of them.
        self._local = list(local_models) if local_models is not None else None
        # Whether a model has a running or queue place now: the random pick prefers those, so a task
        # that names several models is not answered busy for one while another has room.
        self._has_room = has_room

    def decide(self, sender: str, task: TaskBody, now_ns: int) -> Accept | Ignore:
        """Accept (and remember) the task, or say why not."""
        if self._publishers is not None and sender.lower() not in self._publishers:
            return Ignore("publisher_not_allowed", f"publisher {sender} is not in the allow-list")
        if task.picked_nodes is not None and self._address not in {
            n.lower().removeprefix("0x") for n in task.picked_nodes
        }:
            return Ignore("not_picked")
        if task.filter is not None:
            try:
                bloom = BloomFilter.from_hex(task.filter.hex, task.filter.hashes)
            except BloomFilterError as exc:
                return Ignore("malformed_filter", str(exc))
            if not bloom.contains(self._address_bytes):
                return Ignore("not_in_filter")
        if task.deadline <= now_ns:
            return Ignore("deadline_passed")
        if task.deadline - now_ns > self._horizon_ns:
            return Ignore(
                "deadline_too_far",
                f"deadline is {(task.deadline - now_ns) / 1e9:.0f} s ahead, beyond this node's {self._horizon_ns / 1e9:g} s",
            )
        if task.task_id in self.seen:
            return Ignore("duplicate")
        candidates = requested_models(task.input.model, self._hosted, self._local)
        if not candidates:
            return Ignore("no_model", f"no hosted model matches {task.input.model}")
        if self._serving is not None:
            serving = self._serving()
            if not (candidates := [name for name in candidates if name in serving]):
                return Ignore("model_unavailable", f"the hosted models matching {task.input.model} are not serving now")
        if self._has_room is not None and len(candidates) > 1:
            candidates = [name for name in candidates if self._has_room(name)] or candidates
        model = self._rng.choice(candidates)
        if not self.seen.add(task.task_id, task.deadline, now_ns):
            return Ignore("duplicate")
        return Accept(model)
