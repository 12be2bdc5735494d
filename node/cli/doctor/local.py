"""Doctor checks of this machine: the llama.cpp runtime, data dir and key, ports, model files, memory."""

from __future__ import annotations

import errno
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from config.settings import Settings
from node.cli.doctor.report import Check, fail, ok, warn

MIN_FREE_BYTES = 1024**3
SELFCHECK_TIMEOUT_S = 300.0
GIB = 1024**3


def runtime_check(settings: Settings, timeout: float = SELFCHECK_TIMEOUT_S) -> Check:
    """One short generation of the default model in a child (a crash there names the CPU and the fix)."""
    from models.cpu import CpuInfo, extra_buffers_enabled

    cpu = CpuInfo.read()
    amx = (
        f"; AMX: yes (extra buffers {'on' if extra_buffers_enabled(settings.extra_buffers, cpu) else 'off'}"
        f", extra_buffers = {settings.extra_buffers})"
        if cpu.has_amx
        else "; AMX: no"
    )
    command = [sys.executable, "-m", "models.selfcheck", "--extra-buffers", settings.extra_buffers]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return fail("runtime", f"the llama.cpp self check took over {timeout:g} s", "run `python -m models.selfcheck`")
    if done.returncode == 0:
        line = (done.stdout.strip().splitlines() or ["selfcheck ok"])[-1]
        return ok("runtime", line + amx)
    why = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
    return fail("runtime", why, "see the advice above; `python -m models.selfcheck --extra-buffers off` to compare")


def data_dir_check(settings: Settings, min_free: int = MIN_FREE_BYTES) -> Check:
    """The data dir is (or can be) a writable directory with room left on its disk."""
    path = settings.data_dir
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return fail("data dir", f"{existing} is not a directory", "remove it or set data_dir elsewhere")
    if not os.access(existing, os.W_OK | os.X_OK):
        return fail("data dir", f"{existing} is not writable by this user", "chown it to this user or set data_dir")
    free = shutil.disk_usage(existing).free
    if free < min_free:
        return fail(
            "data dir",
            f"{free / GIB:.2f} GiB free on the disk of {existing} (under {min_free / GIB:.1f} GiB)",
            "free disk space or set data_dir on a larger disk",
        )
    state = "exists" if path.exists() else "will be created"
    return ok("data dir", f"{path} {state}, {free / GIB:.1f} GiB free")


def identity_check(settings: Settings) -> Check:
    """The identity key file: readable, a valid key, and private (0600)."""
    from node.wire.identity import Identity

    if settings.secret_key_file is not None:  # read (and found a valid key) when the settings loaded
        path = settings.secret_key_file
        try:
            mode = path.stat().st_mode & 0o777
        except OSError:  # gone since (or a pipe already read): what was read was a key
            mode = 0
        if mode & 0o077:
            return fail(
                "identity key", f"{path} has mode {mode:04o}: other users can read the node's key", f"chmod 600 {path}"
            )
        return ok("identity key", f"from secret_key_file {path}")
    if settings.secret_key:
        return ok("identity key", "from the secret_key setting")
    path = settings.identity_path
    if not path.exists():
        return ok("identity key", f"{path} will be created (0600) at the first start")
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        return fail(
            "identity key", f"{path} has mode {mode:04o}: other users can read the node's key", f"chmod 600 {path}"
        )
    try:
        identity = Identity.from_secret_or_file(None, path)
    except Exception as exc:  # noqa: BLE001 - any unreadable key is this check's finding
        return fail("identity key", f"{path} is not a usable key: {exc}", f"move {path} away to make a new identity")
    return ok("identity key", f"{path} (0600), address {identity.address}")


def port_checks(settings: Settings, running: dict[str, Any] | None) -> list[Check]:
    """The listen ports and the HTTP port: free, or held by the node running from this config."""
    held = " ".join(running.get("listen", [])) if running else ""
    checks = []
    for addr in settings.listen:
        parts = addr.split("/")
        if len(parts) < 5 or parts[3] != "tcp":
            checks.append(warn("listen port", f"{addr}: not a TCP address, not checked"))
            continue
        host, port = parts[2], int(parts[4])
        checks.append(_port_check("listen port", host, port, f"/tcp/{port}" in held and port != 0, "listen"))
    if settings.http_enabled:
        checks.append(
            _port_check("http port", settings.http_host, settings.http_port, running is not None, "http_port")
        )
    return checks


def _port_check(name: str, host: str, port: int, node_holds: bool, setting: str) -> Check:
    if port == 0:
        return ok(name, f"{host}: any free port")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            if node_holds:
                return ok(name, f"{host}:{port} is held by the node running from this config")
            if exc.errno == errno.EADDRINUSE:
                return fail(
                    name,
                    f"{host}:{port} is in use by another process",
                    f"stop it (`ss -ltnp 'sport = :{port}'` names it) or change {setting}",
                )
            return fail(name, f"cannot listen on {host}:{port}: {exc.strerror or exc}", f"change {setting}")
    return ok(name, f"{host}:{port} is free")


def model_file_checks(settings: Settings) -> list[Check]:
    """Every configured local model's file is present and matches its sha256 when one is known."""
    from models.requests import ModelError
    from models.store import sha256_of
    from node.execution.model_setup import model_store

    registry, store = model_store(settings)
    names = list(dict.fromkeys([*settings.models, *([settings.embedding_model] if settings.embedding_model else [])]))
    checks = []
    for name in names:
        try:
            spec = registry.get(name)
        except ModelError as exc:  # an unknown name (UnknownModelError is no RegistryError)
            checks.append(fail(f"model {name}", str(exc), "fix the name in models or add a registry entry"))
            continue
        if spec.is_remote:
            continue
        path = store.locate(spec)
        if path is None:
            checks.append(fail(f"model {name}", "file not found", f"compute-node models pull {name}"))
            continue
        if spec.sha256 is None:
            checks.append(ok(f"model {name}", f"{path} (no sha256 known to check it against)"))
            continue
        actual = sha256_of(path)
        if actual != spec.sha256:
            checks.append(
                fail(
                    f"model {name}",
                    f"{path} is damaged: sha256 {actual[:16]}..., expected {spec.sha256[:16]}...",
                    f"compute-node models rm {name} && compute-node models pull {name}",
                )
            )
            continue
        checks.append(ok(f"model {name}", f"{path}, sha256 matches"))
    return checks


def mem_available_bytes(meminfo: Path = Path("/proc/meminfo")) -> int:
    """MemAvailable of /proc/meminfo, in bytes."""
    for line in meminfo.read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise ValueError(f"{meminfo} has no MemAvailable line")


def memory_check(settings: Settings, mem_available: Callable[[], int], node_running: bool) -> Check:
    """The configured models and their KV caches fit in the memory available now."""
    from models.batching import DEFAULT_PARALLEL_CPU
    from models.requests import ModelError
    from node.execution.memory_limits import footprint_bytes

    parallel = settings.parallel or DEFAULT_PARALLEL_CPU  # the host's memory: a GPU's KV caches are not in it
    need = 0
    for name in settings.models:
        try:
            need += footprint_bytes(settings, name, parallel)
        except (ModelError, OSError, ValueError):
            continue  # the model file checks say what is wrong with it
    available = mem_available()
    detail = f"models with KV caches of n_ctx {settings.n_ctx} x {parallel + 1} need {need / GIB:.2f} GiB"
    if node_running:
        return ok("memory", f"{detail}; a node is running from this config (its models are loaded)")
    if need > available:
        return fail(
            "memory",
            f"{detail}, {available / GIB:.2f} GiB available",
            "host fewer or smaller models, or lower n_ctx or parallel",
        )
    return ok("memory", f"{detail}, {available / GIB:.2f} GiB available")
