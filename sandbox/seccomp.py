"""A seccomp filter for bubblewrap sandboxes, close to Docker's default profile.

Docker filters every container's system calls; bwrap filters nothing unless given a compiled
classic-BPF program (`bwrap --seccomp FD`). This builds one in Python, with no library: every
call Docker's default profile refuses to an unprivileged container fails with EPERM — kernel
keyrings, BPF, perf, mounts and namespaces, modules, kexec, swap, reboot, the clock, raw I/O
ports, file handles, userfaultfd, io_uring, NUMA policy — as does `clone` with a namespace flag;
`clone3`, whose flags a filter cannot read, answers ENOSYS, so libc falls back to `clone`. A
call made under another ABI than the host's (i386 on x86_64, x32) is refused whole, since its
numbers differ; a host of another architecture gets no bwrap sandbox rather than one unfiltered.
"""

from __future__ import annotations

import errno
import os
import struct

from .errors import SandboxError

# name: (x86_64 number, aarch64 number); None where the architecture has no such call
DENIED = {
    "acct": (163, 89), "add_key": (248, 217), "bpf": (321, 280), "clock_adjtime": (305, 266),
    "clock_settime": (227, 112), "settimeofday": (164, 170), "create_module": (174, None),
    "delete_module": (176, 106), "finit_module": (313, 273), "init_module": (175, 105),
    "get_kernel_syms": (177, None), "query_module": (178, None), "get_mempolicy": (239, 236),
    "set_mempolicy": (238, 237), "mbind": (237, 235), "move_pages": (279, 239), "ioperm": (173, None),
    "iopl": (172, None), "kcmp": (312, 272), "kexec_file_load": (320, 294), "kexec_load": (246, 104),
    "keyctl": (250, 219), "request_key": (249, 218), "lookup_dcookie": (212, 18), "mount": (165, 40),
    "umount2": (166, 39), "pivot_root": (155, 41), "swapon": (167, 224), "swapoff": (168, 225),
    "reboot": (169, 142), "name_to_handle_at": (303, 264), "open_by_handle_at": (304, 265),
    "nfsservctl": (180, 42), "perf_event_open": (298, 241), "quotactl": (179, 60),
    "quotactl_fd": (443, 443), "setns": (308, 268), "unshare": (272, 97), "uselib": (134, None),
    "userfaultfd": (323, 282), "ustat": (136, None), "sysfs": (139, None), "_sysctl": (156, None),
    "vhangup": (153, 58), "io_uring_setup": (425, 425), "io_uring_enter": (426, 426),
    "io_uring_register": (427, 427), "fsopen": (430, 430), "fsconfig": (431, 431),
    "fsmount": (432, 432), "fspick": (433, 433), "move_mount": (429, 429), "open_tree": (428, 428),
    "mount_setattr": (442, 442), "fanotify_init": (300, 262), "syslog": (103, 116),
}
CLONE, CLONE3, PERSONALITY = (56, 220), (435, 435), (135, 92)
# CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET
NAMESPACE_FLAGS = 0x7E020000
# The personalities Docker allows: Linux, 32-bit Linux, 2.6-style uname, and the query.
PERSONALITIES = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)
ARCHES = {"x86_64": (0, 0xC000003E), "aarch64": (1, 0xC00000B7)}  # column in the tables, AUDIT_ARCH_*
X32_BIT = 0x40000000

# classic BPF over struct seccomp_data {int nr; u32 arch; u64 ip; u64 args[6];}
_LOAD, _JEQ, _JSET, _JGE, _RET = 0x20, 0x15, 0x45, 0x35, 0x06
_NR, _ARCH, _ARG0 = 0, 4, 16  # the low half of args[0] on these little-endian machines
_ALLOW = 0x7FFF0000


def _errno(number: int) -> int:
    return 0x00050000 | number  # SECCOMP_RET_ERRNO


def _op(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def program(machine: str | None = None) -> bytes:
    """The filter for `machine` (this host's by default) as bwrap reads it: sock_filter structs."""
    machine = machine or os.uname().machine
    if machine not in ARCHES:
        raise SandboxError(f"no seccomp filter for {machine}: bubblewrap sandboxes need x86_64 or aarch64 "
                           "here; use sandbox.backend = \"docker\"")
    column, audit_arch = ARCHES[machine]
    deny = _errno(errno.EPERM)
    ops = [_op(_LOAD, _ARCH), _op(_JEQ, audit_arch, 1, 0), _op(_RET, deny), _op(_LOAD, _NR)]
    if machine == "x86_64":  # x32 calls are x86_64's with this bit: numbers the list below misses
        ops += [_op(_JGE, X32_BIT, 0, 1), _op(_RET, deny)]
    for numbers in DENIED.values():
        if numbers[column] is not None:
            ops += [_op(_JEQ, numbers[column], 0, 1), _op(_RET, deny)]
    ops += [_op(_JEQ, CLONE3[column], 0, 1), _op(_RET, _errno(errno.ENOSYS))]
    # clone: refused with a namespace flag; the accumulator then holds a flag word, so allow at once
    ops += [_op(_JEQ, CLONE[column], 0, 4), _op(_LOAD, _ARG0), _op(_JSET, NAMESPACE_FLAGS, 0, 1),
            _op(_RET, deny), _op(_RET, _ALLOW)]
    allowed = len(PERSONALITIES)
    ops += [_op(_JEQ, PERSONALITY[column], 0, allowed + 2), _op(_LOAD, _ARG0)]
    ops += [_op(_JEQ, value, allowed - i, 0) for i, value in enumerate(PERSONALITIES)]
    ops += [_op(_RET, deny), _op(_RET, _ALLOW)]
    return b"".join(ops)
