"""The publisher's local scorers: model files on this machine opened for verifying results (`--verify`)."""

from __future__ import annotations

import threading
from pathlib import Path

from config.settings import Settings
from models.options import RuntimeOptions
from models.registry import Registry
from models.requests import ModelError
from models.scoring import TokenScorer
from models.store import ModelStore


class LocalScorers:
    """Model name -> a TokenScorer of its file here, opened on first use (None: not on this machine)."""

    def __init__(self, settings: Settings, n_ctx: int = 4096) -> None:
        self._registry = Registry.builtin().with_overrides(settings.registry)
        self._store = ModelStore(settings.models_dir)
        self._options = RuntimeOptions(n_ctx=n_ctx, n_threads=settings.n_threads)
        self._scorers: dict[str, TokenScorer | None] = {}
        self._lock = threading.Lock()

    def _path(self, name: str) -> Path | None:
        try:
            spec = self._registry.get(name)
        except ModelError:
            return None
        return self._store.locate(spec)

    def __call__(self, name: str) -> TokenScorer | None:
        with self._lock:
            if name not in self._scorers:
                path = self._path(name)
                self._scorers[name] = None if path is None else TokenScorer(path, self._options)
            return self._scorers[name]

    def close(self) -> None:
        """Free every opened model."""
        with self._lock:
            for scorer in self._scorers.values():
                if scorer is not None:
                    scorer.close()
            self._scorers.clear()
