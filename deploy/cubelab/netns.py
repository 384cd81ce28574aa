"""`python -m cubelab.netns ACCOUNT TMP PROGRAM [ARGS...]`: run a program as ACCOUNT in a network of its own,
with TMP (a folder of that account) as its /tmp.

The embedded stack runs SeaweedFS this way (as root). `weed mini` listens on a dozen ports: its master, volume,
filer and admin servers and their gRPC twins talk to each other over loopback, and any local account could
connect to them, or take one while weed restarts and hear what the others send. In a network namespace of its
own, weed's loopback is its own: no other process can reach or take any of those ports, whatever a later
release adds. Its S3 API alone comes out, as a unix socket in a folder only its account may write to, which the
stack's socket holder relays ports.s3 to (cubelab.backends.local.sockets).

weed also makes unix sockets of its own in /tmp (`seaweedfs-filer-PORT.sock`, `seaweedfs-filer-grpc-PORT.sock`,
...), and its servers reach each other through them. In the machine's /tmp, any account can make such a file
first, and weed's own servers would then talk to it. So weed gets a /tmp of its own too (a mount namespace with
TMP bound over /tmp).

Standard library only: it runs on the control plane's Python, as root, and drops to ACCOUNT before the exec.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import pwd
import socket
import struct
import sys

CLONE_NEWNET, CLONE_NEWNS = 0x40000000, 0x00020000
MS_BIND, MS_REC, MS_PRIVATE = 0x1000, 0x4000, 0x40000
SIOCGIFFLAGS, SIOCSIFFLAGS = 0x8913, 0x8914
IFF_UP = 0x1


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def enter_new_network(tmp: str) -> None:
    """New network and mount namespaces for this process: its loopback interface up, tmp bound over /tmp."""
    libc = ctypes.CDLL(None, use_errno=True)
    _check(libc.unshare(CLONE_NEWNET | CLONE_NEWNS), "unshare")
    _check(libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "making mounts private")
    _check(libc.mount(tmp.encode(), b"/tmp", None, MS_BIND, None), f"binding {tmp} over /tmp")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(sock, SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))


def become(account: str) -> None:
    entry = pwd.getpwnam(account)
    os.setgroups([])
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)


def main(argv: list[str] | None = None) -> None:
    args = argv if argv is not None else sys.argv[1:]
    if len(args) < 3:
        raise SystemExit("usage: python -m cubelab.netns ACCOUNT TMP PROGRAM [ARGS...] (as root)")
    account, tmp, program = args[0], args[1], args[2:]
    try:
        enter_new_network(tmp)
        become(account)
    except (OSError, KeyError) as exc:
        raise SystemExit(f"cubelab.netns: {exc}") from None
    os.execv(program[0], program)  # noqa: S606 - the program and its arguments as given, no shell


if __name__ == "__main__":
    main()
