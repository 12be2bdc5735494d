"""Test-only backends for execution processes (COMPUTE_NODE_TEST_EXEC_WRAPPER=tests.support.exec_wrappers:NAME).

Workflows cannot run code, so tests reach a runaway or crashing runtime through
this wrapper around the real model: a prompt holding a marker misbehaves on purpose.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import signal
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import llama_cpp

from models.benchmark import BenchmarkCache
from models.progress import ProgressSnapshot, request_owner
from models.requests import EmbeddingRequest, Generation, GenerationRequest, ScoreRequest, TextSink, TokenScores
from node.execution.protocol import MAX_CHILD_LINE_BYTES, Measured, encode

SPIN = "#spin"  # a CPU loop that never yields and ignores cancellation
BOMB = "#bomb"  # allocates (and touches) memory without bound
GRAMMAR_CRASH = "#grammar-crash"  # a grammar sampler handed a token it cannot hold: llama.cpp aborts
# The decode loop's thread blocks in native code (libc sleep(), the GIL released, as llama.cpp's
# grammar engine would) when it samples this task's first token...
STALL = "#stall"
# ...or when it decodes a batch holding this task's tokens.
STALL_DECODE = "#stall-decode"
# Forks a process that keeps the socket to the daemon (in a session of its own), then exits: the daemon must see
# the exit, though the socket stays open. The forked pids are appended to the file FORKED_PIDS_ENV names.
FORK = "#fork"
FORKED_PIDS_ENV = "COMPUTE_NODE_TEST_FORKED_PIDS"
# Writes a `measured` line of a forged speed (FORGED_TPS) for the model's real cache key on the socket to the
# daemon, as a workflow that took the process over could, then generates as usual.
FORGE_SPEED = "#forge-speed"
FORGED_TPS = 99_999.0
# Writes FORGED_LOG_LINE, a line that looks like the daemon's own (with an escape sequence), straight to stderr.
FORGE_LOG = "#forge-log"
FORGED_LOG_LINE = (
    b'{"event": "node stopped", "level": "info", "logger": "node.daemon.server", "exec_pid": 1, '
    b'"forged": "\\u001b[2J"}\n'
)
# Writes files of 1 MiB into its scratch folder (TMPDIR) without end, as a workflow that took the process over
# could: the daemon kills it past exec_scratch_mb...
FILL_SCRATCH = "#fill-scratch"
# ...and so does one that removes each file while it holds it open, or writes memfds, so no folder shows them...
HIDE_FILES = "#hide-files"
# ...or that maps each file, closes and removes it: only the mapping holds its blocks.
MAP_FILES = "#map-files"
# Starts threads (small stacks, each waiting for ever) without end: the daemon kills it past pool.MAX_THREADS.
THREADS = "#threads"


class Misbehaving:
    """The real model, except for prompts with a marker."""

    def __init__(self, model: Any) -> None:
        self._model = model
        self.name = model.name
        self._stall_sampling: set[str] = set()  # task ids whose sampling blocks
        self._stall_decoding: set[str] = set()  # task ids whose batches block
        loop = getattr(model, "_decode_loop", None)
        if loop is not None:
            _block_in_native_code(loop, self._stall_sampling, self._stall_decoding)

    @property
    def parallel(self) -> int:
        return self._model.parallel

    def progress(self) -> ProgressSnapshot | None:
        return self._model.progress()

    async def generate(self, request: GenerationRequest, on_text: TextSink | None = None) -> Generation:
        text = request.messages[-1].content or ""
        if SPIN in text:
            while True:
                pass
        if BOMB in text:
            hog = []
            while True:
                hog.append(b"x" * (8 * 1024 * 1024))
                time.sleep(0.02)
        if GRAMMAR_CRASH in text:
            _crash_in_grammar(self._model)
        if FORK in text:
            _fork_and_exit()
        if FORGE_SPEED in text:
            _forge_speed(self._model)
        if FORGE_LOG in text:
            os.write(2, FORGED_LOG_LINE)
        if FILL_SCRATCH in text:
            _fill_scratch()
        if HIDE_FILES in text:
            _fill_scratch(hide="open")
        if MAP_FILES in text:
            _fill_scratch(hide="mapped")
        if THREADS in text:
            _start_threads()
        if STALL_DECODE in text:
            self._stall_decoding.add(request_owner.get() or "")
        elif STALL in text:
            self._stall_sampling.add(request_owner.get() or "")
        return await self._model.generate(request, on_text)

    async def score(self, request: ScoreRequest) -> TokenScores:
        return await self._model.score(request)  # type: ignore[no-any-return]

    async def embed(self, request: EmbeddingRequest) -> list[list[float]]:
        return await self._model.embed(request)

    async def close(self) -> None:
        await self._model.close()


def _fork_and_exit() -> None:
    pid = os.fork()
    if pid == 0:  # the forked process: holds every inherited descriptor, the daemon's socket among them
        os.setsid()
        time.sleep(120)
        os._exit(0)
    with open(os.environ[FORKED_PIDS_ENV], "a") as pids:
        pids.write(f"{pid}\n")
    os._exit(3)


def _start_threads() -> None:
    threading.stack_size(64 * 1024)
    forever = threading.Event()
    for _ in range(100_000):
        threading.Thread(target=forever.wait, daemon=True).start()
        time.sleep(0.001)


def _fill_scratch(hide: str = "") -> None:
    chunk = os.urandom(1024 * 1024)
    held: list[Any] = []
    for index in range(100_000):
        path = os.path.join(tempfile.gettempdir(), f"fill-{index}")
        if not hide:
            with open(path, "wb") as fill:
                fill.write(chunk)
        elif hide == "mapped":
            with open(path, "w+b") as fill:
                fill.write(chunk)
                fill.flush()
                held.append(mmap.mmap(fill.fileno(), len(chunk)))
            os.unlink(path)
        elif index % 2:
            held.append(os.memfd_create(f"fill-{index}"))
            os.write(held[-1], chunk)
        else:
            held.append(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
            os.write(held[-1], chunk)
            os.unlink(path)
        time.sleep(0.005)


def _forge_speed(model: Any) -> None:
    key = BenchmarkCache(Path(os.devnull)).key(model)  # what the model's cached speed is stored under
    forged = Measured(
        key=key, model=model.name, prompt_tps=FORGED_TPS, generation_tps=FORGED_TPS, measured_at=datetime.now(UTC)
    )
    os.write(int(sys.argv[sys.argv.index("--fd") + 1]), encode(forged))


def _crash_in_grammar(model: Any) -> None:
    vocab = model._vocab.vocab
    sampler = llama_cpp.llama_sampler_init_grammar(vocab, b'root ::= "yes" | "no"', b"root")
    llama_cpp.llama_sampler_accept(sampler, 2**30)  # std::out_of_range in llama_grammar_accept_impl: abort


def _block_in_native_code(loop: Any, sampling: set[str], decoding: set[str]) -> None:
    """Make the decode loop's thread sleep in libc for the marked tasks' native calls."""
    libc = ctypes.CDLL(None)
    take_token = loop._take_token

    def stalling_take_token(slot: Any, index: int) -> None:
        if slot.active is not None and slot.active.request.owner in sampling:
            libc.sleep(3600)
        take_token(slot, index)

    decode = llama_cpp.llama_decode

    def stalling_decode(ctx: Any, batch: Any) -> int:
        if decoding.intersection(loop._progress.snapshot(0).owners):
            libc.sleep(3600)
        return decode(ctx, batch)

    loop._take_token = stalling_take_token
    llama_cpp.llama_decode = stalling_decode  # this child process only; the decode loop calls it by module attribute


def misbehave(model: Any) -> Misbehaving:
    return Misbehaving(model)


# A file holding a count: while it is above 0, each start decrements it and breaks the protocol.
BAD_STARTS_ENV = "COMPUTE_NODE_TEST_BAD_STARTS"


def oversized_first_line(model: Any) -> Any:
    """Before `ready`, send the daemon a line past the protocol's frame limit (while BAD_STARTS_ENV says so)."""
    counter = os.environ.get(BAD_STARTS_ENV)
    if counter and os.path.exists(counter) and (left := int(open(counter).read() or 0)) > 0:
        with open(counter, "w") as out:
            out.write(str(left - 1))
        fd = int(sys.argv[sys.argv.index("--fd") + 1])
        os.set_blocking(fd, True)
        chunk = b"x" * (1024 * 1024)
        try:
            for _ in range(MAX_CHILD_LINE_BYTES // len(chunk) + 1):
                os.write(fd, chunk)
        except OSError:  # the daemon gave up on this process and closed its end
            pass
    return model


def crash_at_start(model: Any) -> Any:
    """A model whose name holds "crash" dies while loading, as llama.cpp's AMX path does on some hosts."""
    if "crash" in model.name:
        os.kill(os.getpid(), signal.SIGSEGV)
    return model


def slow_start(model: Any) -> Any:
    """A model that takes a minute to get ready, as a large one does: a node's startup that a stop can cut short."""
    time.sleep(60)
    return model
