"""Fixtures shared by the workflow engine's tests."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from models.batching import BatchedLlamaModel
from models.options import RuntimeOptions
from tests.support.model_file import SMOLLM2 as GGUF


@pytest.fixture(scope="module")
def model() -> Iterator[BatchedLlamaModel]:
    # The runtime binds to no event loop, so one model serves every test's loop.
    loaded = asyncio.run(BatchedLlamaModel.load("smollm2", GGUF, RuntimeOptions(n_ctx=1024, n_threads=1), parallel=1))
    yield loaded
    asyncio.run(loaded.close())
