"""The publisher's local scorers: model files on this machine opened for verifying results (`--verify`).

Each is opened as the file itself or as its bf16 scoring copy (models/scoring_copy.py), as the
`verify_precision` setting says; copies are cached in the directory given (run-task: its
`--data-dir`/scoring).
"""

from __future__ import annotations

import threading
from pathlib import Path

import structlog

from config.settings import Settings
from models.benchmark import build_fingerprint
from models.cpu import CpuInfo, extra_buffers_enabled
from models.llama_open import file_type
from models.options import RuntimeOptions
from models.registry import Registry
from models.requests import ContextOverflowError, ModelError, ModelLoadError
from models.scoring import ScoredTokens, ScoringFailedError, TokenScorer
from models.scoring_copy import amx_scores, choose_precision, scoring_copy
from models.store import ModelStore
from node.publisher.verification import UncheckableError

log = structlog.get_logger(__name__)


class LocalScorers:
    """Model name -> a TokenScorer of its file here, opened on first use (None: not on this machine)."""

    def __init__(self, settings: Settings, copies: Path, n_ctx: int = 4096) -> None:
        """`copies`: the directory of the bf16 scoring copies (made once per model file)."""
        self._registry = Registry.builtin().with_overrides(settings.registry)
        self._store = ModelStore(settings.models_dir)
        self._options = RuntimeOptions(
            n_ctx=n_ctx,
            n_threads=settings.n_threads,
            flash_attn=settings.flash_attn,
            extra_buffers=extra_buffers_enabled(settings.extra_buffers, CpuInfo.read()),
        )
        self._precision = settings.verify_precision
        self._copies = copies
        self._scorers: dict[str, TokenScorer | None] = {}
        self._lock = threading.Lock()

    def _path(self, name: str) -> Path | None:
        try:
            spec = self._registry.get(name)
        except ModelError:
            return None
        path = self._store.locate(spec)
        if path is None:
            return None
        cpu, system_info = CpuInfo.read(), build_fingerprint()
        amx = self._precision == "auto" and amx_scores(cpu, system_info, self._options.extra_buffers, file_type(path))
        if choose_precision(self._precision, path, cpu, system_info, amx=amx) == "model":
            return path
        log.info("opening a bf16 scoring copy", model=name, path=str(path))
        try:
            return scoring_copy(path, self._copies)
        except (ModelLoadError, OSError) as exc:  # a full disk, say: verify with the file itself, slower
            log.warning("no bf16 scoring copy; re-scoring with the model file", model=name, error=str(exc))
            return path

    def __call__(self, name: str) -> CheckingScorer | None:
        """A scorer for the model `name`, or None when its file is not here."""
        with self._lock:
            if name not in self._scorers:
                path = self._path(name)
                self._scorers[name] = None if path is None else TokenScorer(path, self._options)
            scorer = self._scorers[name]
            return None if scorer is None else CheckingScorer(scorer)

    def close(self) -> None:
        """Free every opened model."""
        with self._lock:
            for scorer in self._scorers.values():
                if scorer is not None:
                    scorer.close()
            self._scorers.clear()


class CheckingScorer:
    """A TokenScorer as the proof checker asks: what it cannot check here (a generation longer than this
    scoring context, a failure of llama.cpp) is UncheckableError, never the node's fault."""

    def __init__(self, scorer: TokenScorer) -> None:
        self._scorer = scorer

    def score(self, prompt_tokens: list[int], tokens: list[int]) -> ScoredTokens:
        """Score the tokens; a failure to score raises UncheckableError."""
        try:
            return self._scorer.score(prompt_tokens, tokens)
        except (ContextOverflowError, ScoringFailedError, MemoryError) as exc:
            raise UncheckableError(str(exc) or type(exc).__name__) from exc

    def prompt_text(self, prompt_tokens: list[int]) -> str:
        """The prompt tokens as text."""
        return self._scorer.prompt_text(prompt_tokens)
