"""CPU-feature detection and the AMX mitigation, checkable on any x86-64 CPU.

llama.cpp's AMX kernels segfault on some Intel Xeons (models/cpu.py). The build
keeps them out (install.sh's -mno-amx-* flags) and `extra_buffers = "auto"` turns
llama.cpp's extra buffer types off on AMX CPUs; both are checked here on recorded
/proc/cpuinfo samples and on the built library, whatever CPU runs the tests.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from config.settings import Settings
from models.cpu import NO_AMX_CFLAGS, CpuInfo, amx_instructions, extra_buffers_enabled, ggml_cpu_libraries
from node.execution.model_setup import runtime_options

SAMPLES = Path(__file__).resolve().parents[1] / "support" / "data" / "cpuinfo"
ROOT = Path(__file__).resolve().parents[2]


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
    ("sample", "setting", "enabled"),
    [
        ("intel-xeon-amx.txt", "auto", False),
        ("intel-xeon-amx.txt", "on", True),
        ("amd-epyc.txt", "auto", True),
        ("amd-epyc.txt", "off", False),
        ("intel-core-avx2.txt", "auto", True),
    ],
)
def test_extra_buffers_auto_is_off_only_on_amx(sample: str, setting: str, enabled: bool) -> None:
    cpu = CpuInfo.parse((SAMPLES / sample).read_text())
    assert extra_buffers_enabled(setting, cpu) is enabled  # type: ignore[arg-type]


def test_missing_or_empty_cpuinfo_is_an_unknown_cpu(tmp_path: Path) -> None:
    assert CpuInfo.read(tmp_path / "absent") == CpuInfo(model_name="unknown CPU", flags=frozenset())
    assert not CpuInfo.parse("").has_amx


def test_the_node_setting_reaches_the_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    amx = CpuInfo.parse((SAMPLES / "intel-xeon-amx.txt").read_text())
    monkeypatch.setattr(CpuInfo, "read", classmethod(lambda cls, path=None: amx))
    assert runtime_options(Settings.load()).extra_buffers is False
    assert runtime_options(Settings.load(extra_buffers="on")).extra_buffers is True
    monkeypatch.setenv("COMPUTE_NODE_EXTRA_BUFFERS", "sometimes")
    with pytest.raises(Exception, match="extra_buffers"):
        Settings.load()


def test_install_script_builds_with_the_same_no_amx_flags() -> None:
    script = (ROOT / "install.sh").read_text()
    assert f'NO_AMX_CFLAGS="{NO_AMX_CFLAGS}"' in script
    assert "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16" in (ROOT / "Dockerfile").read_text()


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
def test_the_installed_llama_cpp_has_no_amx_kernels() -> None:
    libraries = ggml_cpu_libraries()
    assert libraries, "no libggml library found inside the llama_cpp package"
    for library in libraries:
        assert amx_instructions(library) == 0, f"{library.name} holds AMX code: rebuild with install.sh"


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
