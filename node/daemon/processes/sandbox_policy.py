"""What an execution process may not touch: the daemon's side of node/execution/sandbox.py.

Private: the data dir (the identity key, the journal and ledger with every publisher's tasks and results,
the lock), the key file and the config file wherever they are, and the home folder (where credentials live:
~/.aws, ~/.netrc, the hub's token, a cloud CLI's files), unless it holds the system's folders (a service
user's `/`). Readable inside them: the models dir, a registry entry's model file and its hub cache folder,
the libraries and certificates the environment names. Read only wherever it is: the interpreter's code.
Writable: nothing here; each process gets its own scratch folder (scratch.py) when it is spawned. In /dev,
private otherwise: /dev/null and the like, and a GPU's nodes with shared memory where there is a GPU; the rest
is read only. The temporary folders are not writable: what is left there outlives the process, and on tmpfs
holds memory no limit of its counts. A process reports the speeds it measures, and the daemon keeps them
(speed_keeper.py).
"""

from __future__ import annotations

import glob
import os
import sys
from pathlib import Path
from urllib.parse import urlsplit

import structlog

from config.settings import ConfigError, Settings
from models.registry import Registry, RegistryError
from models.requests import ModelError
from node.daemon.processes.scratch import remove_tree
from node.execution.protocol import SandboxPolicy

log = structlog.get_logger("node.daemon.processes")

_PROJECT_ROOT = Path(__file__).resolve().parents[3]
# What older nodes let execution processes write in the data dir: their speed cache, then the folder holding
# it. A process a workflow had taken over may have left any figure (or anything) there.
_OLD_SPEED_CACHES = ("benchmarks.json", "execution")
# /dev is private but for these (globs): a process of a node run as root keeps uid 0 without capabilities, and
# file permissions alone let it open root's disks (which hold the data dir), consoles and terminals.
_DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")
# CUDA (and its caps), Vulkan and ROCm, CUDA on WSL2, CUDA on Jetson.
_GPU_DEVICES = ("/dev/nvidia*", "/dev/dri", "/dev/kfd", "/dev/dxg", "/dev/nvmap", "/dev/nvhost-*")
# A home folder that is one of these or holds one, or lies in the system's code, is not made private (a service
# user's home may be `/`; CUDA may lie in /usr/local or /opt).
_SYSTEM_FOLDERS = ("/usr", "/lib", "/lib64", "/bin", "/sbin", "/etc", "/opt", "/var", "/srv", "/run", "/tmp")
_SYSTEM_CODE = ("/usr", "/lib", "/lib64", "/bin", "/sbin", "/etc")
# Variables whose file or folder the process reads, wherever it is.
_READ_BY_PATH = ("LLAMA_CPP_LIB_PATH", "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")
# Kept where a GPU is: its drivers may use it (not tested on one); nothing on a CPU host does.
_SHARED_MEMORY = "/dev/shm"


class SandboxPolicyError(ConfigError):
    """`sandbox = on`, but no policy can keep the private paths private (the message says why)."""


def prepare_sandbox(settings: Settings) -> SandboxPolicy | None:
    """The policy the execution processes confine themselves by (None: `sandbox = off`, or `auto` where the
    node's own code lies in a private path). Makes the data dir, and removes what older nodes let execution
    processes write there."""
    try:
        settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # private before anything is in it
    except (FileExistsError, NotADirectoryError):  # the path, or one above it, is a file
        raise ConfigError(f"invalid setting 'data_dir': {settings.data_dir} is not a directory") from None
    except OSError as exc:
        raise ConfigError(f"invalid setting 'data_dir': cannot make {settings.data_dir}: {exc.strerror}") from None
    for name in _OLD_SPEED_CACHES:
        remove_tree(settings.data_dir / name)
    if settings.sandbox == "off":
        return None
    private = [_real(settings.data_dir), Path("/dev"), *_home()]
    if settings.secret_key_file is not None:
        private.append(_real(settings.secret_key_file))
    config_file = settings.model_config.get("toml_file")
    if isinstance(config_file, str | os.PathLike):
        private.append(_real(Path(config_file)))
    models = [_real(path) for path in (settings.models_dir, *_model_files(settings), *_named_by_environment())]
    readable = [path for path in models if not any(_within(secret, [path]) for secret in private)]
    for code in _code_paths():  # read only wherever it is: a write there would run unconfined next start
        exposed = [path for path in private if _within(path, [code])]
        if _within(code, private) and exposed:
            problem = f"the node's code at {code} is in a private path and holds {exposed[0]}"
            if settings.sandbox == "on":
                raise SandboxPolicyError(f"sandbox = on, but {problem}: move the data dir away from the code")
            log.warning("execution processes not confined", reason=problem)
            return None
        readable.append(code)
    gpu = any(glob.glob(pattern) for pattern in _GPU_DEVICES)
    return SandboxPolicy(
        required=settings.sandbox == "on",
        private=[str(path) for path in private],
        readable=[str(path) for path in readable],
        # The process's own scratch folder is added when it is spawned (handle.py).
        writable=[_SHARED_MEMORY] if gpu else [],
        devices=[*_DEVICES, *_GPU_DEVICES],
    )


def network_for(policy: SandboxPolicy | None, settings: Settings, model: str) -> SandboxPolicy | None:
    """`policy` for `model`'s process: TCP connections to the ports of the remote engines that serve the model or
    its embeddings, if any. A local model's process gets no socket: its tools' requests are the daemon's to make
    (tool_egress.py)."""
    if policy is None:
        return None
    names = [model, *([settings.embedding_model] if settings.embedding_model else [])]
    ports: set[int] = set()
    try:
        registry = Registry.builtin().with_overrides(settings.registry)
        for spec in (registry.get(name) for name in names):
            if spec.is_remote and spec.base_url is not None:
                url = urlsplit(spec.base_url)
                ports.add(url.port or (443 if url.scheme == "https" else 80))
    except (RegistryError, ModelError, ValueError):  # ValueError: a port out of range
        ports = set()  # check_models names it; such a process loads nothing
    return policy.model_copy(update={"connect_ports": sorted(ports)})


def _model_files(settings: Settings) -> list[Path]:
    """Where the configured models' files may be, inside the data dir or not: a registry entry's own path
    (with the parts of a split file beside it), the hub cache's folder of its repository (the systemd unit's
    HF_HOME and the image's HOME put the cache in the data dir)."""
    try:
        registry = Registry.builtin().with_overrides(settings.registry)
    except RegistryError:
        return []  # check_models names it before any process starts
    names = [*settings.models, *([settings.embedding_model] if settings.embedding_model else [])]
    files = []
    for name in dict.fromkeys(names):
        try:
            spec = registry.get(name)
        except ModelError:
            continue  # check_models named it before any process starts
        if spec.path is not None:  # the file, and its folder for a split file's parts (unless that is private)
            files += [spec.path.expanduser(), spec.path.expanduser().parent]
        if spec.repo is not None:
            files.append(_hub_cache() / f"models--{spec.repo.replace('/', '--')}")
    return files


def _home() -> list[Path]:
    """The home folder, to make private: none where it is `/`, holds a system folder or lies in the system's code
    (a service user's home may be `/`; one of `/opt` or in `/usr/local` may hold a GPU stack's libraries)."""
    home = os.environ.get("HOME") or os.path.expanduser("~")
    if not home or home == "~":
        return []
    path = _real(Path(home))
    holds_system = any(_within(Path(system), [path]) for system in _SYSTEM_FOLDERS)
    return [] if holds_system or _within(path, [Path(system) for system in _SYSTEM_CODE]) else [path]


def _named_by_environment() -> list[Path]:
    """What the process reads by its environment (child_inputs.py): the libraries and certificates named there,
    which may lie in a private path (a llama.cpp built in the home folder, a CA bundle kept there)."""
    named = [os.environ.get(name, "") for name in _READ_BY_PATH]
    named += os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep)
    return [Path(path) for path in named if path and os.path.isabs(path) and os.path.exists(path)]


def _hub_cache() -> Path:
    """huggingface_hub's cache folder, as its constants resolve it (without importing it in the daemon)."""
    if cache := os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE"):
        return Path(cache).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def _code_paths() -> list[Path]:
    """Where the execution process's interpreter reads code: its prefixes, this project, the import path."""
    paths = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, str(_PROJECT_ROOT)]
    paths += [entry for entry in sys.path if entry and os.path.isdir(entry)]
    return list(dict.fromkeys(_real(Path(path)) for path in paths))


def _within(path: Path, folders: list[Path]) -> bool:
    return any(path == folder or folder in path.parents for folder in folders)


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path.expanduser()))
