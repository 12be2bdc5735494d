"""The bf16 scoring copy: when `auto` takes it (on recorded CPUs and builds), how it is made and cached,
and that it re-scores the model's own generations within the verifier's position tolerance."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from models.batching import BatchedLlamaModel
from models.cpu import CpuInfo
from models.llama_open import file_type
from models.options import RuntimeOptions
from models.requests import ChatMessage, GenerationRequest, ModelLoadError
from models.scoring import TokenScorer
from models.scoring_copy import AUTO_MAX_FILE_BYTES, amx_scores, bf16_pays, choose_precision, scoring_copy
from models.tracing import GenerationTrace, generation_traces
from node.publisher.verification import POSITION_TOLERANCE
from tests.support.model_file import SMOLLM2

SAMPLES = Path(__file__).resolve().parents[2] / "support" / "data" / "cpuinfo"
BUILD_BF16 = "CPU : SSE3 = 1 | AVX2 = 1 | F16C = 1 | AVX512 = 1 | AVX512_BF16 = 1 | LLAMAFILE = 1 | REPACK = 1 |"
BUILD_PLAIN = "CPU : SSE3 = 1 | AVX2 = 1 | F16C = 1 | AVX512 = 1 | LLAMAFILE = 1 | REPACK = 1 |"
BUILD_AMX = "CPU : SSE3 = 1 | AVX2 = 1 | AVX512 = 1 | AVX512_VNNI = 1 | AVX512_BF16 = 1 | AMX_INT8 = 1 | REPACK = 1 |"
Q4_1, F16, Q5_1 = 3, 1, 9  # llama_ftype


@pytest.mark.parametrize(
    ("sample", "build", "pays"),
    [
        ("amd-epyc.txt", BUILD_BF16, True),
        ("intel-xeon-amx.txt", BUILD_BF16, True),
        ("amd-epyc.txt", BUILD_PLAIN, False),  # a library built without the bf16 kernels
        ("intel-core-avx2.txt", BUILD_BF16, False),  # a library built elsewhere, on a CPU without bf16
    ],
)
def test_bf16_pays_where_the_cpu_and_the_build_both_have_it(sample: str, build: str, pays: bool) -> None:
    assert bf16_pays(CpuInfo.parse((SAMPLES / sample).read_text()), build) is pays


def test_auto_takes_the_copy_only_for_a_small_file_on_a_bf16_machine(tmp_path: Path) -> None:
    epyc = CpuInfo.parse((SAMPLES / "amd-epyc.txt").read_text())
    small, large = tmp_path / "small.gguf", tmp_path / "large.gguf"
    small.write_bytes(b"GGUF")
    with large.open("wb") as f:  # sparse: its size, not its blocks
        f.truncate(AUTO_MAX_FILE_BYTES + 1)
    assert choose_precision("auto", small, epyc, BUILD_BF16) == "bf16"
    assert choose_precision("auto", large, epyc, BUILD_BF16) == "model"
    assert choose_precision("auto", small, epyc, BUILD_PLAIN) == "model"
    assert choose_precision("model", small, epyc, BUILD_BF16) == "model"
    assert choose_precision("bf16", large, epyc, BUILD_PLAIN) == "bf16"  # asked for: taken


@pytest.mark.parametrize(
    ("sample", "build", "extra_buffers", "ftype", "amx"),
    [
        ("intel-xeon-amx.txt", BUILD_AMX, True, Q4_1, True),
        ("intel-xeon-amx.txt", BUILD_AMX, False, Q4_1, False),  # extra buffers off: no AMX kernel runs
        ("intel-xeon-amx.txt", BUILD_BF16, True, Q4_1, False),  # a build without the AMX kernels
        ("intel-xeon-amx.txt", BUILD_AMX, True, F16, False),  # weights the AMX kernels do not multiply
        ("intel-xeon-amx.txt", BUILD_AMX, True, Q5_1, False),
        ("intel-xeon-amx.txt", BUILD_AMX, True, None, False),  # a file with no type
        ("amd-epyc.txt", BUILD_AMX, True, Q4_1, False),  # a library built elsewhere, on a CPU without AMX
    ],
)
def test_amx_scores_where_cpu_build_setting_and_file_all_allow_it(
    sample: str, build: str, extra_buffers: bool, ftype: int | None, amx: bool
) -> None:
    assert amx_scores(CpuInfo.parse((SAMPLES / sample).read_text()), build, extra_buffers, ftype) is amx


def test_auto_keeps_the_model_file_where_amx_multiplies_it(tmp_path: Path) -> None:
    xeon = CpuInfo.parse((SAMPLES / "intel-xeon-amx.txt").read_text())
    small = tmp_path / "small.gguf"
    small.write_bytes(b"GGUF")
    assert choose_precision("auto", small, xeon, BUILD_AMX, amx=True) == "model"
    assert choose_precision("auto", small, xeon, BUILD_AMX, amx=False) == "bf16"
    assert choose_precision("bf16", small, xeon, BUILD_AMX, amx=True) == "bf16"  # asked for: taken
    assert file_type(SMOLLM2) == Q4_1  # the default model's type, read from its header
    assert file_type(tmp_path / "missing.gguf") is None


def test_a_file_that_is_no_model_gets_a_named_error(tmp_path: Path) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(ModelLoadError, match="bf16 scoring copy of"):
        scoring_copy(broken, tmp_path / "copies")
    assert not list((tmp_path / "copies").iterdir())  # no partial file left behind


async def _trace(prompt: str) -> GenerationTrace:
    traces: list[GenerationTrace] = []
    generation_traces.set(traces)
    model = await BatchedLlamaModel.load("smollm2", SMOLLM2, RuntimeOptions(n_ctx=512, n_threads=1), parallel=1)
    try:
        messages = [ChatMessage(role="user", content=prompt)]
        await model.generate(GenerationRequest(messages=messages, max_tokens=32, temperature=0.7, seed=3))
    finally:
        await model.close()
    return traces[0]


async def test_the_copy_is_made_once_and_rescores_within_the_tolerance(tmp_path: Path) -> None:
    copy = await asyncio.to_thread(scoring_copy, SMOLLM2, tmp_path)
    assert copy.name.endswith(".bf16.gguf") and copy.stat().st_size > SMOLLM2.stat().st_size
    made = copy.stat().st_mtime_ns
    assert scoring_copy(SMOLLM2, tmp_path) == copy and copy.stat().st_mtime_ns == made  # cached
    trace = await _trace("Describe a quiet harbour.")
    scorer = TokenScorer(copy, RuntimeOptions(n_ctx=512, n_threads=1))
    try:
        scores = await asyncio.to_thread(scorer.score, trace.prompt_tokens, trace.tokens)
    finally:
        scorer.close()
    deviations = [abs(a - b) for a, b in zip(trace.logprobs, scores.logprobs, strict=True)]
    assert len(deviations) == len(trace.tokens) > 0
    assert max(deviations) < POSITION_TOLERANCE / 2


def test_a_changed_model_file_gets_a_new_copy_and_the_old_one_goes(tmp_path: Path) -> None:
    source = tmp_path / "model.gguf"
    source.write_bytes(SMOLLM2.read_bytes())
    first = scoring_copy(source, tmp_path / "copies")
    os.utime(source, ns=(time.time_ns(), time.time_ns() + 10**9))  # replaced by a newer download, say
    second = scoring_copy(source, tmp_path / "copies")
    assert second != first and second.is_file() and not first.exists()
    assert [p.name for p in (tmp_path / "copies").iterdir()] == [second.name]
