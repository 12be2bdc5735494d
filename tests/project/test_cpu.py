"""CPU-feature detection and the AMX fix, checkable on any x86-64 CPU.

llama.cpp's AMX kernels segfault as GCC 12 compiles them: it drops the stores that
build their tile configuration on the stack (models/cpu.py). install.sh patches the
sdist so the configuration is a constant (deploy/llama-cpp/amx-tile-config.patch), and
`extra_buffers = "auto"` keeps llama.cpp's extra buffer types off only on an AMX CPU
whose library holds an unpatched kernel. Both are checked here on recorded
/proc/cpuinfo samples, on code gcc compiles for Sapphire Rapids and on the built
library, whatever CPU runs the tests.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import models.cpu
from config.settings import Settings
from models.cpu import (
    NO_AMX_CFLAGS,
    CpuInfo,
    amx_instructions,
    amx_kernels_safe,
    amx_tile_configs,
    extra_buffers_enabled,
    ggml_cpu_libraries,
)
from node.execution.model_setup import runtime_options

SAMPLES = Path(__file__).resolve().parents[1] / "support" / "data" / "cpuinfo"
ROOT = Path(__file__).resolve().parents[2]
PATCH = ROOT / "deploy" / "llama-cpp" / "amx-tile-config.patch"

# ldtilecfg as GCC 12 compiled llama-cpp-python 0.3.36's AMX kernel for a Sapphire Rapids
# host (objdump of libggml-cpu.so): unpatched, the stack object `ldtilecfg 0xc0(%rsp)`;
# patched, the constant `ldtilecfg 0xf8d39(%rip)`. Between other instructions' bytes.
UNPATCHED_LOAD = b"\xc5\xf9\xef\xc0" + b"\xc4\xe2\x78\x49\x84\x24\xc0\x00\x00\x00" + b"\x75\x26"
PATCHED_LOAD = b"\x75\x26" + b"\xc4\xe2\x78\x49\x05\x39\x8d\x0f\x00" + b"\xc5\xf9\xef\xc0"
NO_AMX = b"\x55\x48\x89\xe5\xc3" * 64


def library(tmp_path: Path, name: str, machine_code: bytes) -> Path:
    path = tmp_path / f"{name}.so"
    path.write_bytes(machine_code)
    return path


@pytest.mark.parametrize(
    ("sample", "model", "amx", "avx512"),
    [
        ("intel-xeon-amx.txt", "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz", True, True),
        ("amd-epyc.txt", "AMD EPYC", False, True),
        ("intel-core-avx2.txt", "Intel(R) Core(TM) i7-8700 CPU @ 3.20GHz", False, False),
    ],
)
def test_cpuinfo_samples_are_read(sample: str, model: str, amx: bool, avx512: bool) -> None:
    cpu = CpuInfo.parse((SAMPLES / sample).read_text())
    assert cpu.model_name == model
    assert cpu.has_amx is amx
    assert ("avx512f" in cpu.flags) is avx512
    assert "avx2" in cpu.flags


@pytest.mark.parametrize(
    ("sample", "setting", "code", "enabled"),
    [
        ("intel-xeon-amx.txt", "auto", UNPATCHED_LOAD, False),
        ("intel-xeon-amx.txt", "auto", PATCHED_LOAD, True),
        ("intel-xeon-amx.txt", "auto", NO_AMX, True),
        ("intel-xeon-amx.txt", "on", UNPATCHED_LOAD, True),
        ("intel-xeon-amx.txt", "off", PATCHED_LOAD, False),
        ("amd-epyc.txt", "auto", UNPATCHED_LOAD, True),  # no AMX CPU runs the AMX kernel
        ("amd-epyc.txt", "off", NO_AMX, False),
        ("intel-core-avx2.txt", "auto", NO_AMX, True),
    ],
)
def test_extra_buffers_auto_is_off_only_for_an_unpatched_amx_kernel_on_an_amx_cpu(
    tmp_path: Path, sample: str, setting: str, code: bytes, enabled: bool
) -> None:
    cpu = CpuInfo.parse((SAMPLES / sample).read_text())
    libraries = [library(tmp_path, "libggml-cpu", code)]
    assert extra_buffers_enabled(setting, cpu, libraries) is enabled  # type: ignore[arg-type]


def test_tile_config_loads_are_told_apart_in_machine_code(tmp_path: Path) -> None:
    assert amx_tile_configs(UNPATCHED_LOAD) == ["stack"]
    assert amx_tile_configs(PATCHED_LOAD) == ["constant"]
    assert amx_tile_configs(NO_AMX) == []
    assert amx_tile_configs(PATCHED_LOAD + UNPATCHED_LOAD) == ["constant", "stack"]
    # The same opcode bytes with a register operand or another reg field are no ldtilecfg.
    assert amx_tile_configs(b"\xc4\xe2\x78\x49\xc0") == []
    assert amx_tile_configs(b"\xc4\xe2\x78\x49\x0d\x00\x00\x00\x00") == []
    unpatched, patched = library(tmp_path, "a", UNPATCHED_LOAD), library(tmp_path, "b", PATCHED_LOAD)
    assert amx_kernels_safe([patched]) and not amx_kernels_safe([patched, unpatched])
    assert not amx_kernels_safe([tmp_path / "missing.so"])  # unreadable: not known to be safe


def test_missing_or_empty_cpuinfo_is_an_unknown_cpu(tmp_path: Path) -> None:
    assert CpuInfo.read(tmp_path / "absent") == CpuInfo(model_name="unknown CPU", flags=frozenset())
    assert not CpuInfo.parse("").has_amx


def test_the_node_setting_reaches_the_runtime(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    amx = CpuInfo.parse((SAMPLES / "intel-xeon-amx.txt").read_text())
    monkeypatch.setattr(CpuInfo, "read", classmethod(lambda cls, path=None: amx))
    unpatched = [library(tmp_path, "libggml-cpu", UNPATCHED_LOAD)]
    monkeypatch.setattr(models.cpu, "ggml_cpu_libraries", lambda: unpatched)
    assert runtime_options(Settings.load()).extra_buffers is False
    assert runtime_options(Settings.load(extra_buffers="on")).extra_buffers is True
    patched = [library(tmp_path, "libggml-cpu-patched", PATCHED_LOAD)]
    monkeypatch.setattr(models.cpu, "ggml_cpu_libraries", lambda: patched)
    assert runtime_options(Settings.load()).extra_buffers is True
    monkeypatch.setenv("COMPUTE_NODE_EXTRA_BUFFERS", "sometimes")
    with pytest.raises(Exception, match="extra_buffers"):
        Settings.load()


def test_install_script_and_llama_server_build_with_the_patch_and_docker_without_amx() -> None:
    script = (ROOT / "install.sh").read_text()
    assert "LLAMA_PATCH=deploy/llama-cpp/amx-tile-config.patch" in script
    assert 'patch -d "$sdist" -p1' in script
    assert "-mno-amx" not in script
    from benchmarks.llama_server import LLAMA_PATCH

    assert LLAMA_PATCH == PATCH
    patch = PATCH.read_text()
    assert "+++ b/vendor/llama.cpp/ggml/src/ggml-cpu/amx/mmq.cpp" in patch
    assert "+    alignas(64) static const uint8_t tc[64] = {" in patch
    # The image builds a portable library (GGML_NATIVE=OFF), and keeps AMX out of it.
    assert "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16" in (ROOT / "Dockerfile").read_text()


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
def test_a_tile_config_on_the_stack_and_a_constant_one_compile_as_told_apart(tmp_path: Path) -> None:
    # Compiled only (any CPU): the unpatched kernel's shape and the patched one's.
    stack = (
        "#include <immintrin.h>\n#include <stdint.h>\n"
        "struct cfg { uint8_t palette, start; uint8_t reserved[14]; uint16_t colsb[16]; uint8_t rows[16]; };\n"
        "void init(void) { _Alignas(64) struct cfg tc = {0}; tc.palette = 1;"
        " tc.rows[0] = 8; tc.colsb[0] = 64; _tile_loadconfig(&tc); }\n"
    )
    constant = (
        "#include <immintrin.h>\n#include <stdint.h>\n"
        "void init(void) { _Alignas(64) static const uint8_t tc[64] = {1, 0, [16] = 64, [48] = 8};"
        " _tile_loadconfig(tc); }\n"
    )
    found = {}
    for name, source in (("stack", stack), ("constant", constant)):
        (tmp_path / f"{name}.c").write_text(source)
        out = tmp_path / f"{name}.so"
        compile_amx = ["gcc", "-O2", "-shared", "-fPIC", "-march=sapphirerapids", str(tmp_path / f"{name}.c")]
        subprocess.run([*compile_amx, "-o", str(out)], check=True)
        found[name] = amx_tile_configs(out.read_bytes())
    assert found == {"stack": ["stack"], "constant": ["constant"]}


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
def test_gcc_drops_amx_after_march_native_whatever_the_order() -> None:
    def amx_macros(*flags: str) -> list[str]:
        out = subprocess.run(["gcc", *flags, "-dM", "-E", "-"], input="", capture_output=True, text=True, check=True)
        return re.findall(r"__AMX_\w+__", out.stdout)

    assert amx_macros("-march=sapphirerapids"), "sapphirerapids should enable AMX"
    assert amx_macros("-march=sapphirerapids", *NO_AMX_CFLAGS.split()) == []
    assert amx_macros(*NO_AMX_CFLAGS.split(), "-march=sapphirerapids") == []


@pytest.mark.skipif(shutil.which("gcc") is None or shutil.which("objdump") is None, reason="needs gcc and objdump")
def test_the_instruction_check_finds_amx_code(tmp_path: Path) -> None:
    source = tmp_path / "amx.c"
    source.write_text(
        "#include <immintrin.h>\n"
        "void f(void *c, void *a, void *b) { _tile_loadconfig(c); _tile_loadd(1, a, 64);"
        " _tile_loadd(2, b, 64); _tile_dpbssd(0, 1, 2); _tile_stored(0, a, 64); _tile_release(); }\n"
    )
    with_amx, without_amx = tmp_path / "with.so", tmp_path / "without.so"
    subprocess.run(
        ["gcc", "-O2", "-shared", "-fPIC", "-march=sapphirerapids", str(source), "-o", str(with_amx)], check=True
    )
    plain = tmp_path / "plain.c"
    plain.write_text("int g(int x) { return x * 3; }\n")
    subprocess.run(
        [
            "gcc",
            "-O2",
            "-shared",
            "-fPIC",
            "-march=sapphirerapids",
            *NO_AMX_CFLAGS.split(),
            str(plain),
            "-o",
            str(without_amx),
        ],
        check=True,
    )
    assert amx_instructions(with_amx) >= 5
    assert amx_instructions(without_amx) == 0


@pytest.mark.skipif(shutil.which("objdump") is None, reason="needs objdump")
def test_the_installed_llama_cpp_loads_its_tile_configs_from_constants() -> None:
    libraries = ggml_cpu_libraries()
    assert libraries, "no libggml library found inside the llama_cpp package"
    for lib in libraries:
        loads = amx_tile_configs(lib.read_bytes())
        assert "stack" not in loads, f"{lib.name} holds the unpatched AMX kernel: rebuild with install.sh"
        # The byte scan finds what the disassembler finds.
        listing = subprocess.run(["objdump", "-d", str(lib)], capture_output=True, text=True, check=True).stdout
        assert len(loads) == listing.count("ldtilecfg"), lib.name
    if CpuInfo.read().has_amx:  # install.sh's native build on an AMX CPU holds the AMX kernels
        assert any(amx_instructions(lib) for lib in libraries), "no AMX kernel in a native build on an AMX CPU"
        assert extra_buffers_enabled("auto", CpuInfo.read())


def test_a_crashing_child_is_reported_with_cpu_signal_and_remedy() -> None:
    from models.selfcheck import crash_report, run_child

    done = run_child([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"])
    assert done.returncode == -signal.SIGSEGV
    amx = CpuInfo.parse((SAMPLES / "intel-xeon-amx.txt").read_text())
    report = crash_report(done.returncode, amx, extra_buffers=True)
    assert "SIGSEGV" in report and "Xeon(R) Platinum 8481C" in report and "extra_buffers" in report
    assert "GGML_NATIVE=OFF" in crash_report(done.returncode, amx, extra_buffers=False)
    assert "status 3" in crash_report(3, amx, extra_buffers=True)


@pytest.mark.slow
def test_selfcheck_generates_with_extra_buffers_on_and_off() -> None:
    for setting in ("on", "off"):
        done = subprocess.run(
            [sys.executable, "-m", "models.selfcheck", "--extra-buffers", setting, "--threads", "1"],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert "selfcheck ok: smollm2:135m generated 8 tokens" in done.stdout
        assert f"extra buffers {setting}" in done.stdout
