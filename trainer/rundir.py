"""One writer per run directory, and no training without its launcher.

A run holds `out/runs/<name>/lock` while it trains: an exclusive `flock` on the file, which the kernel drops the
moment the holding process ends however it ends (kill -9 included), so a lock can never outlive its process.
The file's content (pid, host, command) only names the holder: in the message a second run stops with, and in
the note a later run prints when it finds the record of a process that died without cleaning up. Where the
filesystem has no flock (some network mounts), the record's pid is checked instead (same host only).

Under torchrun all ranks of one job are one run: rank 0 takes the lock and every rank learns the outcome.
"""
import errno
import fcntl
import json
import os
import socket
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from . import distributed


class RunDirBusy(Exception):
    """Another live process is training into this run directory."""


def _holder(record: dict | None) -> str:
    if not record:
        return "another process (no pid recorded)"
    return f"pid {record.get('pid')} on {record.get('host')} (started {record.get('started')}: {record.get('command')})"


def _alive_here(record: dict | None) -> bool:
    """The recorded process runs on this host (a pid on another host cannot be checked from here)."""
    if not record or record.get("host") != socket.gethostname() or record.get("pid") == os.getpid():
        return False
    try:
        os.kill(int(record["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, KeyError, ValueError, TypeError):
        return True  # someone else's process, or an unreadable record: assume it is alive
    return True


def _same_file(path: Path, file) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(file.fileno()).st_ino
    except FileNotFoundError:
        return False


class RunDirLock:
    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "lock"
        self.file = None

    def _read(self) -> dict | None:
        self.file.seek(0)
        try:
            return json.loads(self.file.read())
        except ValueError:
            return None

    def acquire(self) -> dict | None:
        """Take the lock, or raise RunDirBusy naming the holder. Returns the record left by a holder that died
        (its stale lock is taken over), None when the directory was free."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        while True:
            self.file = open(self.path, "a+", encoding="utf-8")
            try:
                fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                previous = self._read()
                held = e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)
                if held or _alive_here(previous):  # the second test: a filesystem without flock
                    self._close()
                    raise RunDirBusy(self._busy_message(previous)) from None
                break
            if _same_file(self.path, self.file):
                previous = self._read()
                break
            self._close()  # the holder removed the file between our open and our lock: lock the new one
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                  "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])}
        self.file.seek(0)
        self.file.truncate()
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        return previous

    def _busy_message(self, holder) -> str:
        return (f"{self.run_dir} is in use by {_holder(holder)}; wait for that run to end or stop it, "
                f"or write this run elsewhere (--save_name / --out_dir)")

    def _close(self):
        if self.file is not None:
            self.file.close()
            self.file = None

    def release(self):
        if self.file is None:
            return
        self.path.unlink(missing_ok=True)  # while still holding the lock, so no newcomer's record is removed
        self._close()


@contextmanager
def hold_run_dir(run_dir: Path, info):
    """Hold the run directory's lock for the block (rank 0 decides for the whole job). Raises RunDirBusy on
    every rank when another process holds it."""
    lock, error = RunDirLock(run_dir), None
    if info.is_main:
        try:
            stale = lock.acquire()
            if stale:
                print(f"note: taking over the lock of {_holder(stale)}, which is no longer running", file=sys.stderr)
        except RunDirBusy as e:
            error = e
    busy = distributed.all_reduce_sum(torch.tensor(float(error is not None), device=info.device), info)
    if busy.item():
        raise error or RunDirBusy(f"{run_dir} is in use by another run")
    try:
        yield lock
    finally:
        lock.release()


def watch_launcher(poll_s: float = 1.0):
    """A torchrun worker stops when its launcher is gone. torchrun starts each worker in a session of its own, so
    a `kill -9` of the launcher alone would leave the workers training (and writing checkpoints) unsupervised; a
    worker whose parent changed exits at once, as if it had been killed too (its last checkpoint stays intact)."""
    if "TORCHELASTIC_RUN_ID" not in os.environ:
        return None
    parent = os.getppid()

    def watch():
        while True:
            time.sleep(poll_s)
            if os.getppid() != parent:
                print(f"error: the torchrun launcher (pid {parent}) is gone; rank {os.environ.get('RANK', '?')} "
                      f"stops (rerun with --resume to continue from the last checkpoint)", file=sys.stderr, flush=True)
                os._exit(1)

    thread = threading.Thread(target=watch, name="launcher-watch", daemon=True)
    thread.start()
    return thread
