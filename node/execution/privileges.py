"""What Landlock leaves to other mechanisms, applied by sandbox.py's `confine` (Linux only), and the
descriptors a process inherits, closed before it (`close_inherited_descriptors`).

- Capabilities: a process running as root keeps none (no raw devices, modules, tracing past the
  ownership checks, or file access past permissions); dropped from every set, the bounding set
  included, so nothing it runs gets them back.
- A seccomp filter (libseccomp, through pyseccomp) refuses what Landlock (up to ABI 7) leaves open:
  - new sockets: an internet one (the process of a local model has no use for the network: its tools'
    requests go through the daemon, which checks where they go; from here the process could reach the
    cloud's metadata service, the host's loopback services and its LAN), and for a remote engine's process,
    which needs the network, any but a TCP one (IPv4 or IPv6): an AF_UNIX one reaches a service of the same
    user behind a named one (the session bus, systemd --user, ssh-agent, docker.sock), which runs commands
    outside the sandbox; UDP, vsock and netlink reach what Landlock's port rules do not govern. And io_uring,
    which could open one without the socket() call. The socket to the daemon is inherited; socketpair (the
    event loop's wake-up pipe) stays, stream pairs only (a datagram one sends to any unix socket's path).
  - new processes (fork, vfork, clone without CLONE_THREAD; clone3 answers ENOSYS, so that glibc starts
    threads with clone): a forked process would outlive this one, holding its socket to the daemon and
    answering the next tasks; threads still start (OpenMP, the decode loop, tools).
  - listening sockets: with SO_REUSEPORT, which py-libp2p's listener sets, a socket of the same user on
    the node's port would take a share of its inbound connections. Connecting stays open for a remote
    engine; nothing here listens.
  - new namespaces (unshare, setns; clone is refused already): a user namespace gives the process every
    capability inside it, and with them much more of the kernel to attack.
  - changes of a file's mode, owner, times or extended attributes (Landlock governs none of them): the process
    could make the node's key readable by every user, the data dir or the code unusable, or a folder of its
    scratch unreadable to the daemon that measures it.
  - fallocate with a mode (FALLOC_FL_KEEP_SIZE): it allocates blocks past the file's size, where RLIMIT_FSIZE,
    which bounds each file, never looks. Mode 0 (posix_fallocate) grows the file and stays bounded.
  - inotify, fanotify and dnotify (fcntl F_NOTIFY): a process watching its scratch folder sees the daemon's
    walk begin, and can move what it wrote out of its way. The same for the preallocation ioctls
    (FS_IOC_RESVSP and the like), which do what fallocate's modes do.
  - clones that are not threads of this process: without CLONE_FILES, say, a thread holds descriptors that
    /proc/<pid>/fd never shows.
  An int argument is compared on its low 32 bits, as the kernel reads it.
  What that takes from an honest process, none of which it uses: `ctypes.util.find_library` (it runs
  ldconfig), `platform.architecture`'s linkage (it runs `file`), multiprocessing and its shared memory,
  `shutil.copy`, `copy2` and `copytree` (they copy mode bits and times; `copyfile` and `move` work).
"""

from __future__ import annotations

import ctypes
import errno
import os
import resource
import socket

_PR_CAPBSET_DROP = 24
_CAP_LAST = 63  # past the last capability the kernel knows, PR_CAPBSET_DROP answers EINVAL
_CAPABILITY_VERSION_3 = 0x20080522
_MAX_DESCRIPTORS = 1 << 20  # fs.nr_open's default, past which no process opens one
# CLONE_VM, CLONE_FS, CLONE_FILES, CLONE_SIGHAND, CLONE_THREAD (linux/sched.h): what glibc's threads share.
_THREAD_FLAGS = (0x100, 0x200, 0x400, 0x800, 0x10000)
# Syscalls newer than some libseccomp: by number (the same on every architecture since Linux 5.1's 424).
_NEWER_SYSCALLS = {"clone3": 435, "fchmodat2": 452, "setxattrat": 463, "removexattrat": 466, "file_setattr": 469}
_ATTRIBUTE_CHANGES = (
    *("chmod", "fchmod", "fchmodat", "fchmodat2"),
    *("chown", "fchown", "lchown", "fchownat"),
    *("utime", "utimes", "utimensat", "futimesat"),
    *("setxattr", "lsetxattr", "fsetxattr", "setxattrat", "file_setattr"),
    *("removexattr", "lremovexattr", "fremovexattr", "removexattrat"),
)
# FS_IOC_RESVSP, FS_IOC_RESVSP64, FS_IOC_ZERO_RANGE: blocks allocated past a file's size, as fallocate's modes.
_PREALLOCATIONS = (0x40305828, 0x4030582A, 0x40305839)
_F_NOTIFY = 1026
# Socket families (AF_MAX is 46 on Linux 6.x: the kernel refuses any past it) and types (the low 4 bits of
# socket()'s type argument): a rule compares one value, so each one refused has its own.
_FAMILIES = range(64)
_INTERNET = (socket.AF_INET, socket.AF_INET6)
_SOCKET_TYPES = range(16)
_SOCKET_TYPE_MASK = 0xF


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def close_inherited_descriptors(keep: int) -> None:
    """Close every descriptor but stdin, stdout, stderr and `keep` (the daemon's socket). The daemon's event
    loop (uvloop) spawns this process without closing what the daemon itself inherited without close-on-exec
    (a supervisor's, a shell's), and Landlock checks a file when it is opened, never a descriptor opened before."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]  # never infinite: the kernel caps it at fs.nr_open
    os.closerange(3, keep)
    os.closerange(keep + 1, min(hard, _MAX_DESCRIPTORS))


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


def restrict_syscalls(network: bool = False) -> str:
    """Refuse new sockets (with `network`, a remote engine's: all but TCP ones), io_uring, new processes,
    listening sockets, attribute changes, fallocate with a mode and file watches from now on; a phrase for the
    sandbox's log line."""
    try:
        import pyseccomp as seccomp
    except (ImportError, OSError) as exc:  # no libseccomp on this system
        return f"sockets, processes and listeners open (no libseccomp: {exc})"
    refused, absent = errno.EACCES, errno.ENOSYS

    def int_argument(index: int, value: int) -> object:  # an int argument: the kernel reads its low 32 bits only
        return seccomp.Arg(index, seccomp.MASKED_EQ, 0xFFFFFFFF, value)

    with_a_mode = seccomp.Arg(1, seccomp.NE, 0)

    def type_argument(index: int, value: int) -> object:  # a socket type: its low 4 bits, the rest are flags
        return seccomp.Arg(index, seccomp.MASKED_EQ, _SOCKET_TYPE_MASK, value)

    if network:  # a remote engine's HTTP client: TCP over IPv4 or IPv6, nothing else
        sockets = [
            *(("socket", refused, int_argument(0, family)) for family in _FAMILIES if family not in _INTERNET),
            *(("socket", refused, type_argument(1, kind)) for kind in _SOCKET_TYPES if kind != socket.SOCK_STREAM),
            # TCP's protocol numbers only (0, IPPROTO_TCP): MPTCP (262), SCTP or SMC streams are no TCP to Landlock,
            # whose port rules they pass. Compared whole: a value with high bits set is refused, as no libc sends one.
            ("socket", refused, seccomp.Arg(2, seccomp.GT, socket.IPPROTO_TCP)),
            *(("socket", refused, int_argument(2, number)) for number in range(1, socket.IPPROTO_TCP)),
        ]
    else:
        sockets = [("socket", refused, None)]
    wanted = [
        *sockets,
        # A datagram pair's socket can send to any unix socket by its path (journald's, a service's): stream only.
        *(("socketpair", refused, type_argument(1, kind)) for kind in _SOCKET_TYPES if kind != socket.SOCK_STREAM),
        ("io_uring_setup", absent, None),
        # Not a thread of this process unless every one of glibc's thread flags is set: without CLONE_FILES, say,
        # a thread holds descriptors /proc/<pid>/fd never shows.
        *(("clone", refused, seccomp.Arg(0, seccomp.MASKED_EQ, flag, 0)) for flag in _THREAD_FLAGS),
        ("clone3", absent, None),  # its flags are behind a pointer: glibc then starts threads with clone
        ("fork", refused, None),  # fork and vfork: not on every architecture (aarch64 forks with clone)
        ("vfork", refused, None),
        ("listen", refused, None),
        ("unshare", refused, None),  # new namespaces: a user namespace hands back every capability inside it
        ("setns", refused, None),
        *((name, errno.EPERM, None) for name in _ATTRIBUTE_CHANGES),
        ("fallocate", errno.EOPNOTSUPP, with_a_mode),  # posix_fallocate's fallback writes, within RLIMIT_FSIZE
        *(("ioctl", errno.EOPNOTSUPP, int_argument(1, command)) for command in _PREALLOCATIONS),  # the same, older
        ("inotify_init", refused, None),
        ("inotify_init1", refused, None),
        ("fanotify_init", refused, None),
        ("fcntl", refused, int_argument(1, _F_NOTIFY)),  # dnotify, the oldest watch
    ]
    try:
        rules = seccomp.SyscallFilter(seccomp.ALLOW)
        for name, error, argument in wanted:
            # A name this libseccomp does not know would fail the whole filter: fork and vfork where the
            # architecture has none (nothing to refuse); newer ones by their number, the same on every architecture.
            number = seccomp.resolve_syscall(seccomp.Arch.NATIVE, name)
            if number < 0:
                number = _NEWER_SYSCALLS.get(name, -1)
            if number >= 0:
                rules.add_rule(seccomp.ERRNO(error), number, *([argument] if argument is not None else []))
        rules.load()
    except (OSError, RuntimeError, ValueError) as exc:
        return f"sockets, processes and listeners open (seccomp: {exc})"
    refusal = "no new sockets but TCP" if network else "no new sockets"
    return f"{refusal}, processes or listeners, no attribute changes or file watches"


def _held() -> bool:
    """Whether the process holds any capability (CapEff or CapPrm in /proc/self/status)."""
    try:
        status = open("/proc/self/status").read()
    except OSError:
        return os.geteuid() == 0
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return any(int(fields.get(name, "0").strip(), 16) for name in ("CapEff", "CapPrm"))
