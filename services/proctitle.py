"""A process's short name (Linux's `comm`): what `ps -o comm`, `top` and /proc/<pid>/comm
show. The ledger's helper processes are started by multiprocessing's spawn, so their command
lines are all alike (`python -c 'from multiprocessing.spawn import spawn_main...'`); their
names tell the follower from the reader's workers."""

from __future__ import annotations

import contextlib
import ctypes
import sys

PR_SET_NAME = 15  # <linux/prctl.h>
NAME_MAX = 15  # the kernel keeps 15 bytes and a NUL


def set_process_name(name: str) -> None:
    """Name this process (Linux only; elsewhere, and on any failure, nothing happens)."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(PR_SET_NAME, name.encode()[:NAME_MAX], 0, 0, 0)
