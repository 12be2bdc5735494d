"""What an execution process is given: the node's settings and environment, less the secrets it has no use for.

The node's identity key; the operator's tool secrets (`tool_secrets`, `search_api_key`: the daemon makes the
processes' tool requests and adds those itself, tool_egress.py); the API keys of remote engines the process
does not serve (a registry entry's `api_key`, or the variable its `api_key_env` names); and every environment
variable it has no use for. A workflow that took a process over finds none of them there, so none can go out
in its result.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from config.settings import ENV_PREFIX, Settings
from models.registry import Registry
from models.requests import ModelError

# What a process reads in place of the search provider's key, which it needs only to know one is configured.
KEY_HELD_BY_THE_DAEMON = "held-by-the-daemon"
# The daemon's environment holds whatever the operator's shell, unit or container put there (a cloud's token
# under any name): a process gets only what it may use. The system's (paths, user, locale, time zone, resolver,
# certificates), Python's, the model store's (where the hub cache is), the tests' hooks, and the native runtime's
# knobs: llama.cpp and ggml, the GPU stacks (CUDA, ROCm/HIP, SYCL/oneAPI, Vulkan, OpenCL), OpenMP, BLAS and the
# allocators. `exec_env_pass` adds to it.
TEST_HOOKS = f"{ENV_PREFIX}TEST_"  # the tests' wrappers and probes read theirs in the process
PASSED_NAMES = frozenset(
    {
        *("PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TZDIR", "TMPDIR", "TERM", "LOCPATH"),
        *("LD_LIBRARY_PATH", "LD_PRELOAD", "GLIBC_TUNABLES", "GCONV_PATH", "RES_OPTIONS", "LOCALDOMAIN"),
        *("HOSTALIASES", "SSL_CERT_FILE", "SSL_CERT_DIR", "NIX_SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"),
        # the hub cache where the models' files are looked up (never a download: no endpoint, no token)
        *("HF_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HUB_OFFLINE"),
        *("DRI_PRIME", "MKLROOT", "NEOREADDEBUGKEYS", "OVERRIDEDEFAULTFP64SETTINGS", "RUSTICL_ENABLE"),
    }
)
PASSED_PREFIXES = (
    *("LC_", "PYTHON", "XDG_", TEST_HOOKS, "LLAMA_", "GGML_", "OPENSSL_", "MALLOC_", "TCMALLOC_"),
    *("CUDA_", "CUBLAS_", "CUBLASLT_", "NVIDIA_", "NCCL_", "__GL_", "__NV_", "__VK_"),
    *("HIP_", "HIPBLASLT_", "HCC_", "ROCR_", "ROCM_", "ROC_", "ROCBLAS_", "TENSILE_", "HSA_", "AMD_", "GPU_"),
    *("SYCL_", "ONEAPI_", "UR_", "ZE_", "ZES_", "IGC_", "VK_", "MESA_", "RADV_", "ANV_", "OCL_", "OPENCL_", "POCL_"),
    *("OMP_", "KMP_", "GOMP_", "MKL_", "OPENBLAS_", "GOTO_", "BLIS_"),
)
# Proxies (a proxy's URL may hold its password) go only to a process that serves a remote engine: a local
# model's process opens no socket.
PROXY_NAMES = frozenset({"HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"})
# What the names of credentials hold (HF_TOKEN, HF_HUB_ACCESSTOKEN, AWS_SECRET_ACCESS_KEY, DB_PASSWORD...) anywhere
# in them, and as words between underscores (OPENAI_API_KEY, STRIPE_KEY, GPU_PASS, DB_PWD, SERVICE_AUTH): no name
# the allow-list passes holds either by chance, so none passes but a served engine's `api_key_env` and a name
# `exec_env_pass` lists.
CREDENTIAL_PARTS = ("TOKEN", "SECRET", "PASSW", "CREDENTIAL", "APIKEY", "ACCESSKEY")
CREDENTIAL_WORDS = frozenset({"KEY", "KEYS", "PASS", "PWD", "AUTH", "CREDS"})


def child_settings(settings: Settings, model: str) -> dict[str, Any]:
    """The settings `model`'s execution process gets in `configure`: all but the node's identity key (and its
    file), the tools' secrets and the keys of registry entries it does not serve."""
    dumped = settings.model_dump(mode="json", exclude={"secret_key", "secret_key_file"})
    dumped["tool_secrets"] = {}
    if dumped.get("search_api_key") is not None:
        dumped["search_api_key"] = KEY_HELD_BY_THE_DAEMON
    served = _served(settings, model)
    dumped["registry"] = {
        name: entry if name in served else {k: v for k, v in entry.items() if k not in ("api_key", "api_key_env")}
        for name, entry in dumped.get("registry", {}).items()
    }
    return dumped


def launch_environment(
    base: Mapping[str, str], scratch: Path | None, settings: Mapping[str, Any], project_root: Path
) -> dict[str, str]:
    """The environment a process is spawned with: `base` (child_environment's), its scratch folder as the
    temporary one, the project's code first on its path, and glibc's arenas bounded under an address-space limit."""
    env = dict(base)
    if scratch is not None:
        env["TMPDIR"] = env["LIBFFI_TMPDIR"] = str(scratch)  # Python's tempfile, libffi's closures
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(project_root), env.get("PYTHONPATH", "")) if p)
    if settings.get("exec_address_space_mb") != 0:  # set, or derived ("auto", None)
        # glibc reserves 64 MiB of address space per thread arena; under RLIMIT_AS that is waste.
        env.setdefault("MALLOC_ARENA_MAX", "2")
    return env


def child_environment(environ: Mapping[str, str], settings: Settings | None = None, model: str = "") -> dict[str, str]:
    """The environment `model`'s execution process starts with: the daemon's variables it may use (`passes`),
    less those named as credentials are (`names_a_credential`) and every remote engine's `api_key_env`, but the
    `api_key_env` of an engine it serves and what `exec_env_pass` lists (with `settings`).

    Settings reach the process in `configure` (child_settings, without the secrets): no COMPUTE_NODE_ variable
    passes but the tests' hooks, so none given in the environment (COMPUTE_NODE_SECRET_KEY, its file's path,
    COMPUTE_NODE_TOOL_SECRETS) reaches the process that runs workflows and llama.cpp. Neither the node's secret
    settings nor another engine's `api_key_env` pass whatever `exec_env_pass` says.
    """
    served_keys: set[str] = set()
    other_keys: set[str] = set()
    listed: list[str] = []
    remote = False
    if settings is not None:
        every, served_keys, remote = _engines(settings, model)
        other_keys = every - served_keys
        listed = [name.upper() for name in settings.exec_env_pass]
    secrets = {Settings.env_var(name).upper() for name in Settings.secret_settings}
    secrets |= {Settings.env_var(file).upper() for file in Settings.secret_settings.values() if file}
    kept = {}
    for name, value in environ.items():
        upper = name.upper()
        if upper in secrets or upper in other_keys:
            continue
        if upper in served_keys or _listed(upper, listed):
            kept[name] = value
        elif not names_a_credential(name) and passes(upper, remote):
            kept[name] = value
    return kept


def passes(name: str, remote: bool = False) -> bool:
    """Whether an (upper-cased) variable is one an execution process may use: PASSED_NAMES, PASSED_PREFIXES, and
    with a remote engine (`remote`) the proxies."""
    return name in PASSED_NAMES or name.startswith(PASSED_PREFIXES) or (remote and name in PROXY_NAMES)


def _listed(name: str, listed: Iterable[str]) -> bool:
    """Whether `exec_env_pass` names it, or a prefix of it (`NAME*`)."""
    return any(name.startswith(entry[:-1]) if entry.endswith("*") else name == entry for entry in listed)


def names_a_credential(name: str) -> bool:
    """Whether an environment variable's name is one credentials go by (CREDENTIAL_PARTS, CREDENTIAL_WORDS)."""
    upper = name.upper()
    return any(part in upper for part in CREDENTIAL_PARTS) or not CREDENTIAL_WORDS.isdisjoint(upper.split("_"))


def _served(settings: Settings, model: str) -> set[str]:
    """The models `model`'s process serves: it, and the embedding model."""
    return {model, *([settings.embedding_model] if settings.embedding_model else [])}


def _engines(settings: Settings, model: str) -> tuple[set[str], set[str], bool]:
    """The `api_key_env` variables of every registry entry and of those `model`'s process serves (upper-cased),
    and whether a remote engine serves any of them."""
    try:
        registry = Registry.builtin().with_overrides(settings.registry)
        specs = {name: registry.get(name) for name in registry.names()}
    except ModelError:  # an invalid entry: check_models names it, and no process loads it
        return set(), set(), False
    served = [spec for name in _served(settings, model) if (spec := specs.get(name)) is not None]
    every = {spec.api_key_env.upper() for spec in specs.values() if spec.api_key_env}
    return every, {spec.api_key_env.upper() for spec in served if spec.api_key_env}, any(s.is_remote for s in served)
