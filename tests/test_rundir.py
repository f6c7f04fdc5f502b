"""One writer per run directory: the lock, stale locks, torn metrics lines, and torchrun workers that outlive
their launcher."""
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
import warnings

import pytest

from conftest import ROOT
from trainer import PRETRAIN, run
from trainer.metrics import read_metrics
from trainer.rundir import RunDirBusy, RunDirLock

TINY = ["--config", "tiny", "--device", "cpu", "--dtype", "float32", "--quiet", "--num_workers", "0"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _train_args(demo, out, *extra):
    return [*TINY, "--data_path", demo["pretrain"], "--out_dir", out, "--batch_size", "4", "--accumulation_steps", "1",
            "--log_interval", "1", "--cache_dir", out.parent / "cache", *extra]


def _start(*args):
    """A command in its own session (so that killing it kills nothing else), output kept in files."""
    return subprocess.Popen([sys.executable, *map(str, args)], cwd=ROOT, env=ENV, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait_for(condition, what, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _lock_record(run_dir):
    try:
        return json.loads((run_dir / "lock").read_text())
    except (FileNotFoundError, ValueError):
        return None


def _alive(pid) -> bool:
    """Running (a zombie, dead but not yet reaped by whoever adopted it, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _workers(launcher):
    """The training processes torchrun started."""
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                training = b"train_pretrain.py" in f.read()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if parent == launcher and training:
            found.append(int(entry))
    return found


def test_lock_names_holder_and_is_released(tmp_path):
    first, second = RunDirLock(tmp_path / "run"), RunDirLock(tmp_path / "run")
    assert first.acquire() is None
    record = json.loads((tmp_path / "run" / "lock").read_text())
    assert (record["pid"], record["host"]) == (os.getpid(), socket.gethostname())
    with pytest.raises(RunDirBusy, match=rf"in use by pid {os.getpid()} on {socket.gethostname()}"):
        second.acquire()  # another open file description: flock refuses it even within one process
    first.release()
    assert not (tmp_path / "run" / "lock").exists()
    assert second.acquire() is None  # a released lock leaves no stale record behind
    second.release()


def test_without_flock_a_live_recorded_pid_still_holds(tmp_path, monkeypatch):
    """Filesystems without flock (some network mounts): the record's pid decides, on the same host."""
    import fcntl

    def no_flock(*_):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    host = socket.gethostname()
    (run_dir / "lock").write_text(json.dumps({"pid": os.getppid(), "host": host}))  # alive: pytest's parent
    with pytest.raises(RunDirBusy, match=f"pid {os.getppid()}"):
        RunDirLock(run_dir).acquire()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run_dir / "lock").write_text(json.dumps({"pid": dead.pid, "host": host}))
    lock = RunDirLock(run_dir)
    assert lock.acquire()["pid"] == dead.pid  # the dead holder's record is taken over
    lock.release()


def test_torn_last_line_is_tolerated_and_other_bad_lines_named(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [r["step"] for r in read_metrics(path)] == [1, 2]
    path.write_text('{"step": 1, "loss": 2.0}\n}\n{"step": 2, "loss": 1.5}\n')
    with pytest.warns(UserWarning, match="metrics.jsonl:2: not a JSON line"):
        assert [r["step"] for r in read_metrics(path)] == [1, 2]


def test_second_run_stops_at_once_and_a_dead_holders_lock_is_taken_over(demo, tmp_path, capsys):
    out = tmp_path / "out"
    run_dir = out / "runs" / "pretrain_64"
    first = _start("train_pretrain.py", *_train_args(demo, out, "--epochs", "1000", "--save_interval", "0"))
    try:
        record = _wait_for(lambda: _lock_record(run_dir), "the first run's lock")
        assert record["pid"] == first.pid and record["host"] == socket.gethostname()
        _wait_for(lambda: (run_dir / "metrics.jsonl").exists() and (run_dir / "metrics.jsonl").read_text(), "a logged step")
        logged = (run_dir / "metrics.jsonl").read_text()

        start = time.time()
        second = subprocess.run([sys.executable, "train_pretrain.py", *map(str, _train_args(demo, out, "--max_steps", "2"))],
                                cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2 and "Traceback" not in second.stderr, second.stderr
        errors = [l for l in second.stderr.splitlines() if l.startswith("error:")]
        assert len(errors) == 1 and f"in use by pid {first.pid} on {socket.gethostname()}" in errors[0], second.stderr
        assert "optimizer:" not in second.stderr  # stopped before building anything
        assert first.poll() is None
        assert (run_dir / "metrics.jsonl").read_text().startswith(logged)  # the first run's log is untouched
        print(f"second run refused in {time.time() - start:.1f} s")
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()

    assert _lock_record(run_dir)["pid"] == first.pid  # kill -9 leaves the record behind, but not the lock
    capsys.readouterr()
    run(PRETRAIN, _train_args(demo, out, "--max_steps", "2", "--save_interval", "0"))
    err = capsys.readouterr().err
    assert f"taking over the lock of pid {first.pid}" in err and "no longer running" in err
    assert not (run_dir / "lock").exists()


def test_torchrun_workers_stop_when_the_launcher_is_killed(demo, tmp_path):
    out = tmp_path / "out"
    run_dir = out / "runs" / "pretrain_64"
    ckpts = run_dir / "checkpoints"
    torchrun = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "train_pretrain.py"]
    job = _start(*torchrun, *_train_args(demo, out, "--epochs", "1000", "--save_interval", "2"))
    workers = []
    try:
        _wait_for(lambda: (ckpts / "latest").exists(), "the first checkpoint", timeout=180)
        workers = _workers(job.pid)
        holder = _lock_record(run_dir)["pid"]
        assert len(workers) == 2 and holder in workers  # rank 0 holds the lock for the whole job

        # a second job on the same directory: every rank stops, rank 0 says why
        second = subprocess.run([sys.executable, *torchrun, *map(str, _train_args(demo, out, "--max_steps", "2"))],
                                cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=180)
        assert second.returncode != 0
        assert f"error: {run_dir} is in use by pid {holder}" in second.stderr, second.stderr[-3000:]
        assert all(_alive(w) for w in workers)

        os.kill(job.pid, signal.SIGKILL)  # the launcher alone, as `kill -9 <torchrun pid>` would
        job.wait()
        killed = time.time()
        _wait_for(lambda: not any(_alive(w) for w in workers), "the workers to stop", timeout=20)
        print(f"workers stopped {time.time() - killed:.1f} s after their launcher")
    finally:
        for pid in [job.pid, *workers]:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        job.wait()

    step = int((ckpts / "latest").read_text().split("_")[1])
    resumed = subprocess.run([sys.executable, *torchrun, *map(str, _train_args(demo, out, "--epochs", "1000", "--resume",
                                                                                "--max_steps", step + 2, "--save_interval", "2"))],
                             cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=180)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "taking over the lock" in resumed.stderr and f"step {step}" in resumed.stderr
    steps = [r["step"] for r in read_metrics(run_dir / "metrics.jsonl")]
    assert steps == list(range(1, step + 3))  # no step logged twice, none missing
