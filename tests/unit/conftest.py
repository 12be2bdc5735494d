"""Fixtures shared by the unit tests of more than one package."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from models.options import RuntimeOptions
from models.scoring import TokenScorer
from tests.support.model_file import SMOLLM2


@pytest.fixture(scope="module")
def scorer() -> Iterator[TokenScorer]:
    """SmolLM2's teacher-forced scorer (512-token context, one thread), for the tests of proofs and their checks."""
    opened = TokenScorer(SMOLLM2, RuntimeOptions(n_ctx=512, n_threads=1))
    yield opened
    opened.close()
