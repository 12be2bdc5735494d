"""`python -m benchmarks [--quick] [--only NAME ...]`: measure the node against its baselines.

A plain run measures every benchmark but the opt-in ones (verification: over an hour;
`--only verification` or `python -m benchmarks.verification` runs it; soak: 18.5 minutes,
`--only soak`).

`python -m benchmarks cluster ...` measures a network of nodes instead (benchmarks/cluster.py).

Prints one Markdown table and writes benchmarks/RESULTS.md (machine description
included). A benchmark that fails is a FAILED row and makes the exit status 1;
no number is ever printed that was not measured.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import sys
import time
from collections.abc import Awaitable, Callable
from typing import NamedTuple

import uvloop

from benchmarks import (
    concurrency,
    direct_decode,
    footprint,
    generation,
    grammar,
    ipc,
    kv_cache,
    llama_server,
    overhead,
    prefix,
    remote,
    soak,
    throughput,
    verification,
)
from benchmarks.machine import describe
from benchmarks.options import BenchOptions
from benchmarks.report import (
    RESULTS_PATH,
    Section,
    render_notes,
    render_results,
    render_table,
    write_results,
)
from node.ops.log import configure_logging


class Benchmark(NamedTuple):
    title: str
    run: Callable[[BenchOptions], Awaitable[Section]]
    budget_s: float  # a run past this fails (full; --quick gets half)
    opt_in: bool = False  # left out of a plain run; `--only NAME` runs it


BENCHMARKS: dict[str, Benchmark] = {
    "generation": Benchmark("1. Generation", generation.run, 120),
    "overhead": Benchmark("2. Node overhead", overhead.run, 60),
    "concurrency": Benchmark("3. Concurrency", concurrency.run, 1200),  # 1..16 tasks, 3 rounds: ~7 min
    "throughput": Benchmark("4. Network throughput", throughput.run, 90),
    "footprint": Benchmark("5. Footprint", footprint.run, 60),
    "prefix": Benchmark("6. Prefix reuse", prefix.run, 120),  # a full run takes ~56 s here
    "remote": Benchmark("7. Remote engine", remote.run, 150),
    "ipc": Benchmark("8. Execution-process IPC", ipc.run, 60),
    "grammar": Benchmark("9. Constrained decoding", grammar.run, 180),
    "kv_cache": Benchmark("10. KV cache types", kv_cache.run, 900),
    "verification": Benchmark("11. Verification", verification.run, 4800, opt_in=True),
    "direct_decode": Benchmark("12. Direct frame checks", direct_decode.run, 60),
    "soak": Benchmark("13. Soak", soak.run, 1500, opt_in=True),  # 18.5 min: past the 12-min gossip seen window
}


def default_names() -> list[str]:
    """The benchmarks a plain run measures, in order."""
    return [name for name, bench in BENCHMARKS.items() if not bench.opt_in]


def opt_in_names() -> list[str]:
    return [name for name, bench in BENCHMARKS.items() if bench.opt_in]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only",
        action="append",
        choices=list(BENCHMARKS),
        help=f"run only this benchmark (repeatable); opt-in ones run only so: {', '.join(opt_in_names())}",
    )
    parser.add_argument("--quick", action="store_true", help="fewer rounds and levels (a few minutes)")
    parser.add_argument(
        "--threads",
        type=int,
        help="model threads on the node and the baselines (default: usable cores - 1, at least 1)",
    )
    parser.add_argument("--node-arg", action="append", default=[], help="extra flag for `node.cli start` (repeatable)")
    parser.add_argument(
        "--levels",
        type=_levels,
        help="the concurrencies the concurrency benchmark measures, e.g. 1,4,8,12 (default 1..16)",
    )
    parser.add_argument(
        "--no-llama-server", action="store_true", help="skip the llama-server baseline (no build); the table says so"
    )
    parser.add_argument(
        "--no-write", action="store_true", help=f"do not overwrite {RESULTS_PATH.name} (a run with --only never does)"
    )
    return parser


def _levels(text: str) -> list[int]:
    """`1,4,8,12` -> [1, 4, 8, 12] (each at least 1)."""
    try:
        levels = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--levels wants numbers separated by commas, got {text!r}") from None
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError(f"--levels wants concurrencies of at least 1, got {text!r}")
    return levels


async def run_all(names: list[str], options: BenchOptions) -> list[Section]:
    """Run the named benchmarks one after another; a failure becomes a Section with `error`."""
    sections: list[Section] = []
    for name in names:
        bench = BENCHMARKS[name]
        budget = bench.budget_s / 2 if options.quick else bench.budget_s
        print(f"running {name} (at most {budget:.0f} s) ...", file=sys.stderr, flush=True)
        started = time.perf_counter()
        try:
            async with asyncio.timeout(budget):
                section = await bench.run(options)
        except TimeoutError:
            section = Section(
                name=name,
                title=bench.title,
                error=f"did not finish within its {budget:.0f} s budget (a busy machine? try --threads 1)",
            )
        except Exception as exc:  # noqa: BLE001 - reported as a FAILED row, exit status 1
            section = Section(name=name, title=bench.title, error=f"{type(exc).__name__}: {exc}")
        section.seconds = time.perf_counter() - started
        print(
            f"  {name}: {'FAILED' if section.error else 'done'} in {section.seconds:.0f} s", file=sys.stderr, flush=True
        )
        sections.append(section)
    return sections


def setup_llama_server(skip: bool) -> str | None:
    """Build llama-server once (cached); returns why it is unavailable, or None."""
    if skip:
        return "skipped (--no-llama-server)"
    if not llama_server.binary_path().exists():
        print(
            "setup: building llama-server from the vendored llama.cpp sources (once; minutes) ...",
            file=sys.stderr,
            flush=True,
        )
    try:
        llama_server.ensure_built()
    except llama_server.LlamaServerError as exc:
        print(f"setup: llama-server unavailable: {exc}", file=sys.stderr)
        return str(exc)
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["cluster"]:  # a network of nodes, its own command line
        from benchmarks import cluster

        return cluster.main(argv[1:])
    args = build_parser().parse_args(argv)
    configure_logging("warning", "console")
    values = {"quick": args.quick, "node_args": args.node_arg, "levels": args.levels}
    if args.threads is not None:
        values["threads"] = args.threads
    options = BenchOptions(**values)
    names = args.only or default_names()
    if "concurrency" in names or "remote" in names:
        options.llama_server_problem = setup_llama_server(skip=args.no_llama_server)
    machine = describe()
    machine["model threads (node and baselines)"] = str(options.threads)
    started = time.perf_counter()
    sections = uvloop.run(run_all(names, options))
    total = time.perf_counter() - started
    print(render_table(sections))
    print()
    print(render_notes(sections))
    print(f"\ntotal {total:.0f} s")
    if args.only:
        print(f"not writing {RESULTS_PATH.name}: it keeps whole runs only (no --only)", file=sys.stderr)
    elif not args.no_write:
        command = shlex.join(["python", "-m", "benchmarks", *argv])
        path = write_results(render_results(sections, machine, command, total))
        print(f"wrote {path}", file=sys.stderr)
    return 1 if any(s.error for s in sections) else 0


if __name__ == "__main__":
    sys.exit(main())
