"""A run's memory: the cache, the stacks and the vector file store.

An entry is a string or a JSON value; a string that parses as JSON is kept as
JSON (so "42" becomes 42). Memory is created fresh for every run, with a byte
budget every write is checked against (a workflow cannot grow it without bound).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from models.requests import EmbeddingRequest
from workflows.backend import ModelBackend
from workflows.errors import LimitExceededError

Entry = Any  # str | int | float | bool | list | dict
CHUNK_CHARS = 250
TOP_K = 3
SIMILAR_THRESHOLD = 0.95
EMBED_BATCH = 4  # texts per embedding call
ENTRY_OVERHEAD = 64  # bytes charged per entry besides its text (Python object headers)
JSON_FACTOR = 4  # a parsed JSON value takes several times its text in Python objects
FLOAT_BYTES = 8
VECTOR_GUESS = 1024  # floats per embedding until the first one is known
UNLIMITED = 1 << 62


def coerce_entry(value: Any) -> Entry:
    """Keep JSON-looking strings as JSON values; everything else unchanged."""
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except (ValueError, RecursionError):
            return value
        if parsed is None or ("\\u" in value and not _is_unicode(parsed)):
            return value  # a JSON escape of a lone surrogate makes no text a model or a peer can take
        # A JSON string stays JSON: it renders with its quotes, as compact JSON (WORKFLOWS.md, Memory).
        return json.dumps(parsed, ensure_ascii=False) if isinstance(parsed, str) else parsed
    return value


def _is_unicode(value: Any) -> bool:
    """Whether every string in a parsed JSON value encodes as UTF-8 (no lone surrogate)."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def render_entry(entry: Entry) -> str:
    """An entry as text: strings as they are, JSON values as compact JSON."""
    if isinstance(entry, str):
        return entry
    return json.dumps(entry, ensure_ascii=False, separators=(",", ":"))


def text_bytes(text: str) -> int:
    """An upper bound of `text` in UTF-8 bytes, without encoding it."""
    return len(text) if text.isascii() else 4 * len(text)


def entry_bytes(entry: Entry) -> int:
    """What holding `entry` is charged against the memory budget."""
    if isinstance(entry, str):
        return ENTRY_OVERHEAD + text_bytes(entry)
    return ENTRY_OVERHEAD + JSON_FACTOR * text_bytes(render_entry(entry))


@dataclass
class MemoryBudget:
    """Bytes a run's memory may hold; `take` raises before the limit is passed."""

    limit: int = UNLIMITED
    held: int = 0

    def take(self, amount: int, what: str) -> None:
        """Count `amount` more bytes held; LimitExceededError if it would pass the limit."""
        if self.held + amount > self.limit:
            raise LimitExceededError(
                "memory", f"memory limit exceeded: {what} would make the run hold more than {self.limit} bytes"
            )
        self.held += amount

    def give(self, amount: int) -> None:
        """Count `amount` bytes freed."""
        self.held = max(0, self.held - amount)


def chunk_text(text: str, size: int = CHUNK_CHARS) -> list[str]:
    """Split text into chunks of about `size` characters on whitespace."""
    chunks: list[str] = []
    current = ""
    for word in text.split():
        while len(word) > size:  # a single overlong word is cut hard
            if current:
                chunks.append(current)
                current = ""
            chunks.append(word[:size])
            word = word[size:]
        if current and len(current) + 1 + len(word) > size:
            chunks.append(current)
            current = word
        else:
            current = f"{current} {word}" if current else word
    if current:
        chunks.append(current)
    return chunks


def cosine(a: list[float], b: list[float]) -> float:
    """The cosine similarity of two vectors (0 when one is zero)."""
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return dot / norm if norm else 0.0


@dataclass
class FileStore:
    """Text chunks with their embeddings; top-k cosine search."""

    embedder: ModelBackend
    budget: MemoryBudget = field(default_factory=MemoryBudget)
    chunks: list[tuple[str, list[float]]] = field(default_factory=list)

    async def _embed(self, texts: list[str]) -> list[list[float]]:
        # In small batches: an embedding call cannot be stopped once started, so a
        # cancelled run (max_time, deadline) frees the embedding worker within one batch.
        vectors: list[list[float]] = []
        for start in range(0, len(texts), EMBED_BATCH):
            vectors += await self.embedder.embed(EmbeddingRequest(texts=texts[start : start + EMBED_BATCH]))
        return vectors

    async def insert(self, text: str) -> None:
        """Chunk and embed the text and keep the chunks, within the memory budget."""
        pieces = chunk_text(text)
        if pieces:
            dims = len(self.chunks[0][1]) if self.chunks else VECTOR_GUESS
            # Charged before the (costly) embedding, with the vectors' size estimated, then settled.
            estimate = sum(ENTRY_OVERHEAD + text_bytes(p) + FLOAT_BYTES * dims for p in pieces)
            self.budget.take(estimate, "an insert into the file store")
            try:
                vectors = await self._embed(pieces)
            except BaseException:
                self.budget.give(estimate)
                raise
            self.budget.give(FLOAT_BYTES * dims * len(pieces))
            self.budget.take(sum(FLOAT_BYTES * len(v) for v in vectors), "an insert into the file store")
            self.chunks.extend(zip(pieces, vectors, strict=True))

    async def scored(self, query: str) -> list[tuple[float, str]]:
        """Every chunk with its similarity to `query`, best first."""
        if not self.chunks or not query.strip():
            return []
        [q] = await self._embed([query])
        return sorted(((cosine(q, v), text) for text, v in self.chunks), reverse=True)

    async def search(self, query: str, k: int = TOP_K) -> list[str]:
        """The `k` chunks most like `query`."""
        return [text for _, text in (await self.scored(query))[:k]]

    async def have_similar(self, text: str, threshold: float = SIMILAR_THRESHOLD) -> bool:
        """Whether a chunk is at least `threshold` similar to the text."""
        best = await self.scored(text)
        return bool(best) and best[0][0] >= threshold


@dataclass
class Memory:
    """Cache (key -> entry), stacks (key -> entries) and the file store."""

    files: FileStore
    cache: dict[str, Entry] = field(default_factory=dict)
    stacks: dict[str, list[Entry]] = field(default_factory=dict)

    @property
    def budget(self) -> MemoryBudget:
        """The run's memory budget."""
        return self.files.budget

    @classmethod
    def create(
        cls, embedder: ModelBackend, external: dict[str, Any], prompt: str | None, limit: int = UNLIMITED
    ) -> Memory:
        """Fresh memory loaded with `external_memory` and the task's prompt, holding at most `limit` bytes."""
        memory = cls(files=FileStore(embedder, MemoryBudget(limit)))
        for key, value in external.items():
            if isinstance(value, list):
                for item in value:
                    memory.push(key, item)
            else:
                memory.write(key, value)
        if prompt is not None:
            memory.write("__input", prompt)
        return memory

    def write(self, key: str, value: Any) -> None:
        """Set `key` to the value, within the budget."""
        entry = coerce_entry(value)
        old = self.cache.get(key)
        freed = entry_bytes(old) + text_bytes(key) if key in self.cache else 0
        self.budget.take(entry_bytes(entry) + text_bytes(key) - freed, f"a write to {key!r}")
        self.cache[key] = entry

    def read(self, key: str) -> Entry | None:
        """The value of `key`; None if unset."""
        return self.cache.get(key)

    def push(self, key: str, value: Any) -> None:
        """Push the value on the stack `key`, within the budget."""
        entry = coerce_entry(value)
        self.budget.take(entry_bytes(entry) + (0 if key in self.stacks else text_bytes(key)), f"a push to {key!r}")
        self.stacks.setdefault(key, []).append(entry)

    def pop(self, key: str) -> Entry | None:
        """Take the top of the stack `key`; None if empty."""
        stack = self.stacks.get(key)
        if not stack:
            return None
        entry = stack.pop()
        self.budget.give(entry_bytes(entry))
        return entry

    def peek(self, key: str, index: int = 0) -> Entry | None:
        """The entry `index` from the top of the stack `key`; None past its end."""
        stack = self.stacks.get(key, [])
        return stack[-1 - index] if index < len(stack) else None

    def get_all(self, key: str) -> list[Entry]:
        """Every entry of the stack `key`, bottom first."""
        return list(self.stacks.get(key, []))

    def size(self, key: str) -> int:
        """How many entries the stack `key` holds."""
        return len(self.stacks.get(key, []))
