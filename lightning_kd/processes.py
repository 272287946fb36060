"""The processes a piece of code started, found by an environment variable they all inherit: also those
whose parent has ended (reparented to init), which no child list shows. Linux (/proc); elsewhere none are
found. Used to end what a library leaves behind (litdata's workers after a failed conversion) and by the
test suite's check that no process outlives it."""
from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from pathlib import Path
from typing import Iterator

# multiprocessing's helpers of the calling process, started lazily (maybe inside a block): they end with it.
MULTIPROCESSING_HELPERS = ("multiprocessing.resource_tracker", "multiprocessing.forkserver")


def marked_processes(variable: str, value: str) -> dict[int, str]:
    """The living (not zombie) processes, other than this one, started with ``variable=value`` in their
    environment: {pid: command line}."""
    mark, found = f"{variable}={value}".encode(), {}
    proc = Path("/proc")
    for entry in proc.iterdir() if proc.is_dir() else []:
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if mark not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            line = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except (OSError, IndexError):  # it ended meanwhile, or is not ours to read
            continue
        if state != "Z":
            found[int(entry.name)] = line
    return found


def still_running(variable: str, value: str, grace_s: float,
                  ignore: tuple[str, ...] = MULTIPROCESSING_HELPERS) -> dict[int, str]:
    """The marked processes still running after up to ``grace_s`` seconds (a process ending gets that
    long), leaving out command lines that contain one of ``ignore`` (multiprocessing's helpers)."""
    deadline = time.monotonic() + grace_s
    while True:
        left = {pid: line for pid, line in marked_processes(variable, value).items()
                if not any(name in line for name in ignore)}
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def kill(pids, wait_s: float = 5.0) -> None:
    """SIGKILL each of ``pids`` and wait (up to ``wait_s``) until they are gone."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + wait_s
    while any(running(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)


@contextlib.contextmanager
def ending_its_processes(grace_s: float = 5.0) -> Iterator[None]:
    """Every process started inside (and its descendants, multiprocessing's helpers aside) has ended when the
    block is left: those still running ``grace_s`` seconds after it are killed."""
    variable, value = "LIGHTNING_KD_PROCESS_GROUP", uuid.uuid4().hex
    before = os.environ.get(variable)
    os.environ[variable] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(variable, None)
        else:
            os.environ[variable] = before
        kill(still_running(variable, value, grace_s))
