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

_CONTEXT_STEP = 1024  # a scoring context grows to fit a step, in steps of this many tokens


class LocalScorers:
    """Model name -> a TokenScorer of its file here, opened on first use (None: not on this machine)."""

    def __init__(self, settings: Settings, copies: Path, n_ctx: int = 4096, max_n_ctx: int = 32768) -> None:
        """`copies`: the directory of the bf16 scoring copies (made once per model file); `max_n_ctx`: the
        largest scoring context opened for a long step (its KV cache and prefill are the verifier's cost)."""
        self._max_n_ctx = max_n_ctx
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
        self._paths: dict[str, Path | None] = {}
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
                self._paths[name] = path
                self._scorers[name] = None if path is None else TokenScorer(path, self._options)
            return None if self._scorers[name] is None else CheckingScorer(self, name)

    def fitting(self, name: str, tokens: int) -> TokenScorer:
        """`name`'s scorer, reopened with a larger context when `tokens` do not fit its own, up to the model's
        trained context; ContextOverflowError past that (nodes never serve longer: models/decode_loop.py),
        UncheckableError past `max_n_ctx` (within the trained context, which this verifier does not score)."""
        with self._lock:
            scorer, path = self._scorers[name], self._paths[name]
            assert scorer is not None and path is not None, "fitting() of a model whose file is not here"
            if tokens <= scorer.n_ctx:
                return scorer
            if 0 < scorer.n_ctx_train < tokens:
                raise ContextOverflowError(
                    f"{tokens} tokens, more than the model's trained context of {scorer.n_ctx_train}: "
                    "no node serves a prompt that long"
                )
            if tokens > self._max_n_ctx:
                raise UncheckableError(f"{tokens} tokens, more than this verifier scores ({self._max_n_ctx})")
            n_ctx = min(-(-tokens // _CONTEXT_STEP) * _CONTEXT_STEP, self._max_n_ctx)
            if scorer.n_ctx_train:
                n_ctx = min(n_ctx, scorer.n_ctx_train)
            log.info("opening a larger scoring context", model=name, n_ctx=n_ctx, tokens=tokens)
            # The smaller one is freed once no check holds it any more (a check in another thread may).
            grown = TokenScorer(path, self._options.model_copy(update={"n_ctx": n_ctx}))
            self._scorers[name] = grown
            return grown

    def close(self) -> None:
        """Free every opened model."""
        with self._lock:
            for scorer in self._scorers.values():
                if scorer is not None:
                    scorer.close()
            self._scorers.clear()


class CheckingScorer:
    """A model's scorer as the proof checker asks: a step longer than the scoring context gets a larger one
    (up to the model's trained context; a longer step is the node's fault), and what it cannot check here
    (a failure of llama.cpp, memory) is UncheckableError, never the node's fault."""

    def __init__(self, scorers: LocalScorers, name: str) -> None:
        self._scorers = scorers
        self._name = name

    def score(self, prompt_tokens: list[int], tokens: list[int]) -> ScoredTokens:
        """Score the tokens; ContextOverflowError past the model's trained context, UncheckableError when
        scoring fails here."""
        try:
            return self._scorers.fitting(self._name, len(prompt_tokens) + len(tokens)).score(prompt_tokens, tokens)
        except (ContextOverflowError, UncheckableError):
            raise  # past the trained context: the proof's fault; past this verifier's: nobody's
        except (ModelLoadError, ScoringFailedError, MemoryError) as exc:  # a larger context that would not open
            raise UncheckableError(str(exc) or type(exc).__name__) from exc

    def prompt_text(self, prompt_tokens: list[int]) -> str:
        """The prompt tokens as text."""
        return self._scorers.fitting(self._name, 0).prompt_text(prompt_tokens)
