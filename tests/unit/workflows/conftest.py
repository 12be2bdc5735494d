"""Fixtures shared by the workflow engine's tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from models.batching import BatchedLlamaModel
from models.options import RuntimeOptions
from tests.support.model_file import loaded_smollm2


@pytest.fixture(scope="module")
def model() -> Iterator[BatchedLlamaModel]:
    with loaded_smollm2(RuntimeOptions(n_ctx=1024, n_threads=1), parallel=1) as model:
        yield model
