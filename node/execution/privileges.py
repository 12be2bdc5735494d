"""What Landlock leaves to other mechanisms, applied by sandbox.py's `confine` (Linux only).

- Capabilities: a process running as root keeps none (no raw devices, modules, tracing past the
  ownership checks, or file access past permissions); dropped from every set, the bounding set
  included, so nothing it runs gets them back.
- A seccomp filter (libseccomp, through pyseccomp) refuses what Landlock (up to ABI 7) leaves open:
  - new AF_UNIX sockets: a service of the same user behind a named one (the session bus, systemd --user,
    ssh-agent, docker.sock) runs commands outside the sandbox; and io_uring, which could open one without
    the socket() call. The socket to the daemon is inherited.
  - new processes (fork, vfork, clone without CLONE_THREAD; clone3 answers ENOSYS, so that glibc starts
    threads with clone): a forked process would outlive this one, holding its socket to the daemon and
    answering the next tasks; threads still start (OpenMP, the decode loop, tools).
  - listening sockets: with SO_REUSEPORT, which py-libp2p's listener sets, a socket of the same user on
    the node's port would take a share of its inbound connections. Connecting stays open (tools, remote
    engines); nothing here listens.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import socket

_PR_CAPBSET_DROP = 24
_CAP_LAST = 63  # past the last capability the kernel knows, PR_CAPBSET_DROP answers EINVAL
_CAPABILITY_VERSION_3 = 0x20080522
_CLONE_THREAD = 0x00010000  # linux/sched.h


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def drop_capabilities() -> str:
    """Drop every capability this process holds; a phrase for the sandbox's log line ("" when it held none)."""
    if not _held():
        return ""
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in range(_CAP_LAST + 1):
        libc.prctl(_PR_CAPBSET_DROP, capability, 0, 0, 0)  # EINVAL past the last one; EPERM without CAP_SETPCAP
    header = _CapHeader(_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()  # all zero: no capability effective, permitted or inheritable
    if libc.capset(ctypes.byref(header), data) != 0:
        return f"capabilities kept ({os.strerror(ctypes.get_errno())})"
    return "no capabilities"


def restrict_syscalls() -> str:
    """Refuse new AF_UNIX sockets, io_uring, new processes and listening sockets from now on; a phrase for the
    sandbox's log line."""
    try:
        import pyseccomp as seccomp
    except (ImportError, OSError) as exc:  # no libseccomp on this system
        return f"unix sockets, processes and listeners open (no libseccomp: {exc})"
    refused, absent = errno.EACCES, errno.ENOSYS
    try:
        rules = seccomp.SyscallFilter(seccomp.ALLOW)
        rules.add_rule(seccomp.ERRNO(refused), "socket", seccomp.Arg(0, seccomp.EQ, socket.AF_UNIX))
        rules.add_rule(seccomp.ERRNO(absent), "io_uring_setup")
        rules.add_rule(seccomp.ERRNO(refused), "clone", seccomp.Arg(0, seccomp.MASKED_EQ, _CLONE_THREAD, 0))
        rules.add_rule(seccomp.ERRNO(absent), "clone3")  # its flags are behind a pointer: glibc falls back to clone
        for name in ("fork", "vfork"):  # not on every architecture (aarch64 forks with clone)
            with contextlib.suppress(RuntimeError, ValueError):
                rules.add_rule(seccomp.ERRNO(refused), name)
        rules.add_rule(seccomp.ERRNO(refused), "listen")
        rules.load()
    except (OSError, RuntimeError, ValueError) as exc:
        return f"unix sockets, processes and listeners open (seccomp: {exc})"
    return "no new unix sockets, processes or listeners"


def _held() -> bool:
    """Whether the process holds any capability (CapEff or CapPrm in /proc/self/status)."""
    try:
        status = open("/proc/self/status").read()
    except OSError:
        return os.geteuid() == 0
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return any(int(fields.get(name, "0").strip(), 16) for name in ("CapEff", "CapPrm"))
