"""A short startup benchmark of a loaded model, cached across restarts.

The numbers (prompt and generation tokens per second) are what the node
advertises in its heartbeats. The cache key covers everything the speed depends
on: the model file (name, size, mtime), the llama.cpp build (version and CPU/GPU
features) and the runtime options, so a restart with the same setup does not
measure again while a new build, file or thread count does.

Where results are kept is a SpeedStore: a CacheFile (JSON) in the process that owns
it, or ReportedSpeeds in a process that is handed the entries and reports what it
measures to their owner.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

import structlog
from pydantic import BaseModel, Field, ValidationError

from models.requests import ChatMessage, GenerationRequest

if TYPE_CHECKING:  # the remote benchmark shares this cache without loading llama.cpp
    from models.batching import BatchedLlamaModel

log = structlog.get_logger(__name__)

# A cache holds a few hundred bytes per model and setup; past this it is not one this code wrote.
MAX_CACHE_BYTES = 1 << 20
# An entry's field in place of a figure: measure this model before it serves (node/daemon/processes/handle.py).
MEASURE_BEFORE_READY = "measure_before_ready"

# About 128 prompt tokens with a typical chat template; the text is fixed so
# results are comparable between runs and nodes.
_PROMPT = (
    "Summarise the following notes in one sentence. The harbour town wakes early: fishing boats leave "
    "before dawn, the bakery opens at five, and the market fills with crates of mackerel, crab and "
    "fresh bread. By noon the tourists arrive by ferry, the cafes put out their chairs, and the old "
    "lighthouse keeper tells the same three stories to anyone who listens. In the evening the boats "
    "return, the gulls circle the pier, and the town gathers by the water to watch the sun go down "
    "behind the cliffs while children race along the sea wall."
)
_GENERATED_TOKENS = 48


class BenchResult(BaseModel):
    """Measured speed of one model on this machine."""

    prompt_tps: float = Field(gt=0, allow_inf_nan=False)
    generation_tps: float = Field(gt=0, allow_inf_nan=False)
    measured_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


async def benchmark(model: BatchedLlamaModel) -> BenchResult:
    """Measure prompt and generation speed (~128 prompt tokens, 48 generated).

    A seeded request makes the runtime evaluate the whole prompt (no prefix
    cache), so the prompt speed is real. A warm-up goes first: one short decode
    touches every weight and starts the thread pool, which a longer prompt does not
    do better (it cost ~0.1 s more of the first start for the same numbers).
    """
    await model.generate(GenerationRequest(messages=[ChatMessage(role="user", content="Hi.")], max_tokens=2, seed=0))
    messages = [ChatMessage(role="user", content=_PROMPT)]
    result = await model.generate(
        GenerationRequest(messages=messages, max_tokens=_GENERATED_TOKENS, ignore_eos=True, seed=0)
    )
    # The first generated token comes from the prompt's own decode, so the
    # generation phase decodes one token fewer than it returns.
    decoded = max(result.completion_tokens - 1, 1)
    bench = BenchResult(
        prompt_tps=result.prompt_tokens / max(result.prompt_seconds, 1e-6),
        generation_tps=decoded / max(result.generation_seconds, 1e-6),
    )
    log.info(
        "model benchmarked",
        model=model.name,
        prompt_tokens=result.prompt_tokens,
        prompt_tps=round(bench.prompt_tps, 1),
        generation_tps=round(bench.generation_tps, 1),
    )
    return bench


def build_fingerprint() -> str:
    """The llama.cpp build: package version plus the compiled CPU/GPU features."""
    import llama_cpp

    info = llama_cpp.llama_print_system_info()
    text = info.decode("utf-8", "replace") if isinstance(info, bytes) else str(info)
    return f"llama-cpp-python {llama_cpp.__version__} | {text.strip()}"


class _Benchmarked(Protocol):
    @property
    def name(self) -> str: ...


M = TypeVar("M", bound=_Benchmarked)


class SpeedStore(Protocol):
    """Where a ResultCache keeps its entries (key -> a BenchResult's JSON fields and the model's name)."""

    def entries(self) -> dict[str, dict[str, object]]:
        """Every stored entry."""
        ...

    def put(self, key: str, entry: dict[str, object]) -> None:
        """Store one entry (OSError if it cannot)."""
        ...


class CacheFile:
    """Entries in a JSON file, replaced atomically at each put: the daemon's and the CLI's store."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def entries(self) -> dict[str, dict[str, object]]:
        """The file's entries ({} when it is missing or unreadable, with a warning for the latter; an entry that
        is not an object is left out)."""
        try:
            data = json.loads(_read_cache_file(self.path))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("benchmark cache unreadable", path=str(self.path), error=str(exc))
            return {}
        if not isinstance(data, dict):
            return {}
        return {key: entry for key, entry in data.items() if isinstance(entry, dict)}

    def put(self, key: str, entry: dict[str, object]) -> None:
        """Store one entry (atomically replacing the file; created 0600)."""
        data = self.entries()
        data[key] = entry
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(data, handle, indent=1, sort_keys=True)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


class ReportedSpeeds:
    """Entries handed over by another process, in memory; a put goes to `report(key, result)`.

    An execution process's store: the daemon owns the cache file (in its private data dir), sends its
    entries in `configure` and decides which measured figures it keeps.
    """

    def __init__(self, entries: dict[str, dict[str, object]], report: Callable[[str, BenchResult], None]) -> None:
        self._entries = dict(entries)
        self._report = report

    def entries(self) -> dict[str, dict[str, object]]:
        """The entries handed over, and those put since."""
        return self._entries

    def put(self, key: str, entry: dict[str, object]) -> None:
        """Keep the entry for this process's life and report it."""
        self._entries[key] = entry
        self._report(key, BenchResult.model_validate(entry))


def stored_result(entry: dict[str, object] | None) -> BenchResult | None:
    """The result an entry holds; None for none, a MEASURE_BEFORE_READY request or an entry that is not valid."""
    if entry is None:
        return None
    try:
        return BenchResult.model_validate(entry)
    except ValidationError:
        return None


class ResultCache(Generic[M]):
    """Benchmark results keyed by what the measured speed depends on, in a SpeedStore (a path: a CacheFile).

    A subclass says what the key is (`key`) and how to measure (`_benchmark`);
    a result older than `max_age` (when set) counts as missing.
    """

    max_age: timedelta | None = None

    def __init__(self, store: SpeedStore | Path) -> None:
        self.store = CacheFile(store) if isinstance(store, Path) else store

    def key(self, model: M) -> str:
        """What the measured speed depends on, hashed."""
        raise NotImplementedError

    async def _benchmark(self, model: M) -> BenchResult:
        raise NotImplementedError

    def get(self, model: M) -> BenchResult | None:
        """The cached result for this model and setup, if any (and fresh enough)."""
        result = stored_result(self.store.entries().get(self.key(model)))
        if result is None:
            return None
        if self.max_age is not None and datetime.now(UTC) - result.measured_at > self.max_age:
            return None
        return result

    def put(self, model: M, result: BenchResult) -> None:
        """Store a result."""
        self.store.put(self.key(model), {"model": model.name, **result.model_dump(mode="json")})

    def measure_before_ready(self, model: M) -> bool:
        """Whether the store asks for this model's speed before it serves (MEASURE_BEFORE_READY: its last figure,
        measured while it served, was not kept)."""
        return self.store.entries().get(self.key(model), {}).get(MEASURE_BEFORE_READY) is True

    async def measure(self, model: M, fresh: bool = False, at_least: float | None = None) -> BenchResult:
        """The cached result, or a new benchmark stored for next time (`fresh`: always a new one; `at_least`:
        a cached generation speed under it is measured again: the machine may have been busy then)."""
        cached = None if fresh else self.get(model)
        if cached is not None and at_least is not None and cached.generation_tps < at_least:
            log.info("cached speed too low: measured again", model=model.name, generation_tps=cached.generation_tps)
            cached = None
        if cached is not None:
            log.info(
                "model benchmark cached",
                model=model.name,
                prompt_tps=round(cached.prompt_tps, 1),
                generation_tps=round(cached.generation_tps, 1),
            )
            return cached
        result = await self._benchmark(model)
        try:
            self.put(model, result)
        except OSError as exc:  # a full disk or a read-only data dir: measured all the same, measured again next start
            log.warning("model benchmark not cached", model=model.name, error=str(exc))
        return result


class BenchmarkCache(ResultCache["BatchedLlamaModel"]):
    """Local results, keyed by model file + llama.cpp build + options."""

    def key(self, model: BatchedLlamaModel) -> str:
        """What the measured speed depends on, hashed."""
        stat = model.path.stat()
        options = model.options
        parts = {
            "file": model.path.name,
            "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
            "build": build_fingerprint(),
            "threads": options.threads(),
            "gpu_layers": options.gpu_layers(),
            "n_batch": options.n_batch,
            "flash_attn": options.flash_attn,
            "kv_cache_type": options.kv_cache_type,
        }
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]

    async def _benchmark(self, model: BatchedLlamaModel) -> BenchResult:
        return await benchmark(model)


def _read_cache_file(path: Path) -> str:
    """The cache file's text, if it is a regular file of at most MAX_CACHE_BYTES (OSError otherwise).

    The daemon's data dir is its own, but an operator's copy or an older node's file may be anything: a
    symbolic link (to /dev/zero), a FIFO (a read that never returns) or a huge file would stall every start
    of the model. None is followed, waited on or read whole.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(f"{path} is not a regular file")
        if info.st_size > MAX_CACHE_BYTES:
            raise OSError(f"{path} holds {info.st_size} bytes, more than a cache ({MAX_CACHE_BYTES})")
        data = b""
        while len(data) <= MAX_CACHE_BYTES and (piece := os.read(fd, MAX_CACHE_BYTES + 1 - len(data))):
            data += piece
    finally:
        os.close(fd)
    if len(data) > MAX_CACHE_BYTES:
        raise OSError(f"{path} grew past {MAX_CACHE_BYTES} bytes while read")
    return data.decode("utf-8")
