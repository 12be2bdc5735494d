"""Smoke test of benchmarks/: the cheapest real measurement (bare gossipsub round trips
between two processes on 127.0.0.1) goes through the same summary and table code
as `python -m benchmarks`. Nothing timed is asserted beyond being measured (> 0)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.__main__ import BENCHMARKS, build_parser, default_names, opt_in_names
from benchmarks.echo_peer import EchoClient, echo_process
from benchmarks.options import BenchOptions
from benchmarks.peers import pss_bytes, rss_bytes, tree_pss_bytes
from benchmarks.report import KEPT_MARKER, Row, Section, render_results, render_table, write_results
from benchmarks.soak import SETTLE_S, Sample, Tally, soak_section
from benchmarks.stats import BenchmarkError, paired_ratio, percentile, summarize
from benchmarks.throughput import Window, p2p_thread_note, p2p_threads, thread_cpu_seconds
from node.p2p.host import P2PHost
from node.wire.identity import Identity


@pytest.mark.slow
async def test_bare_round_trip_is_measured_and_lands_in_the_table() -> None:
    with echo_process() as echo:
        assert echo.startup_seconds > 0
        async with EchoClient(echo.multiaddr) as pinger:
            cpu_before = echo.cpu_seconds()
            samples = [await pinger.round_trip(timeout=10) * 1000 for _ in range(5)]
            cpu = echo.cpu_seconds() - cpu_before
        assert echo.rss_bytes() > 0
    summary = summarize(samples, "ms", what="smoke", percentiles=True)
    assert summary.n == 5 and summary.median > 0 and summary.p95 is not None
    assert cpu >= 0

    sections = [
        Section(
            name="overhead",
            title="2. Node overhead",
            rows=[Row(metric="bare round trip", baseline=summary, baseline_name="echo")],
        ),
        Section(name="generation", title="1. Generation", error="BenchmarkError: node did not become READY"),
    ]
    table = render_table(sections)
    assert summary.text() in table
    assert "**FAILED**" in table and "did not become READY" in table
    results = render_results(sections, {"cpu": "test"}, "python -m benchmarks --quick", 1.0)
    assert "## Machine" in results and "- cpu: test" in results


def test_pss_counts_the_pages_a_child_shares_with_its_parent_in_part() -> None:
    # A child interpreter maps the same python binary and libc as this one: RSS counts those pages
    # whole in each process, PSS splits them, so the child's PSS is below its RSS.
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        while rss_bytes(child.pid) < 4 * 1024 * 1024:  # wait until its interpreter has started
            time.sleep(0.01)
        assert 0 < pss_bytes(child.pid) < rss_bytes(child.pid)
        own, children = tree_pss_bytes(os.getpid())
        assert own > 0 and children >= pss_bytes(child.pid) // 2
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(timeout=30)


def test_summaries_refuse_numbers_that_were_not_measured() -> None:
    with pytest.raises(BenchmarkError, match="no samples"):
        summarize([], "tok/s", what="generation")
    with pytest.raises(BenchmarkError, match="not positive"):
        summarize([12.0, 0.0], "tok/s", what="generation")
    with pytest.raises(BenchmarkError, match="rounds"):
        paired_ratio([1.0, 2.0], [1.0], what="generation")


def test_percentile_and_paired_ratio() -> None:
    assert percentile(list(range(1, 101)), 95) == 95
    assert percentile([3.0], 50) == 3.0
    ratio = paired_ratio([90.0, 100.0, 110.0], [100.0, 100.0, 100.0], what="r")
    assert ratio.median == pytest.approx(1.0) and ratio.low == pytest.approx(0.9)


def test_command_line_names_every_benchmark() -> None:
    args = build_parser().parse_args(["--only", "overhead", "--quick"])
    assert args.only == ["overhead"] and args.quick
    assert set(BENCHMARKS) == {
        "generation",
        "overhead",
        "concurrency",
        "throughput",
        "footprint",
        "prefix",
        "remote",
        "ipc",
        "grammar",
        "kv_cache",
        "verification",
        "direct_decode",
        "soak",
    }


def test_a_plain_run_leaves_out_opt_in_benchmarks_that_only_runs() -> None:
    assert "verification" not in default_names() and "verification" in opt_in_names()
    assert "soak" not in default_names() and "soak" in opt_in_names()
    assert default_names()[0] == "generation" and "concurrency" in default_names()
    assert build_parser().parse_args(["--only", "verification"]).only == ["verification"]


def test_levels_name_the_concurrencies_to_measure_and_refuse_anything_else() -> None:
    assert build_parser().parse_args(["--only", "concurrency", "--levels", "1,4,8,12"]).levels == [1, 4, 8, 12]
    assert build_parser().parse_args([]).levels is None
    for bad in ("", "1,x", "0,4", "4,-1"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["--levels", bad])


def test_rewriting_results_keeps_the_part_after_the_marker(tmp_path: Path) -> None:
    path = tmp_path / "RESULTS.md"
    path.write_text(f"# Benchmark results\n\nold table\n\n{KEPT_MARKER}\n\n## Verification\n\nby hand\n")
    write_results("# Benchmark results\n\nnew table\n", path)
    text = path.read_text()
    assert "new table" in text and "old table" not in text
    assert text.endswith(f"{KEPT_MARKER}\n\n## Verification\n\nby hand\n")
    write_results("# Benchmark results\n\nnewer table\n", path)
    assert path.read_text().count(KEPT_MARKER) == 1 and "by hand" in path.read_text()
    fresh = tmp_path / "fresh.md"
    write_results("# only this\n", fresh)
    assert fresh.read_text() == "# only this\n"


def test_p2p_thread_note_pairs_node_and_echo_windows() -> None:
    def window(done: int, p2p_s: float, own_p2p_s: float) -> Window:
        return Window(
            done=done,
            refused=0,
            seconds=1.0,
            peer_cpu=1.0,
            publisher_cpu=1.0,
            peer_split=(0.1, p2p_s, 0.0),
            publisher_p2p_cpu=own_p2p_s,
        )

    node = [window(100, 0.3, 0.4), window(200, 0.8, 0.6)]  # 3.00 and 4.00 ms; publisher 4.00 and 3.00
    echo = [window(100, 0.2, 0.2), window(400, 0.8, 1.2)]  # 2.00 and 2.00 ms; client 2.00 and 3.00
    note = p2p_thread_note(node, echo)
    assert "node 3.50 ms, echo peer 2.00 ms (paired ratio 1.75 (1.50-2.00) x)" in note
    assert "publisher 3.50 ms, echo client 2.50 ms (paired ratio 1.50 (1.00-2.00) x)" in note


@pytest.mark.slow
async def test_the_p2p_host_thread_of_this_process_is_found_and_its_cpu_counted() -> None:
    before = p2p_threads()
    host = P2PHost(Identity.generate().secret, ["/ip4/127.0.0.1/tcp/0"])
    await host.start()
    try:
        ident = p2p_threads().get(host.thread_name)
        assert ident is not None and host.thread_name not in before
        cpu = thread_cpu_seconds(ident)
        await host.subscribe("bench-cpu")  # work on the Trio thread
        assert thread_cpu_seconds(ident) >= cpu > 0
    finally:
        await host.stop()
    assert thread_cpu_seconds(None) == 0.0


def test_soak_compares_the_samples_after_the_windows_filled_and_names_what_went_wrong() -> None:
    # RSS rising until SETTLE_S, then flat on the daemon and 1% higher in the later half on the process.
    samples = [
        Sample(at, 100.0 + min(at, SETTLE_S) / 10, 300.0 if at < SETTLE_S + 60 else 303.0, int(at) * 300)
        for at in range(10, SETTLE_S + 130, 10)
    ]
    tally = Tally(sent=10, answered=8, errors={"busy: no capacity": 1}, unanswered=1)
    section = soak_section(BenchOptions(), samples[0], samples, tally, SETTLE_S + 120, SETTLE_S)
    daemon, execution = section.rows[1], section.rows[2]
    assert daemon.ratio is not None and daemon.ratio.median == 1.0
    assert execution.ratio is not None and execution.ratio.median == 1.01
    notes = " ".join(section.notes)
    assert "1 x 'busy: no capacity'" in notes and "unanswered: 1" in notes
    assert "bytes a task" in notes and "--quick" not in notes
    with pytest.raises(BenchmarkError, match="too few"):
        soak_section(BenchOptions(), samples[0], samples[:3], tally, 60, 30)
