"""The bubblewrap seccomp filter, as the kernel would run it, on both architectures it is built for.

A sandbox runs it on this machine's architecture only (tests/test_sandbox_hardening.py); here a
classic-BPF evaluator runs the very bytes bwrap is given for x86_64 and aarch64 alike.
"""

from __future__ import annotations

import errno
import struct

import pytest

from offload.sandbox import seccomp
from offload.sandbox.errors import SandboxError

ALLOW, EPERM, ENOSYS = 0x7FFF0000, 0x00050000 | errno.EPERM, 0x00050000 | errno.ENOSYS
# numbers of calls every program makes: read, write, openat, execve
ORDINARY = {"x86_64": (0, 1, 257, 59), "aarch64": (63, 64, 56, 221)}
FOREIGN_ARCH = 0x40000003  # AUDIT_ARCH_I386


def run(program: bytes, nr: int, arch: int, *args: int) -> int:
    """What the filter answers for one call: struct seccomp_data in, SECCOMP_RET_* out."""
    data = struct.pack("<iIQ6Q", nr, arch, 0, *args, *[0] * (6 - len(args)))
    ops = [struct.unpack("=HBBI", program[i:i + 8]) for i in range(0, len(program), 8)]
    pc = acc = 0
    while True:
        code, jt, jf, k = ops[pc]
        if code == 0x20:  # BPF_LD | BPF_W | BPF_ABS
            acc = struct.unpack_from("<I", data, k)[0]
        elif code == 0x06:  # BPF_RET | BPF_K
            return k
        else:
            taken = {0x15: acc == k, 0x45: bool(acc & k), 0x35: acc >= k}[code]  # JEQ, JSET, JGE
            pc += jt if taken else jf
        pc += 1


@pytest.mark.parametrize("machine", sorted(seccomp.ARCHES))
def test_the_filter_refuses_what_it_lists_and_allows_the_rest(machine):
    program = seccomp.program(machine)
    column, arch = seccomp.ARCHES[machine]
    for name, numbers in seccomp.DENIED.items():
        if numbers[column] is not None:
            assert run(program, numbers[column], arch) == EPERM, name
    for nr in ORDINARY[machine]:
        assert run(program, nr, arch) == ALLOW
    assert run(program, seccomp.CLONE3[column], arch) == ENOSYS
    clone = seccomp.CLONE[column]
    assert run(program, clone, arch, 0x01200011) == ALLOW  # what fork() passes
    assert run(program, clone, arch, 0x003D0F00) == ALLOW  # what pthread_create() passes
    for flag in (0x00020000, 0x10000000, 0x20000000, 0x40000000):  # NEWNS, NEWUSER, NEWPID, NEWNET
        assert run(program, clone, arch, 0x01200011 | flag) == EPERM
    personality = seccomp.PERSONALITY[column]
    assert run(program, personality, arch, 0xFFFFFFFF) == ALLOW
    assert run(program, personality, arch, 0x0040000) == EPERM  # ADDR_NO_RANDOMIZE
    assert run(program, ORDINARY[machine][0], FOREIGN_ARCH) == EPERM


def test_x32_calls_are_refused_on_x86_64():
    """x32 numbers are x86_64's with bit 30 set: keyctl there would pass a list of plain numbers."""
    program = seccomp.program("x86_64")
    arch = seccomp.ARCHES["x86_64"][1]
    assert run(program, seccomp.X32_BIT | seccomp.DENIED["keyctl"][0], arch) == EPERM
    assert run(program, seccomp.X32_BIT | ORDINARY["x86_64"][0], arch) == EPERM


def test_an_architecture_without_a_filter_gets_no_sandbox():
    with pytest.raises(SandboxError, match="no seccomp filter for riscv64"):
        seccomp.program("riscv64")
