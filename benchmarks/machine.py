"""A description of the machine a run measured, for RESULTS.md."""

from __future__ import annotations

import os
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path

import llama_cpp


def describe() -> dict[str, str]:
    """CPU model, cores, RAM, OS, Python, llama_cpp version and build, date."""
    return {
        "cpu": _cpu_model(),
        "cores": f"{len(os.sched_getaffinity(0))} usable of {os.cpu_count()}",
        "ram": _ram(),
        "os": f"{platform.system()} {platform.release()} ({platform.machine()})",
        "python": sys.version.split()[0],
        "llama_cpp": f"{llama_cpp.__version__}; {_llama_build()}",
        "load average at start": " ".join(f"{v:.2f}" for v in os.getloadavg()),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ram() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def _llama_build() -> str:
    info = llama_cpp.llama_print_system_info().decode(errors="replace")
    flags = [part.split("=")[0].split(":")[-1].strip() for part in info.split("|") if part.strip().endswith("= 1")]
    gpu = "GPU offload" if llama_cpp.llama_supports_gpu_offload() else "CPU only"
    return f"{gpu}; " + " ".join(flags)
