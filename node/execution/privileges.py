"""What Landlock leaves to other mechanisms, applied by sandbox.py's `confine` (Linux only).

- Capabilities: a process running as root keeps none (no raw devices, modules, tracing past the
  ownership checks, or file access past permissions); dropped from every set, the bounding set
  included, so nothing it runs gets them back.
- Unix sockets: Landlock (up to ABI 7) does not govern connecting to a named one, and a service of the
  same user behind one (the session bus, systemd --user, ssh-agent, docker.sock) runs commands outside
  the sandbox. A seccomp filter (libseccomp, through pyseccomp) refuses new AF_UNIX sockets, and
  io_uring, which could open one without the socket() call; the socket to the daemon is inherited.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket

_PR_CAPBSET_DROP = 24
_CAP_LAST = 63  # past the last capability the kernel knows, PR_CAPBSET_DROP answers EINVAL
_CAPABILITY_VERSION_3 = 0x20080522


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


def deny_unix_sockets() -> str:
    """Refuse new AF_UNIX sockets and io_uring from now on; a phrase for the sandbox's log line."""
    try:
        import pyseccomp as seccomp
    except (ImportError, OSError) as exc:  # no libseccomp on this system
        return f"unix sockets open (no libseccomp: {exc})"
    try:
        rules = seccomp.SyscallFilter(seccomp.ALLOW)
        rules.add_rule(seccomp.ERRNO(errno.EACCES), "socket", seccomp.Arg(0, seccomp.EQ, socket.AF_UNIX))
        rules.add_rule(seccomp.ERRNO(errno.ENOSYS), "io_uring_setup")
        rules.load()
    except OSError as exc:
        return f"unix sockets open (seccomp: {exc})"
    return "no new unix sockets"


def _held() -> bool:
    """Whether the process holds any capability (CapEff or CapPrm in /proc/self/status)."""
    try:
        status = open("/proc/self/status").read()
    except OSError:
        return os.geteuid() == 0
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return any(int(fields.get(name, "0").strip(), 16) for name in ("CapEff", "CapPrm"))
