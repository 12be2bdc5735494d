"""An execution process's memory limits: the operator's, or derived from the model's file and KV cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from config.settings import ConfigError, Settings
from models.gguf_file import kv_bytes_per_token
from models.llama_open import open_vocab
from models.remote.endpoint import MAX_RESPONSE_BYTES
from node.execution.memory_limits import MIB, derive_address_space_mb, footprint_bytes, memory_limits
from tests.support.model_file import SMOLLM2


def _settings(tmp_path: Path, **values: object) -> Settings:
    return Settings.load(data_dir=tmp_path, n_gpu_layers=0, n_threads=2, **values)


def test_kv_bytes_per_token_from_smollm2s_header() -> None:
    vocab = open_vocab(SMOLLM2)
    try:
        # 30 layers x 3 KV heads x (64 + 64) dims x 2 bytes (f16)
        assert kv_bytes_per_token(vocab.metadata) == 30 * 3 * 128 * 2
        # q8_0: blocks of 32 values in 34 bytes; q4_0: in 18 bytes
        assert kv_bytes_per_token(vocab.metadata, "q8_0") == 30 * 3 * 128 * 34 // 32
        assert kv_bytes_per_token(vocab.metadata, "q4_0") == 30 * 3 * 128 * 18 // 32
    finally:
        vocab.close()


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        # no grouped-query attention: as many KV heads as heads, each embedding_length / head_count wide
        ({"general.architecture": "x", "x.block_count": "2", "x.embedding_length": "64", "x.attention.head_count": "4"},
         2 * 4 * (16 + 16) * 2),
        # explicit key/value lengths win
        ({"general.architecture": "x", "x.block_count": "1", "x.embedding_length": "64", "x.attention.head_count": "4",
          "x.attention.head_count_kv": "1", "x.attention.key_length": "192", "x.attention.value_length": "128"},
         1 * 1 * (192 + 128) * 2),
        ({"general.architecture": "x", "x.embedding_length": "64"}, None),  # no layer count: unknown
    ],
)  # fmt: skip
def test_kv_bytes_per_token_defaults(metadata: dict[str, str], expected: int | None) -> None:
    assert kv_bytes_per_token(metadata) == expected


def test_unset_limits_are_derived_from_the_model(tmp_path: Path) -> None:
    limits = memory_limits(_settings(tmp_path), "smollm2:135m", parallel=4)
    footprint = 2 * SMOLLM2.stat().st_size + 30 * 3 * 128 * 2 * 2048 * (4 + 1)
    assert limits.max_rss_mb == int(footprint * 1.25) // MIB + 512
    assert limits.address_space_mb is not None and limits.address_space_mb > limits.max_rss_mb + 512


def test_a_loaded_models_header_is_used_and_the_file_not_read_again(tmp_path: Path) -> None:
    vocab = open_vocab(SMOLLM2)
    try:
        header = dict(vocab.metadata)
    finally:
        vocab.close()
    settings = _settings(tmp_path)
    read = memory_limits(settings, "smollm2:135m", parallel=4)
    assert memory_limits(settings, "smollm2:135m", 4, header).max_rss_mb == read.max_rss_mb
    # A header unlike the file's (one layer, not 30) is what counts: the file's was not opened.
    one_layer = {**header, f"{header['general.architecture']}.block_count": "1"}
    assert (
        footprint_bytes(settings, "smollm2:135m", 4, one_layer) == 2 * SMOLLM2.stat().st_size + 3 * 128 * 2 * 2048 * 5
    )


def test_the_operators_limits_win_and_zero_turns_a_guard_off(tmp_path: Path) -> None:
    limits = memory_limits(_settings(tmp_path, exec_max_rss_mb=0, exec_address_space_mb=4096), "smollm2:135m", 4)
    assert (limits.max_rss_mb, limits.address_space_mb) == (None, 4096)
    limits = memory_limits(_settings(tmp_path, exec_max_rss_mb=900, exec_address_space_mb=0), "smollm2:135m", 4)
    assert (limits.max_rss_mb, limits.address_space_mb) == (900, None)


def test_no_address_space_limit_with_gpu_offload(tmp_path: Path) -> None:
    limits = memory_limits(Settings.load(data_dir=tmp_path, n_gpu_layers=-1), "smollm2:135m", parallel=8)
    assert limits.address_space_mb is None and limits.max_rss_mb is not None


def test_address_space_leaves_room_over_the_rss_limit() -> None:
    assert derive_address_space_mb(800 * MIB, 1000, threads=4) == 800 + 1000 + 512 + 64 * 4 * 2


@pytest.mark.parametrize(("field", "value"), [("exec_max_rss_mb", 10), ("exec_address_space_mb", 100)])
def test_a_limit_too_small_to_load_anything_is_refused(tmp_path: Path, field: str, value: int) -> None:
    with pytest.raises(ConfigError, match="0 \\(off\\) or at least"):
        Settings.load(data_dir=tmp_path, **{field: value})


def test_a_remote_models_limit_covers_its_answers_in_flight(tmp_path: Path) -> None:
    registry = {"remote:m": {"backend": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m"}}
    limits = memory_limits(_settings(tmp_path, registry=registry), "remote:m", parallel=8)
    assert limits.max_rss_mb == int(8 * 4 * MAX_RESPONSE_BYTES * 1.25) // MIB + 512
