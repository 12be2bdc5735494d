"""What this CPU can do, read from /proc/cpuinfo, and the llama.cpp choices that follow.

llama.cpp's AMX kernels (`ggml_backend_amx_mul_mat`) segfaulted at the first batched
decode on Intel Xeons with AMX (llama.cpp issue 20824). The cause is the compiler, not
the CPU: `ggml_tile_config_init` builds the tile configuration on the stack and GCC 12
drops the stores of its row and column counts (it does not see `ldtilecfg` read them),
so the configuration loaded is stack garbage. `install.sh` builds llama.cpp from the
sdist with deploy/llama-cpp/amx-tile-config.patch, which makes it a constant in the
library's read-only data. Where that is checkable on any CPU:

- `amx_tile_configs` reads the machine code of a library and gives, for each `ldtilecfg`,
  whether it loads a constant (rip-relative: the patched build) or a stack object;
- `extra_buffers = "auto"` enables llama.cpp's extra buffer types (AMX, and the CPU
  weight repacking that shares the switch) unless the CPU has AMX and the loaded library
  holds an unpatched AMX kernel (`amx_kernels_safe`). Measured on a 2-core Xeon (Sapphire
  Rapids class, 2 threads, SmolLM2 Q4_1, the same library): prompt 237 -> 848 tok/s, decode
  90 -> 179 tok/s with the patched AMX kernels. Repacking alone: on AMD EPYC, SmolLM2 as Q4_0 generates
  167 tok/s with it vs 131 without (prompt 799 vs 547); Q4_1 is not repacked.
"""

from __future__ import annotations

import os
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
    "TileConfigLoad",
    "amx_instructions",
    "amx_kernels_safe",
    "amx_tile_configs",
    "extra_buffers_enabled",
    "ggml_cpu_libraries",
]

ExtraBuffers = Literal["auto", "on", "off"]
AMX_FLAGS = frozenset({"amx_tile", "amx_int8", "amx_bf16"})
# Compiler flags that keep AMX code out of a build (the Docker image's portable build sets them).
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


def extra_buffers_enabled(setting: ExtraBuffers, cpu: CpuInfo, libraries: list[Path] | None = None) -> bool:
    """Whether llama.cpp may use extra buffer types: auto means on, except on an AMX CPU whose
    llama.cpp library (`libraries`, default the installed one) holds an unpatched AMX kernel."""
    if setting == "auto":
        return not cpu.has_amx or amx_kernels_safe(ggml_cpu_libraries() if libraries is None else libraries)
    return setting == "on"


def ggml_cpu_libraries() -> list[Path]:
    """The ggml CPU backend libraries llama_cpp loads: its package's, or LLAMA_CPP_LIB_PATH's."""
    import llama_cpp

    override = os.environ.get("LLAMA_CPP_LIB_PATH")
    lib_dir = Path(override) if override else Path(llama_cpp.__file__).parent / "lib"
    return sorted(lib_dir.glob("libggml-cpu*.so*")) or sorted(lib_dir.glob("libggml*.so*"))


TileConfigLoad = Literal["constant", "stack"]

# `ldtilecfg m512` as assemblers encode it: a three-byte VEX prefix (C4), a byte whose low five
# bits name the 0F38 opcode map (its top three are register-extension bits), W0 vvvv=1111 L0
# pp=00 (78), the opcode (49), then the ModRM byte of the memory operand (reg field 0).
_LDTILECFG = re.compile(rb"\xc4[\x02\x22\x42\x62\x82\xa2\xc2\xe2]\x78\x49(.)", re.DOTALL)
_RIP_RELATIVE = 0x05  # ModRM mod=00 rm=101: [rip + disp32], an object in the library's own data


def amx_tile_configs(machine_code: bytes) -> list[TileConfigLoad]:
    """For each `ldtilecfg` in `machine_code` (a library's bytes): "constant" where it loads an
    object of the library's data (the patched build), "stack" where it loads one built at run
    time (the unpatched build, which GCC 12 miscompiles)."""
    loads: list[TileConfigLoad] = []
    for match in _LDTILECFG.finditer(machine_code):
        modrm = match.group(1)[0]
        if modrm & 0x38 or modrm >> 6 == 3:
            continue  # reg field not 0, or a register operand: not an ldtilecfg
        loads.append("constant" if modrm == _RIP_RELATIVE else "stack")
    return loads


def amx_kernels_safe(libraries: list[Path]) -> bool:
    """Whether llama.cpp's AMX kernels in `libraries` can run: none there, or every tile
    configuration a constant (deploy/llama-cpp/amx-tile-config.patch). A library that cannot be
    read counts as unsafe."""
    for library in libraries:
        try:
            machine_code = library.read_bytes()
        except OSError:
            return False
        if "stack" in amx_tile_configs(machine_code):
            return False
    return True


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
