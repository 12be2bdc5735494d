"""The publisher's local scorers open a model's bf16 scoring copy when `verify_precision` asks for it."""

from __future__ import annotations

from pathlib import Path

import pytest

import node.cli.scorers as scorers_module
from config.settings import Settings
from node.cli.scorers import LocalScorers


def test_the_publishers_scorers_open_the_copy_when_the_setting_asks(tmp_path: Path) -> None:
    scorers = LocalScorers(Settings(verify_precision="bf16"), tmp_path / "scoring", n_ctx=512)
    try:
        assert scorers("smollm2:135m") is not None
        assert [p.name for p in (tmp_path / "scoring").glob("*.bf16.gguf")]
        assert scorers("no-such-model:1b") is None
    finally:
        scorers.close()
    plain = LocalScorers(Settings(verify_precision="model"), tmp_path / "plain" / "scoring", n_ctx=512)
    try:
        assert plain("smollm2:135m") is not None
        assert not (tmp_path / "plain" / "scoring").exists()
    finally:
        plain.close()


def test_a_copy_that_cannot_be_made_falls_back_to_the_model_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_copy(path: Path, directory: Path) -> Path:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(scorers_module, "scoring_copy", no_copy)
    scorers = LocalScorers(Settings(verify_precision="bf16"), tmp_path / "scoring", n_ctx=512)
    try:
        assert scorers("smollm2:135m") is not None  # verifying still works, on the model file
    finally:
        scorers.close()
