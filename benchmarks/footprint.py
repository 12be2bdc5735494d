"""5. Footprint: startup time to READY, RSS of an idle node and of a node running a task,
next to the plain llama_cpp script loading the same model (benchmarks.raw_worker).
The node's RSS is its daemon plus its execution processes (one per model), also
reported separately.

The script holds the same KV cache as the node: one context of n_ctx x the node's
slots (`parallel`, 4 on CPU unless --node-arg --parallel says otherwise) tokens.
READY for the node is its `listening on` line (models loaded, P2P listening); for
the script, its first output line after `Llama(...)` returned. The running RSS is
the highest VmRSS sampled every 20 ms while one Simple task of 128 tokens runs.

A node measures its model's tokens/s once per model file, llama.cpp build and thread
count, and caches it in its data dir: the rounds start the way a restart does, with
that cache in place (written by one first start, before them), and that first,
uncached start is its own row.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

from benchmarks.options import BenchOptions, Publisher
from benchmarks.peers import node_process, pss_bytes, rss_bytes, tree_pss_bytes, tree_rss_bytes
from benchmarks.raw_worker import RawWorker
from benchmarks.report import Row, Section
from benchmarks.stats import alternate, paired_ratio, summarize
from benchmarks.workloads import model_path, simple_workflow, story_prompt
from models.batching import DEFAULT_PARALLEL_CPU

# Where startup and memory go (issue 26), measured on the shared 2-core EPYC in CPU seconds (its wall
# clock was 10-40x busy) with `python -X importtime`, /usr/bin/time and /proc VmRSS step by step.
STARTUP_PROFILE = (
    "Startup profile (CPU s): the daemon's imports (`node.cli.main` + `node.daemon.server`, 1,555 modules) "
    "~1.6 s, libp2p's ~950 of them most of it: py-libp2p's `libp2p/__init__.py` imports every transport "
    "eagerly (QUIC/aioquic, the circuit-relay, Kademlia DHT, bitswap, websockets, zeroconf, TLS) although "
    "node/p2p uses TCP, noise, yamux and gossipsub only, and any `import libp2p.x` runs that `__init__` "
    "first. Since 2026-12-04 node/p2p/lean_libp2p.py puts stand-ins in place of its QUIC, mDNS and AutoTLS "
    "subpackages (and switches dnspython's DNS-over-QUIC off): 1,519 -> 1,291 modules; since 2026-12-06 its "
    "WebSocket one too: 1,359 -> 1,333 modules on another machine. The execution "
    "process's imports (llama.cpp, numpy, pydantic, the workflow engine; 593 modules) ~0.8 s, its model load "
    "~0.3 s, its uncached tokens/s benchmark (~128 prompt tokens, 48 generated) ~1-2 s quiet. "
    "`compute-node start` now spawns the execution process after 334 modules (~0.3 s, node/daemon/launch.py) "
    "and imports libp2p while the child imports, then configures it (model load; an uncached benchmark runs "
    "after the daemon's imports, as before, so it is not measured beside them). Left out of the process "
    "before READY: the vocabulary-only second open of the GGUF (~0.15 s) and llguidance's tokenizer (~0.3 s, "
    "now built on the first constrained request)."
)
MEMORY_PROFILE = (
    "Memory profile (RSS; issue 26, measured on the shared 2-core EPYC, 1 thread, a restarted node 2 s after "
    "READY, /proc/<pid>/smaps by mapping, VmRSS step by step over imports in a clean interpreter, tracemalloc "
    "for Python objects, malloc_trim(0) called in the live processes through gdb). Done before: the execution "
    "process's vocabulary-only second open of the GGUF (+17 MiB) is gone, llguidance's tokenizer (+19 MiB) is "
    "built on the first constrained request, huggingface_hub and llguidance are out of its imports, and the "
    "gateway, huggingface_hub, llama_cpp, numpy and llguidance out of the daemon's "
    "(tests/project/test_daemon_imports.py). The daemon is its imports: "
    "~99 of its ~105 MiB, Python objects 57 MiB of them (tracemalloc) and shared-library pages 30 MiB "
    "(cryptography's Rust module 6.8, the interpreter 5.6, pydantic-core 3.9, libcrypto 3.4, ...); libp2p and "
    "what its eager `libp2p/__init__.py` imports are 71 MiB of a clean interpreter's 10 -> 99, pydantic, "
    "pydantic-settings and the settings 10.5, the node's own modules, structlog, uvicorn and the workflow "
    "errors ~8. Not where it goes: glibc's per-thread malloc arenas (the daemon's 4 threads: 0.4 MiB in two "
    "arenas; MALLOC_ARENA_MAX=1 or 2 moves neither process beyond its 0.3 MiB noise), free heap "
    "(malloc_trim(0) returns 0.3 MiB of the daemon's and 0.4 of the execution process's), thread stacks "
    "(touched pages only), pydantic validators built at import (defer_build on every model: -0.8 MiB daemon, "
    "-0.6 execution process, and the first message builds them again), the launcher (it spawns a clean "
    "interpreter, no fork: nothing for gc.freeze to keep shared). The execution process is the plain script "
    "plus its own imports: the llama.cpp side is the same MiB in both (the mapped GGUF 92, the KV cache and "
    "compute buffer 184 touched, llama.cpp's model-load allocations ~15: in the node in one thread arena, since "
    "the model loads off the event loop, in the script in its main heap); the imports were 62.8 MiB against "
    "the script's 50.0 and are 59.3 now: httpx (+3.5 MiB with click and pygments, which httpx's CLI pulls in) "
    "loads with a remote engine's first endpoint or a workflow's first HTTP tool call (models/remote/"
    "endpoint.py, workflows/egress.py; tests/project/test_daemon_imports.py keeps it out). What stays over the "
    "script: asyncio, uvloop and structlog 4.4, pydantic-settings and the settings 2.3, the workflow engine 1.4, "
    "the model registry 1.2, the batched runtime 0.8. Left: the 1.3x goal needs the node at <= 448 MiB "
    "(1.3 x 345), ~12 MiB below it, and the one part that size is libp2p's eager `__init__` (QUIC/aioquic, "
    "circuit relay, Kademlia, bitswap, websockets, zeroconf, TLS/ACME with requests and httpx; ~53 MiB over "
    "the TCP, noise, yamux and gossipsub node/p2p uses). Changed 2026-12-04 (the Xeon): stand-ins for the "
    "three subpackages the node never runs (QUIC with aioquic, mDNS with zeroconf, AutoTLS with requests and "
    "httpx; node/p2p/lean_libp2p.py, which refuses their use by name) and dnspython's own switch for "
    "DNS-over-QUIC take the daemon from 105.0 to 90.9 MiB idle (a test node, twice each). The rest of libp2p's "
    "eager imports (circuit relay, Kademlia, bitswap, websockets: ~4 MiB more in that trial) stay: they are "
    "imported by modules the node runs. 2026-12-06 (an AVX2 EPYC): py-libp2p's WebSocket transport (trio-websocket, "
    "wsproto) is a stand-in too (/ws, /wss and /tls addresses are refused in the settings, by name): the "
    "daemon 93.5-93.8 -> 92.3-92.4 MiB idle, the node 450 -> 449 MiB (two footprint runs each, alternating). `python -OO` would take 6 MiB off the daemon but strips the asserts (46 in "
    "node/models/workflows, 30 in libp2p) with the docstrings: not done."
)
# MiB by component before/after issue 26's memory slice (same measurements as MEMORY_PROFILE).
MEMORY_TABLE = (
    "| process | component | before MiB | after MiB |",
    "|---|---|---|---|",
    "| daemon | interpreter and stdlib at start | 10 | 10 |",
    "| daemon | libp2p and what its `__init__` imports (1,202 modules) | 71 | 71 |",
    "| daemon | pydantic, pydantic-settings, the settings | 10.5 | 10.5 |",
    "| daemon | the node's modules, structlog, uvicorn, workflow errors | 8 | 8 |",
    "| daemon | after READY (library pages touched, P2P host, journal) | 5 | 5 |",
    "| daemon | **RSS idle** | **104.7** | **104.6** |",
    "| execution process | imports (the plain script's: 50.0) | 62.8 | 59.3 |",
    "| execution process | of them httpx, click, pygments | 3.5 | 0 |",
    "| execution process | llama.cpp: mapped GGUF, KV cache and compute buffer, its heap | ~295 | ~295 |",
    "| execution process | **RSS idle** (the plain script: 344.9) | **358.2** | **354.8** |",
    "| node | **RSS idle, daemon + execution process** (goal <= 448) | **462.9** | **459.4** |",
)
IDLE_SETTLE_S = 1.5
MIB = 1024 * 1024
N_CTX = 2048


def node_slots(node_args: list[str]) -> int:
    """The node's sequence slots per model: its `--parallel` flag, else the CPU default."""
    for flag, value in zip(node_args, node_args[1:]):
        if flag == "--parallel":
            return int(value)
    for arg in node_args:
        if arg.startswith("--parallel="):
            return int(arg.split("=", 1)[1])
    return DEFAULT_PARALLEL_CPU


async def _peak_rss_while(pid: int, work: Awaitable[object]) -> int:
    """Highest RSS of `pid` sampled while `work` runs."""
    task = asyncio.ensure_future(work)
    peak = rss_bytes(pid)
    while not task.done():
        peak = max(peak, rss_bytes(pid))
        await asyncio.wait({task}, timeout=0.02)
    await task
    return peak


async def _peak_tree_rss_while(pid: int, work: Awaitable[object]) -> tuple[int, int, int]:
    """Highest (total, own, children's) RSS of `pid` and its children sampled while `work` runs."""
    task = asyncio.ensure_future(work)
    peaks = (0, 0, 0)
    while True:
        own, children = tree_rss_bytes(pid)
        peaks = (max(peaks[0], own + children), max(peaks[1], own), max(peaks[2], children))
        if task.done():
            break
        await asyncio.wait({task}, timeout=0.02)
    await task
    return peaks


async def run(options: BenchOptions) -> Section:
    rounds = options.pick(full=3, quick=1)
    path = model_path()
    slots = node_slots(options.node_args)
    samples: dict[str, dict[str, list[float]]] = {
        side: {"startup": [], "idle": [], "busy": [], "uncached": [], "idle_pss": []} for side in ("node", "raw")
    }
    parts: dict[str, list[float]] = {
        key: [] for key in ("idle_daemon", "idle_exec", "busy_daemon", "busy_exec", "pss_daemon", "pss_exec")
    }
    cache: list[bytes | None] = []  # the first start's benchmarks.json, for every later start

    async def first_start(_: int) -> None:  # uncached: measures its model's tokens/s after READY, while idle
        with node_process(options.threads, extra_args=options.node_args) as node:
            samples["node"]["uncached"].append(node.startup_seconds)
            cache.append(node.benchmark_cache())  # None with --node-arg --no-startup-benchmark

    async def raw_start(_: int) -> None:
        with RawWorker(path, options.threads, N_CTX * slots) as raw:
            samples["raw"]["uncached"].append(raw.startup_seconds)

    async def node_round(i: int) -> None:
        with node_process(options.threads, extra_args=options.node_args, benchmark_cache=cache[0]) as node:
            samples["node"]["startup"].append(node.startup_seconds)
            async with Publisher(node) as publisher:
                await asyncio.sleep(IDLE_SETTLE_S)
                own, children = tree_rss_bytes(node.pid)
                samples["node"]["idle"].append((own + children) / MIB)
                parts["idle_daemon"].append(own / MIB)
                parts["idle_exec"].append(children / MIB)
                own, children = tree_pss_bytes(node.pid)
                samples["node"]["idle_pss"].append((own + children) / MIB)
                parts["pss_daemon"].append(own / MIB)
                parts["pss_exec"].append(children / MIB)
                total, own, children = await _peak_tree_rss_while(
                    node.pid, publisher.run(simple_workflow(story_prompt(i)))
                )
                samples["node"]["busy"].append(total / MIB)
                parts["busy_daemon"].append(own / MIB)
                parts["busy_exec"].append(children / MIB)

    async def raw_round(i: int) -> None:
        with RawWorker(path, options.threads, N_CTX * slots) as raw:  # the node's KV size: slots x n_ctx
            samples["raw"]["startup"].append(raw.startup_seconds)
            await asyncio.sleep(IDLE_SETTLE_S)
            samples["raw"]["idle"].append(rss_bytes(raw.pid) / MIB)
            samples["raw"]["idle_pss"].append(pss_bytes(raw.pid) / MIB)
            peak = await _peak_rss_while(raw.pid, asyncio.to_thread(raw.complete, story_prompt(i), 128))
            samples["raw"]["busy"].append(peak / MIB)

    await alternate(1, first_start, raw_start)
    await alternate(rounds, node_round, raw_round)
    what = "footprint"
    rows = []
    for key, metric, unit in (
        ("startup", "startup: spawn -> READY (restart: tokens/s benchmark cached)", "s"),
        ("uncached", "startup: spawn -> READY, first start (tokens/s measured after READY)", "s"),
        ("idle", "RSS idle (daemon + execution processes)", "MiB"),
        ("busy", "RSS running a 128-token task (peak, daemon + execution processes)", "MiB"),
        ("idle_pss", "PSS idle, extra information (shared pages counted once; the goal is RSS)", "MiB"),
    ):
        rows.append(
            Row(
                metric=metric,
                node=summarize(samples["node"][key], unit, what=what),
                baseline=summarize(samples["raw"][key], unit, what=what),
                baseline_name=f"plain llama_cpp script, one {N_CTX * slots}-token context",
                ratio=paired_ratio(samples["node"][key], samples["raw"][key], what=what),
            )
        )
    for key, metric in (
        ("idle_daemon", "RSS idle: daemon alone"),
        ("idle_exec", "RSS idle: execution process"),
        ("busy_daemon", "RSS running a task (peak): daemon alone"),
        ("busy_exec", "RSS running a task (peak): execution process"),
        ("pss_daemon", "PSS idle: daemon alone"),
        ("pss_exec", "PSS idle: execution process"),
    ):
        rows.append(Row(metric=metric, node=summarize(parts[key], "MiB", what=what)))
    return Section(
        name="footprint",
        title="5. Footprint",
        rows=rows,
        notes=[
            (
                "One first start per side (the node's uncached: it measures its model's tokens/s, ~128 prompt "
                "tokens and 48 generated, after READY while idle; the next start waits for that), then "
                f"{rounds} start(s) per side, alternately, each node with a fresh data dir holding the first start's "
                "benchmarks.json (a restart); node with the default log level (info, JSON to a file), "
                f"n_ctx {N_CTX} x {slots} slots; the plain script one context of {N_CTX * slots} tokens (the same KV "
                f"cache); {options.threads} thread(s); RSS from /proc/<pid>/status VmRSS, idle measured "
                f"{IDLE_SETTLE_S:g} s after READY with a publisher connected. The node's RSS is its daemon plus "
                "its execution process (one model); peaks are sampled together every 20 ms. PSS (Pss in "
                "/proc/<pid>/smaps_rollup, read once at idle) counts a page shared by n processes as 1/n in each: "
                "the daemon and its execution process map the same interpreter, libcrypto, pydantic-core and "
                "other libraries, which RSS counts in both; PSS is reported beside RSS as information, the "
                "done-when is RSS. PSS also splits pages with every other process on the machine: another "
                "process with the same GGUF open takes half its 92 MiB off both sides' PSS."
            ),
            STARTUP_PROFILE,
            MEMORY_PROFILE,
            "\n" + "\n".join(MEMORY_TABLE),
        ],
    )
