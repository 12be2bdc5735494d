"""The execution process confines itself (Linux Landlock) before it imports llama.cpp or runs a workflow.

The daemon and its execution processes run as one user, so without this a hostile workflow that took a
process over (a bug in llama.cpp, a grammar, the engine) could read the node's identity key, rewrite its
journal, read another publisher's results there, trace the daemon or kill it. Confined, the process:

- cannot open anything under the policy's private paths (the data dir, the key file, the config file, the
  home folder), except the folders the policy names readable (the models dir, the interpreter's code and the
  libraries the environment names if they live there);
- can write only under the policy's writable paths (the temporary folders) and the devices it keeps, and
  never the node's code, even there: not its virtual environment, the user's home or /etc
  either, where a write would run as the node the next time it starts; it reads the rest of the file system;
- cannot trace, read the memory or the /proc files (environment, maps) of any process outside its
  confinement (Landlock's tracing scope, and no capabilities: privileges.py), open a new socket (a remote
  engine's process: any but a TCP one), start a process or listen (privileges.py), or (Landlock ABI 6,
  Linux 6.12) signal another process: the daemon and the other models' processes included;
- keeps /dev/null and the like, shared memory and a GPU's devices (/dev is otherwise private: the policy's
  daemon side); a remote engine's process, TCP connections to its engines' ports (and DNS's), from Landlock
  ABI 4 (Linux 6.7) to those ports only: on any host, as Landlock names no address.

Landlock grants access beneath allowed paths, it cannot carve a hole, so "all but the private paths"
is spelled out: every entry of the folders that lead to a private path is allowed on its own, and the
private path gets no rule. Entries made later in those folders themselves are out of reach (nothing the
process needs: its writes go to the writable folders). A confinement covers the thread that applies it and
the threads that thread starts, never threads already running: `python -P -m node.execution` applies it
first, before the imports that start threads (numpy's, llama.cpp's); `-P` keeps the daemon's working
directory, which may be a writable one, off the import path.
"""

from __future__ import annotations

import glob
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from py_landlock import AccessFs, Landlock, LandlockError, get_abi_version

from node.execution.privileges import drop_capabilities, restrict_syscalls
from node.execution.protocol import SandboxPolicy

DNS_PORT = 53  # a resolver falls back to TCP for a long answer: a remote engine named by its host

# What a rule on a file (not a folder) may grant; the rest of AccessFs is about a folder's entries.
_FILE_RIGHTS = AccessFs.EXECUTE | AccessFs.WRITE_FILE | AccessFs.READ_FILE | AccessFs.TRUNCATE | AccessFs.IOCTL_DEV
_ALL_RIGHTS = AccessFs(sum(AccessFs))
_READ_RIGHTS = AccessFs.EXECUTE | AccessFs.READ_FILE | AccessFs.READ_DIR
# A device, or a folder of them (/dev/dri): opened, read, written and driven, never a file made in it.
_DEVICE_RIGHTS = AccessFs.READ_DIR | AccessFs.READ_FILE | AccessFs.WRITE_FILE | AccessFs.IOCTL_DEV
SIGNAL_SCOPE_ABI = 6  # Landlock's signal scope came in ABI 6 (Linux 6.12)
_PROC = Path("/proc")
_ATTEMPTS = 3


@dataclass(frozen=True)
class SandboxOutcome:
    """What the launcher managed: `confined` and what holds, or why not."""

    confined: bool
    detail: str
    required: bool = False


def rules(policy: SandboxPolicy) -> Iterator[tuple[Path, AccessFs]]:
    """Each (path, rights) that Landlock is to allow: nothing under the private paths but their readable
    exceptions (read) and writable ones (any access); elsewhere read access, and any access under the
    writable paths (the scratch folder) except under a readable one (the code: a write there would run
    unconfined at the next start); devices opened and driven, nothing made among them. Symbolic links get
    no rule: what they lead to has its own."""
    targets = _Targets.of(policy)
    if Path("/") in targets.private:
        yield from ((path, _READ_RIGHTS) for path in targets.readable if path.exists())
        yield from ((path, _ALL_RIGHTS) for path in targets.writable if path.is_dir())
        yield from ((path, _rights(_DEVICE_RIGHTS, path.is_dir())) for path in targets.devices)
        return
    yield from _walk(Path("/"), targets)


@dataclass(frozen=True)
class _Targets:
    """The policy's paths, resolved as they are now; `ahead`: all of them, the folders leading to which are walked."""

    private: frozenset[Path]
    readable: frozenset[Path]  # only those under a private, writable or device path: elsewhere read only anyway
    writable: frozenset[Path]
    devices: frozenset[Path]
    ahead: frozenset[Path]

    @classmethod
    def of(cls, policy: SandboxPolicy) -> _Targets:
        private = frozenset(_real(path) for path in policy.private)
        devices = frozenset(_real(path) for pattern in policy.devices for path in glob.glob(pattern))  # as they are now
        writable = frozenset(_real(path) for path in policy.writable)
        readable = frozenset(
            path for path in (_real(path) for path in policy.readable) if _under(path, private | writable | devices)
        )
        return cls(private, readable, writable, devices, private | readable | writable | devices)


def _walk(folder: Path, targets: _Targets) -> Iterator[tuple[Path, AccessFs]]:
    """The rules of `folder`'s entries, entry by entry; a folder leading to a target is walked in turn."""
    try:
        entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
    except OSError:
        return  # unreadable or gone: nothing in it is allowed
    for entry in entries:
        path = Path(entry.path)
        try:
            is_folder = entry.is_dir(follow_symlinks=False)
            if entry.is_symlink():
                continue
        except OSError:
            continue
        if is_folder and path != _PROC and any(path in target.parents for target in targets.ahead):
            yield from _walk(path, targets)
        elif (rights := _entry_rights(path, is_folder, targets)) is not None:
            yield path, rights


def _entry_rights(path: Path, is_folder: bool, targets: _Targets) -> AccessFs | None:
    """What one entry not walked into is allowed (None: nothing, it is private)."""
    if path == _PROC and is_folder:
        # One rule on /proc itself: a rule on an entry in it is lost when the kernel drops and remakes
        # the entry (memory pressure). Other processes' folders stay out of reach by Landlock's and
        # the capabilities' tracing checks (the process has none), not by a rule.
        return _READ_RIGHTS
    if path in targets.writable:
        return _rights(_ALL_RIGHTS, is_folder)
    if path in targets.devices:
        return _rights(_DEVICE_RIGHTS, is_folder)
    if path in targets.readable:
        return _rights(_READ_RIGHTS, is_folder)
    if _under(path, targets.private):
        return None
    rights = _ALL_RIGHTS if _under(path, targets.writable) and not _under(path, targets.readable) else _READ_RIGHTS
    return _rights(rights, is_folder)


def _rights(rights: AccessFs, is_folder: bool) -> AccessFs:
    return rights if is_folder else rights & _FILE_RIGHTS


def confine(policy: SandboxPolicy | None) -> SandboxOutcome:
    """Confine this process by `policy` (None: the sandbox is off). Call it while the process has one
    thread; an outcome that is not `confined` says why."""
    if policy is None:
        return SandboxOutcome(False, "no sandbox policy (sandbox = off, or none the daemon could apply)")
    required = policy.required
    if (threads := thread_count()) > 1:
        return SandboxOutcome(False, f"{threads} threads ran before the sandbox (it covers one)", required)
    capabilities = drop_capabilities()  # before no_new_privs: a root process keeps none
    network = bool(policy.connect_ports)  # internet sockets at all: a remote engine's process
    if network:  # TCP only (privileges.py): the system's resolver asks its DNS servers over TCP too
        os.environ["RES_OPTIONS"] = f"{os.environ.get('RES_OPTIONS', '')} use-vc".strip()
    try:
        abi = get_abi_version()
    except LandlockError as exc:
        reason = f"Landlock is not available here: {exc}"
        return SandboxOutcome(False, _without_files(reason, capabilities, network), required)
    for attempt in range(_ATTEMPTS):
        sandbox = Landlock(strict=False)  # no TCP bind or connect (from ABI 4) but to a remote engine's ports
        if network:
            sandbox.allow_network(*policy.connect_ports, DNS_PORT, bind=False, connect=True)
        for path, rights in rules(policy):
            try:
                sandbox.add_path_rule(path, access=rights)
            except LandlockError:
                continue  # gone since the walk: nothing to allow
        try:
            sandbox.apply()
            break
        except (LandlockError, OSError) as exc:  # a path gone between the walk and apply(): walk again
            if attempt == _ATTEMPTS - 1:
                reason = f"the sandbox could not be applied: {exc}"
                return SandboxOutcome(False, _without_files(reason, capabilities, network), required)
    syscalls = restrict_syscalls(network)
    held = ["files", "signals" if abi >= SIGNAL_SCOPE_ABI else "", "tracing", syscalls, capabilities]
    return SandboxOutcome(True, f"Landlock ABI {abi}: " + ", ".join(part for part in held if part), required)


def _without_files(reason: str, capabilities: str, network: bool) -> str:
    """Why the files are not confined, and what holds all the same (the seccomp filter, no capabilities)."""
    held = [part for part in (restrict_syscalls(network), capabilities) if part]
    return f"{reason}; still: {', '.join(held)}"


def thread_count() -> int:
    """This process's threads, native ones included (threading sees only Python's)."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


def _real(path: str) -> Path:
    return Path(os.path.realpath(os.path.expanduser(path)))


def _under(path: Path, folders: frozenset[Path]) -> bool:
    return path in folders or any(folder in path.parents for folder in folders)
