"""What this publisher measured of each node, by address, and the choice weight that follows from it.

Heartbeats are claims; this table holds what the nodes did for us: answered, error, timeout and
busy (declined) counts, time to result, tokens per second, verification passes and failures. A
node's weight (`weight`) is

    success x speed x capacity x penalty

- success: Beta posterior mean, (answered + a) / (answered + failures + a + b), where answered counts
  score tasks too and failures = errors + timeouts + busy_weight x busy. A node never seen starts at
  a / (a + b) (0.5), so it is tried.
- speed: tokens of its results per second of time to result on our clock, shrunk toward a prior
  for prior_seconds: the median speed of the nodes measured so far (prior_tps before any is; lower if
  the node itself claims less), never the claim. An unseen node is so assumed typical, not slow, and
  is tried often enough to be measured. At most SPEED_CAP x that median (the lower middle of an even
  count): a node chooses what its speed is measured from (the tokens it claims, within its result's size
  and the task's budget) and can answer junk at once, and its share of the choice stays bounded.
  Results of score tasks (teacher forcing for verification, many times faster per token than
  generating) count for success but are kept apart (`scored`, `scoring_tps`): they never raise the speed.
- capacity: its claimed `free`, capped at one more than the most tasks of ours it was seen serving at once.
- penalty: when its claimed tps exceeds claim_tolerance x the tps its own stats show
  (completion tokens / execution time), tolerance x measured / claimed, floored at min_penalty.

Counts and sums decay with `half_life_s`. A failed verification bans the node for `verify_ban_seconds`
(`record_verification`). Rows live in SQLite (`path`; in memory when None), at most `max_rows`:
the stalest unbanned rows go first, those of nodes that never answered us before the others. A
storage error is logged and the table keeps working in memory. Its settings and record shapes are
in reputation_records.py.
"""

from __future__ import annotations

import math
import random
import sqlite3
import statistics
import time
from itertools import islice
from pathlib import Path

import structlog

from node.publisher.reputation_records import (
    DECAYED,
    NOTHING_MEASURED,
    NodeRecord,
    ReputationSettings,
    ReputationView,
    Sums,
)

log = structlog.get_logger(__name__)

TYPICAL_EXACT_ROWS = 256  # up to this many nodes the median follows every change at once
SPEED_CAP = 4.0  # a node's speed weighs at most this many times the median node's
MAX_BANS_PASSED = 64  # banned rows an eviction passes over before it scans every row

SCHEMA = "CREATE TABLE IF NOT EXISTS reputation (address TEXT PRIMARY KEY, record TEXT NOT NULL, updated_at REAL)"


class Reputation:
    """Measured service per node, kept in SQLite at `path` (in memory when None)."""

    def __init__(self, path: Path | str | None = None, settings: ReputationSettings | None = None) -> None:
        self.settings = settings or ReputationSettings()
        self._rows: dict[str, NodeRecord] = {}
        self._inflight: dict[str, int] = {}
        self._serving: dict[str, None] = {}  # addresses of rows that answered tasks of ours (`served`, bans aside)
        self._never: dict[str, None] = {}  # the other rows' addresses, least recently updated first (evicted first)
        self._tried_new = NodeRecord(address="")  # decayed outcomes of nodes not yet serving: answered, errors
        self._typical: float | None = None  # the median measured speed (None: not computed yet)
        self._typical_at = 0.0  # monotonic time it was computed
        self._typical_dirty = False  # rows changed since
        self._db: sqlite3.Connection | None = None
        self.store_error: str | None = None  # why the file at `path` could not be used (kept in memory then)
        try:
            if path is not None:
                Path(path).expanduser().parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                # Which nodes served this publisher, and how: owner-only, as the gateway's other files (SQLite
                # gives its -wal and -shm files the database file's mode).
                Path(path).expanduser().touch(mode=0o600, exist_ok=True)
                Path(path).expanduser().chmod(0o600)
            self._db = sqlite3.connect(":memory:" if path is None else str(Path(path).expanduser()), timeout=5)
            self._db.execute("PRAGMA journal_mode=WAL")  # a commit per measurement must stay cheap
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(SCHEMA)
            self._db.commit()
            skipped = 0
            for (text,) in self._db.execute("SELECT record FROM reputation ORDER BY updated_at DESC"):
                try:
                    record = NodeRecord.model_validate_json(text)
                except ValueError:  # one unreadable row (a hand edit, a torn write) costs that row, not the table
                    skipped += 1
                    continue
                if len(self._rows) < self.settings.max_rows:
                    self._rows[record.address] = record
                    self._note_serving(record)
            if skipped:
                log.warning("unreadable reputation rows skipped", path=str(path), rows=skipped)
            for record in sorted(self._rows.values(), key=lambda r: r.updated_at):
                if record.address not in self._serving:
                    self._never[record.address] = None
        except (sqlite3.Error, OSError, ValueError) as exc:
            log.warning("reputation store unavailable; keeping it in memory", path=str(path), error=str(exc))
            self.store_error = f"{type(exc).__name__}: {exc}"
            self._db = None

    def close(self) -> None:
        """Close the database (nothing if none is open)."""
        if self._db is not None:
            self._db.close()
            self._db = None

    # -- measurements ------------------------------------------------------------------------------

    def started(self, address: str) -> None:
        """One of our tasks is now in flight at `address`."""
        self._inflight[address] = self._inflight.get(address, 0) + 1

    def finished(self, address: str) -> None:
        """One of our tasks at `address` is no longer in flight (answered or given up)."""
        left = self._inflight.get(address, 0) - 1
        if left > 0:
            self._inflight[address] = left
        else:
            self._inflight.pop(address, None)

    def record_result(
        self,
        address: str,
        result_seconds: float,
        tokens: int,
        exec_seconds: float,
        claimed_tps: float,
        now: float | None = None,
        scoring: bool = False,
    ) -> None:
        """A result arrived `result_seconds` after sending; its stats say `tokens` in `exec_seconds`.

        `scoring`: the task scored given tokens (a `score` task) rather than generating them; its
        tokens are counted apart and never in the speed or the claim penalty.
        """
        self._note_tried(address, 1.0, 0.0, now)
        record = self._touch(address, now)
        result_seconds = max(result_seconds, 0.0)
        if scoring:
            record.scored += 1
            record.scored_tokens += max(tokens, 0)
            record.score_seconds += result_seconds
        else:
            record.answered += 1
            record.tokens += max(tokens, 0)
            record.result_seconds += result_seconds
            record.exec_seconds += min(max(exec_seconds, 0.0), result_seconds)  # it cannot have worked longer
        if math.isfinite(claimed_tps) and claimed_tps >= 0:
            record.claimed_tps = claimed_tps
        record.peak = max(record.peak, self._inflight.get(address, 1))
        self._save(record)

    def record_error(self, address: str, now: float | None = None) -> None:
        """It returned a (retryable) error, or its stream ended without a result."""
        self._note_tried(address, 0.0, 1.0, now)
        record = self._touch(address, now)
        record.errors += 1
        self._save(record)

    def record_timeout(self, address: str, now: float | None = None) -> None:
        """It took a task and gave no result in time."""
        self._note_tried(address, 0.0, 1.0, now)
        record = self._touch(address, now)
        record.timeouts += 1
        self._save(record)

    def record_declined(self, address: str, now: float | None = None) -> None:
        """It declined a task (busy, ignored, not dialable, or no answer), though its heartbeat made it a
        candidate; counted in the record's `busy` field (its stored and exported name) at `busy_weight`."""
        self._note_tried(address, 0.0, self.settings.busy_weight, now)
        record = self._touch(address, now)
        record.busy += 1
        self._save(record)

    def record_verification(self, node_address: str, passed: bool, now: float | None = None) -> None:
        """A verifier checked one of its results; a failure bans it for `verify_ban_seconds`."""
        now = time.time() if now is None else now
        record = self._touch(node_address, now)
        if passed:
            record.verify_passed += 1
        else:
            record.verify_failed += 1
            record.banned_until = max(record.banned_until, now + self.settings.verify_ban_seconds)
        self._save(record)

    # -- judgement ---------------------------------------------------------------------------------

    def served(self, address: str, now: float | None = None) -> bool:
        """Whether it answered tasks of ours (score tasks too) and is not banned."""
        record = self._rows.get(address)
        return (
            record is not None
            and record.answered + record.scored > 0
            and record.banned_until <= (time.time() if now is None else now)
        )

    def serving(self, k: int, rng: random.Random) -> list[str]:
        """The nodes that answered tasks of ours (banned ones too), at most `k` of them at random."""
        if len(self._serving) <= k:
            return list(self._serving)
        return rng.sample(list(self._serving), k)

    def explore_share(self, now: float | None = None) -> float:
        """The share of a choice nodes not yet measured serving may hold (NodeTable.choose): `explore_share`,
        times the decayed rate at which such nodes answered when tried (the prior: one answer), at least
        `min_explore_share`. Anyone can make keys that never answer; only answering raises it again."""
        s = self.settings
        tried = self._decayed("", time.time() if now is None else now, self._tried_new)
        rate = (tried.answered + 1) / (tried.answered + tried.errors + 1)
        return max(s.min_explore_share, s.explore_share * rate)

    def _note_tried(self, address: str, answered: float, failed: float, now: float | None) -> None:
        """An outcome of a task sent to `address`, counted apart while it has not yet answered one of ours."""
        if address in self._serving:
            return
        tried = self._decayed("", time.time() if now is None else now, self._tried_new)
        tried.answered += answered
        tried.errors += failed
        self._tried_new = tried

    def banned(self, address: str, now: float | None = None) -> bool:
        """Whether the address is banned now (or at `now`)."""
        record = self._rows.get(address)
        return record is not None and record.banned_until > (time.time() if now is None else now)

    def weight(self, address: str, claimed_free: int, claimed_tps: float, now: float | None = None) -> float:
        """The choice weight of a live node that claims `claimed_free` places and `claimed_tps`; 0 when banned."""
        now = time.time() if now is None else now
        record = self._rows.get(address)
        if record is None:
            return self._score(NOTHING_MEASURED, claimed_tps) * min(max(claimed_free, 0), 1)
        if record.banned_until > now:
            return 0.0
        capacity = min(max(claimed_free, 0), record.peak + 1)
        return self._score(self._sums(record, now), claimed_tps) * capacity

    def view(self, address: str, now: float | None = None) -> ReputationView:
        """What is known of `address` (the prior when nothing is)."""
        now = time.time() if now is None else now
        record = self._rows.get(address) or NodeRecord(address=address, updated_at=now)
        sums = self._sums(record, now)
        return ReputationView(
            address=address,
            answered=round(sums.answered, 3),
            errors=round(sums.errors, 3),
            timeouts=round(sums.timeouts, 3),
            busy=round(sums.busy, 3),
            mean_result_s=sums.result_seconds / sums.answered if sums.answered > 0 else None,
            measured_tps=self._measured_tps(sums),
            scored=round(sums.scored, 3),
            scoring_tps=sums.scored_tokens / sums.score_seconds if sums.score_seconds > 0 else None,
            service_tps=self._speed(sums, record.claimed_tps),
            claimed_tps=record.claimed_tps,
            success=self._success(sums),
            penalty=self._penalty(sums, record.claimed_tps),
            peak=record.peak,
            verify_passed=record.verify_passed,
            verify_failed=record.verify_failed,
            banned_until=record.banned_until if record.banned_until > now else None,
            score=0.0 if record.banned_until > now else self._score(sums, record.claimed_tps),
        )

    def views(self, now: float | None = None, limit: int | None = None) -> list[ReputationView]:
        """Remembered nodes, best score first; with `limit`, at most that many, chosen in bounded work
        (anyone can make keys, and each key tried once leaves a row): the nodes that answered us, the
        most recently updated first, then the others the same way."""
        addresses: list[str] | dict[str, NodeRecord] = self._rows
        if limit is not None and len(self._rows) > limit:
            by_recency = sorted(self._rows.values(), key=lambda r: (r.address not in self._serving, -r.updated_at))
            addresses = [r.address for r in by_recency[:limit]]
        return sorted((self.view(a, now) for a in addresses), key=lambda v: (-v.score, v.address))

    def __len__(self) -> int:
        return len(self._rows)

    def _score(self, record: Sums, claimed_tps: float) -> float:
        return self._success(record) * self._speed(record, claimed_tps) * self._penalty(record, claimed_tps)

    def _success(self, record: Sums) -> float:
        s = self.settings
        failures = record.errors + record.timeouts + s.busy_weight * record.busy
        answered = record.answered + record.scored
        return (answered + s.prior_successes) / (answered + failures + s.prior_successes + s.prior_failures)

    def _speed(self, record: Sums, claimed_tps: float) -> float:
        s = self.settings
        typical = self._typical_tps()
        prior = min(typical, claimed_tps) if claimed_tps > 0 else typical
        speed = (record.tokens + prior * s.prior_seconds) / (record.result_seconds + s.prior_seconds)
        return min(speed, SPEED_CAP * typical)

    def _typical_tps(self) -> float:
        """The median speed (tokens per second of time to result) of the nodes that answered and never
        failed a verification (a cheat's speed says nothing of honest service).

        Decay scales a row's tokens and seconds alike, so the ratio, and this cache, hold until a row changes.
        """
        stale = self._typical is None or self._typical_dirty
        if stale and (len(self._rows) <= TYPICAL_EXACT_ROWS or time.monotonic() - self._typical_at >= 1.0):
            # A big table (a sort per result would cost milliseconds) refreshes it at most once a second.
            self._typical_at, self._typical_dirty = time.monotonic(), False
            speeds = [
                r.tokens / r.result_seconds
                for r in self._rows.values()
                if r.answered > 0 and r.result_seconds > 0 and r.verify_failed == 0
            ]
            # The lower middle: of two nodes measured, one answering junk at once must not set it.
            self._typical = statistics.median_low(speeds) if speeds else self.settings.prior_tps
        assert self._typical is not None
        return self._typical

    def _measured_tps(self, record: Sums) -> float | None:
        if record.exec_seconds < self.settings.min_exec_seconds:
            return None
        return record.tokens / record.exec_seconds

    def _penalty(self, record: Sums, claimed_tps: float) -> float:
        measured = self._measured_tps(record)
        if measured is None or claimed_tps <= 0:
            return 1.0
        s = self.settings
        return min(1.0, max(s.min_penalty, s.claim_tolerance * measured / claimed_tps))

    # -- rows --------------------------------------------------------------------------------------

    def _sums(self, record: NodeRecord, now: float) -> Sums:
        factor = 0.5 ** (max(now - record.updated_at, 0.0) / self.settings.half_life_s)
        r = record
        return Sums(
            r.answered * factor,
            r.errors * factor,
            r.timeouts * factor,
            r.busy * factor,
            r.tokens * factor,
            r.result_seconds * factor,
            r.exec_seconds * factor,
            r.scored * factor,
            r.scored_tokens * factor,
            r.score_seconds * factor,
        )

    def _decayed(self, address: str, now: float, record: NodeRecord | None = None) -> NodeRecord:
        record = record or self._rows.get(address)
        if record is None:
            return NodeRecord(address=address, updated_at=now)
        factor = 0.5 ** (max(now - record.updated_at, 0.0) / self.settings.half_life_s)
        return record.model_copy(
            update={name: getattr(record, name) * factor for name in DECAYED} | {"updated_at": now}
        )

    def _touch(self, address: str, now: float | None) -> NodeRecord:
        """The node's row, decayed to now, held (making room for it when it is new)."""
        now = time.time() if now is None else now
        if address not in self._rows:
            self._make_room(now)
        record = self._decayed(address, now)
        self._rows[address] = record
        if address not in self._serving:
            self._never.pop(address, None)
            self._never[address] = None  # to the end: the most recently updated
        return record

    def _make_room(self, now: float) -> None:
        while len(self._rows) >= self.settings.max_rows:
            # The stalest row that is not a ban goes first (evicting a ban would lift it), and of those
            # one of a node that never answered us: anyone can make keys, each failing once for a row.
            # Those rows are kept in the order they were updated, so this is O(1) but for bans passed over.
            victim = next((a for a in islice(self._never, MAX_BANS_PASSED) if self._rows[a].banned_until <= now), None)
            if victim is None:  # every row answered us (or is banned): the stalest of all, by a scan
                rows = self._rows.values()
                unbanned = [r for r in rows if r.banned_until <= now] or list(rows)
                never = [r for r in unbanned if r.address not in self._serving] or unbanned
                victim = min(never, key=lambda r: r.updated_at).address
            del self._rows[victim]
            self._serving.pop(victim, None)
            self._never.pop(victim, None)
            self._typical_dirty = True
            self._write("DELETE FROM reputation WHERE address = ?", (victim,))

    def _note_serving(self, record: NodeRecord) -> None:
        if record.answered + record.scored > 0:
            self._serving[record.address] = None
            self._never.pop(record.address, None)

    def _save(self, record: NodeRecord) -> None:
        self._typical_dirty = True
        self._note_serving(record)
        self._write(
            "INSERT OR REPLACE INTO reputation (address, record, updated_at) VALUES (?, ?, ?)",
            (record.address, record.model_dump_json(), record.updated_at),
        )

    def _write(self, sql: str, params: tuple[object, ...]) -> None:
        if self._db is None:
            return
        try:
            self._db.execute(sql, params)
            self._db.commit()
        except sqlite3.Error as exc:
            log.warning("reputation not saved", error=str(exc))


class ReputationUnreadableError(Exception):
    """The reputation file exists but cannot be read (corrupt, not SQLite, no permission)."""


def read_views(path: Path | str) -> list[ReputationView]:
    """The reputation table stored at `path`, for `compute-node nodes` (empty when there is none).

    ReputationUnreadableError when the file is there and cannot be read.
    """
    path = Path(path).expanduser()
    if not path.exists():
        return []
    table = Reputation(path)
    try:
        if table.store_error is not None:
            raise ReputationUnreadableError(f"cannot read the reputation table {path}: {table.store_error}")
        return table.views()
    finally:
        table.close()
