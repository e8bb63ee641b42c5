"""The seccomp filter, built with libseccomp (through ctypes) once per zygote.

libseccomp compiles the rules to classic BPF; the zygote exports the program once and each
sandbox installs it with a single seccomp(2) call (0.15 ms, against 1.8 ms for building it
in every child: ../shared/research/process-sandbox-probe.md).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from dataclasses import dataclass

SCMP_ACT_KILL_PROCESS = 0x80000000
SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_FLTATR_ACT_BADARCH = 2
SCMP_FLTATR_CTL_NNP = 3
SCMP_FLTATR_CTL_OPTIMIZE = 8  # libseccomp >= 2.5
SCMP_CMP_EQ = 4
SCMP_CMP_GE = 5
SCMP_CMP_MASKED_EQ = 7


def SCMP_ACT_ERRNO(e: int) -> int:
    return 0x00050000 | (e & 0xFFFF)


class _ArgCmp(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


# Refused with EPERM: everything that changes the sandbox's own isolation, reaches into
# another process, or exposes a large kernel attack surface the runtimes never use.
DENIED_SYSCALLS: tuple[str, ...] = (
    # mounts and roots
    "mount", "umount", "umount2", "pivot_root", "chroot",
    "fsopen", "fsconfig", "fsmount", "fspick", "move_mount", "open_tree", "mount_setattr",
    # namespaces
    "unshare", "setns",
    # other processes
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd",
    "process_madvise",
    # keyrings
    "keyctl", "add_key", "request_key",
    # kernel attack surface
    "bpf", "perf_event_open", "userfaultfd",
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    "fanotify_init", "lookup_dcookie",
    # kernel and machine administration
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "reboot", "swapon", "swapoff", "acct", "quotactl", "quotactl_fd", "syslog",
    "sethostname", "setdomainname", "settimeofday", "clock_settime", "clock_adjtime",
    "adjtimex", "vhangup",
    "iopl", "ioperm", "uselib", "sysfs", "_sysctl", "ustat", "nfsservctl",
    "open_by_handle_at", "name_to_handle_at",
    "migrate_pages", "move_pages", "mbind", "set_mempolicy",
)  # fmt: skip

# The allow-list: what python (with numpy), node and bash were seen calling under strace
# on representative workloads (threads, subprocesses, sockets, sqlite, multiprocessing,
# worker_threads, coreutils), plus the ordinary calls of the same families that a
# program may make. Anything else fails with ENOSYS, the kernel's own "not here", so
# libc fallbacks keep working. To extend it, add names here (or set
# EXECBOX_SECCOMP_EXTRA_SYSCALLS) after checking the call cannot weaken isolation.
ALLOWED_SYSCALLS: tuple[str, ...] = (
    # file I/O
    "read", "write", "readv", "writev", "pread64", "pwrite64", "preadv", "pwritev",
    "preadv2", "pwritev2", "open", "openat", "openat2", "creat", "close", "close_range",
    "lseek", "sendfile", "copy_file_range", "splice", "tee", "vmsplice", "dup", "dup2",
    "dup3", "fcntl", "flock", "fsync", "fdatasync", "sync_file_range", "syncfs", "truncate",
    "ftruncate", "fallocate", "fadvise64", "readahead",
    # metadata and directories
    "stat", "fstat", "lstat", "newfstatat", "statx", "statfs", "fstatfs", "access",
    "faccessat", "faccessat2", "readlink", "readlinkat", "getdents", "getdents64", "getcwd",
    "chdir", "fchdir", "rename", "renameat", "renameat2", "mkdir", "mkdirat", "rmdir", "link",
    "linkat", "unlink", "unlinkat", "symlink", "symlinkat", "chmod", "fchmod", "fchmodat",
    "fchmodat2", "chown", "fchown", "lchown", "fchownat", "umask", "utime", "utimes",
    "utimensat", "futimesat", "mknod", "mknodat", "getxattr", "lgetxattr", "fgetxattr",
    "listxattr", "llistxattr", "flistxattr", "setxattr", "lsetxattr", "fsetxattr",
    "removexattr", "lremovexattr", "fremovexattr", "inotify_init", "inotify_init1",
    "inotify_add_watch", "inotify_rm_watch",
    # memory
    "brk", "mmap", "munmap", "mremap", "mprotect", "madvise", "msync", "mincore", "mlock",
    "mlock2", "munlock", "mlockall", "munlockall", "pkey_alloc", "pkey_free",
    "pkey_mprotect", "memfd_create", "membarrier", "get_mempolicy",
    # processes and threads (clone's namespace flags are refused below)
    "clone", "fork", "vfork", "execve", "execveat", "exit", "exit_group", "wait4", "waitid",
    "kill", "tkill", "tgkill", "getpid", "getppid", "gettid", "getuid", "geteuid", "getgid",
    "getegid", "getresuid", "getresgid", "getgroups", "setuid", "setgid", "setreuid",
    "setregid", "setresuid", "setresgid", "setgroups", "setfsuid", "setfsgid", "capget",
    "capset", "prctl", "arch_prctl", "set_tid_address", "set_robust_list", "get_robust_list",
    "rseq", "getpgid", "setpgid", "getpgrp", "getsid", "setsid", "getpriority",
    "setpriority", "sched_yield", "sched_getaffinity", "sched_setaffinity",
    "sched_getparam", "sched_setparam", "sched_getscheduler", "sched_setscheduler",
    "sched_get_priority_max", "sched_get_priority_min", "sched_rr_get_interval",
    "sched_getattr", "sched_setattr", "getrlimit", "setrlimit", "prlimit64", "getrusage",
    "times", "sysinfo", "uname", "personality", "ioprio_get", "ioprio_set", "pidfd_open",
    "pidfd_send_signal", "getcpu", "restart_syscall",
    # signals
    "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "rt_sigpending", "rt_sigtimedwait",
    "rt_sigqueueinfo", "rt_tgsigqueueinfo", "rt_sigsuspend", "sigaltstack", "signalfd",
    "signalfd4", "pause", "alarm",
    # time
    "nanosleep", "clock_nanosleep", "clock_gettime", "clock_getres", "gettimeofday", "time",
    "getitimer", "setitimer", "timer_create", "timer_settime", "timer_gettime",
    "timer_getoverrun", "timer_delete", "timerfd_create", "timerfd_settime",
    "timerfd_gettime",
    # waiting and events
    "futex", "futex_waitv", "select", "pselect6", "poll", "ppoll", "epoll_create",
    "epoll_create1", "epoll_ctl", "epoll_wait", "epoll_pwait", "epoll_pwait2", "eventfd",
    "eventfd2",
    # pipes, sockets (families are filtered below) and System V IPC inside the ipc ns
    "pipe", "pipe2", "socket", "socketpair", "bind", "listen", "accept", "accept4",
    "connect", "getsockname", "getpeername", "sendto", "recvfrom", "sendmsg", "recvmsg",
    "sendmmsg", "recvmmsg", "shutdown", "setsockopt", "getsockopt", "msgget", "msgsnd",
    "msgrcv", "msgctl", "semget", "semop", "semtimedop", "semctl", "shmget", "shmat",
    "shmdt", "shmctl", "mq_open", "mq_unlink", "mq_timedsend", "mq_timedreceive",
    "mq_notify", "mq_getsetattr",
    # misc
    "ioctl", "getrandom", "landlock_create_ruleset", "landlock_add_rule",
    "landlock_restrict_self",
)  # fmt: skip

NAMESPACE_CLONE_FLAGS = (
    0x00020000,  # CLONE_NEWNS
    0x02000000,  # CLONE_NEWCGROUP
    0x04000000,  # CLONE_NEWUTS
    0x08000000,  # CLONE_NEWIPC
    0x10000000,  # CLONE_NEWUSER
    0x20000000,  # CLONE_NEWPID
    0x40000000,  # CLONE_NEWNET
)
ALLOWED_SOCKET_FAMILIES = (1, 2, 10)  # AF_UNIX, AF_INET, AF_INET6
AF_MAX = 46


@dataclass(frozen=True)
class SeccompPolicy:
    allowed: tuple[str, ...] = ALLOWED_SYSCALLS
    denied: tuple[str, ...] = DENIED_SYSCALLS


class LibSeccompError(RuntimeError):
    pass


def _load_libseccomp() -> ctypes.CDLL:
    name = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError as exc:
        raise LibSeccompError(
            f"libseccomp is not installed ({exc}); apt-get install libseccomp2"
        ) from exc
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.POINTER(_ArgCmp),
    ]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    return lib


def build_filter(policy: SeccompPolicy | None = None) -> bytes:
    """Compile the policy to a BPF program (bytes of struct sock_filter)."""
    policy = policy or SeccompPolicy()
    lib = _load_libseccomp()
    default = SCMP_ACT_ERRNO(errno.ENOSYS)
    ctx = lib.seccomp_init(default)
    if not ctx:
        raise LibSeccompError("seccomp_init failed")
    try:
        # Syscalls of another ABI (i386 via int 0x80, x32) kill the process: only the
        # native x86_64 table is described by this filter.
        _ok(lib.seccomp_attr_set(ctx, SCMP_FLTATR_ACT_BADARCH, SCMP_ACT_KILL_PROCESS), "badarch")
        # The sandbox sets no_new_privs itself, before loading; keep the program pure.
        _ok(lib.seccomp_attr_set(ctx, SCMP_FLTATR_CTL_NNP, 0), "nnp")
        # A binary tree of syscall numbers, not a list: the kernel runs the program over
        # every syscall number when it is loaded, to cache the ones always allowed, with
        # interrupts off; over a list that took ~410 us of every sandbox's setup, over the
        # tree ~190 us (and a syscall it must check at run time is found in ~9 jumps).
        # A libseccomp older than 2.5 refuses the attribute: the list it makes is slower
        # to load, and as strict.
        lib.seccomp_attr_set(ctx, SCMP_FLTATR_CTL_OPTIMIZE, 2)
        eperm = SCMP_ACT_ERRNO(errno.EPERM)
        eafnosupport = SCMP_ACT_ERRNO(errno.EAFNOSUPPORT)

        def rule(action: int, name: str, *cmps: tuple[int, int, int, int]) -> None:
            nr = lib.seccomp_syscall_resolve_name(name.encode())
            # not on this architecture or unknown to this libseccomp; or already the default
            if nr < 0 or action == default:
                return
            arr = (_ArgCmp * max(1, len(cmps)))(*[_ArgCmp(*c) for c in cmps])
            _ok(lib.seccomp_rule_add_array(ctx, action, nr, len(cmps), arr), f"rule {name}")

        filtered = {"clone", "socket"}
        for name in policy.allowed:
            if name not in filtered and name not in policy.denied:
                rule(SCMP_ACT_ALLOW, name)
        # refused outright, with EPERM rather than ENOSYS so programs see "not allowed"
        for name in policy.denied:
            rule(eperm, name)
        ns_mask = 0
        for flag in NAMESPACE_CLONE_FLAGS:
            ns_mask |= flag
            rule(eperm, "clone", (0, SCMP_CMP_MASKED_EQ, flag, flag))
        rule(SCMP_ACT_ALLOW, "clone", (0, SCMP_CMP_MASKED_EQ, ns_mask, 0))
        # clone3 is not allowed: it passes its flags in memory, out of the filter's sight,
        # and its ENOSYS (the default) makes libc fall back to clone(), checked above.
        for fam in range(AF_MAX):
            action = SCMP_ACT_ALLOW if fam in ALLOWED_SOCKET_FAMILIES else eafnosupport
            rule(action, "socket", (0, SCMP_CMP_EQ, fam, 0))
        rule(eafnosupport, "socket", (0, SCMP_CMP_GE, AF_MAX, 0))
        return _export(lib, ctx)
    finally:
        lib.seccomp_release(ctx)


def _ok(rc: int, what: str) -> None:
    if rc < 0:
        raise LibSeccompError(f"libseccomp {what}: {os.strerror(-rc)}")


def _export(lib: ctypes.CDLL, ctx: int) -> bytes:
    r, w = os.pipe()
    try:
        _ok(lib.seccomp_export_bpf(ctx, w), "export")
        os.close(w)
        w = -1
        chunks = []
        while chunk := os.read(r, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
