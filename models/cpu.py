"""What this CPU can do, read from /proc/cpuinfo, and the llama.cpp choices that follow.

llama.cpp's AMX kernels (`ggml_backend_amx_mul_mat`) segfault at the first decode on
some virtualised Intel Xeons with AMX (llama.cpp issue 20824). Two defences, both
checkable on any CPU:

- `install.sh` builds llama.cpp with `-mno-amx-tile -mno-amx-int8 -mno-amx-bf16`, so
  the built `libggml-cpu` holds no AMX kernel at all (`amx_instructions` finds none);
- `extra_buffers = "auto"` turns llama.cpp's extra buffer types (AMX, and the CPU
  weight repacking that shares the switch) off where the CPU has AMX, for a library
  built elsewhere. Repacking stays on everywhere else: measured on AMD EPYC (2
  threads), SmolLM2 as Q4_0 generates 167 tok/s with it vs 131 without (prompt 799
  vs 547); the default model (Q4_1, not repacked) runs the same either way.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

__all__ = [
    "AMX_FLAGS",
    "NO_AMX_CFLAGS",
    "CpuInfo",
    "ExtraBuffers",
    "amx_instructions",
    "extra_buffers_enabled",
    "ggml_cpu_libraries",
]

ExtraBuffers = Literal["auto", "on", "off"]
AMX_FLAGS = frozenset({"amx_tile", "amx_int8", "amx_bf16"})
# Compiler flags that keep AMX code out of a native build; install.sh sets the same.
NO_AMX_CFLAGS = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
CPUINFO = Path("/proc/cpuinfo")


class CpuInfo(BaseModel):
    """The first processor's model name and instruction-set flags."""

    model_config = ConfigDict(frozen=True)

    model_name: str
    flags: frozenset[str]

    @classmethod
    def parse(cls, text: str) -> CpuInfo:
        """Read the text of /proc/cpuinfo (x86 `flags`, or arm64 `Features`)."""
        model_name = "unknown CPU"
        flags: frozenset[str] = frozenset()
        for line in text.splitlines():
            key, sep, value = line.partition(":")
            if not sep:
                continue
            key = key.strip()
            if key in ("model name", "Model") and model_name == "unknown CPU":
                model_name = value.strip()
            elif key in ("flags", "Features") and not flags:
                flags = frozenset(value.split())
        return cls(model_name=model_name, flags=flags)

    @classmethod
    def read(cls, path: Path = CPUINFO) -> CpuInfo:
        """This machine's CPU; an unknown CPU with no flags where the file is missing."""
        try:
            return cls.parse(path.read_text(errors="replace"))
        except OSError:
            return cls(model_name="unknown CPU", flags=frozenset())

    @property
    def has_amx(self) -> bool:
        """True where the CPU offers any AMX extension."""
        return bool(self.flags & AMX_FLAGS)


def extra_buffers_enabled(setting: ExtraBuffers, cpu: CpuInfo) -> bool:
    """Whether llama.cpp may use extra buffer types: auto means off on AMX CPUs."""
    if setting == "auto":
        return not cpu.has_amx
    return setting == "on"


def ggml_cpu_libraries() -> list[Path]:
    """The ggml CPU backend libraries shipped inside the installed llama_cpp package."""
    import llama_cpp

    lib_dir = Path(llama_cpp.__file__).parent / "lib"
    return sorted(lib_dir.glob("libggml-cpu*.so*")) or sorted(lib_dir.glob("libggml*.so*"))


# AMX tile instructions as objdump prints them: a library without them cannot take
# llama.cpp's AMX path, whatever CPU it runs on.
_AMX_INSTRUCTION = re.compile(
    r"\s(ldtilecfg|sttilecfg|tileloadd|tileloaddt1|tilestored|tilezero|tilerelease|tdpb[a-z0-9]*)\s"
)


def amx_instructions(binary: Path) -> int:
    """How many AMX instructions the machine code of `binary` holds (0 for a build without AMX)."""
    out = subprocess.run(
        ["objdump", "-d", "--no-show-raw-insn", str(binary)], capture_output=True, text=True, check=True
    )
    return len(_AMX_INSTRUCTION.findall(out.stdout))
