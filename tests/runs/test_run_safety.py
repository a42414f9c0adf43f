"""A run directory is never overwritten by accident, never written by two runs at once,
and a write that fails (a full disk, a read-only directory) keeps the last good checkpoint.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import safetensors
import safetensors.torch
import torch
from conftest import SPARSE_ADAM

import energydsl
import energydsl.atomic
from energydsl.atomic import atomic_write
from energydsl.cli import main
from energydsl.errors import RunError, UserError
from energydsl.runs import guard
from energydsl.runs.checkpoint import CHECKPOINT_FILE, MODEL_FILE, SUMMARY_FILE

SPEC = SPARSE_ADAM  # 4 epochs of 24 steps


@pytest.fixture
def spec_file(tmp_path):
    path = tmp_path / "sparse_adam.energy"
    path.write_text(SPEC)
    return path


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished run, copied by the tests that need one."""
    out = tmp_path_factory.mktemp("finished") / "run"
    energydsl.train(energydsl.load(SPEC), out=out, checkpoint_every=0)
    return out


@pytest.fixture
def old_run(finished, tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    return out


def params(directory: Path) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(str(directory / MODEL_FILE))


def checkpoint_step(directory: Path) -> int:
    with safetensors.safe_open(str(directory / CHECKPOINT_FILE), framework="pt") as handle:
        return int(json.loads(handle.metadata()["state"])["step"])


def one_line(err: str) -> str:
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err.strip()


# ---------------------------------------------------------------- no silent overwrite


def test_a_second_run_into_a_finished_run_is_refused_and_changes_nothing(spec_file, old_run, capsys):
    before = {p.name: p.read_bytes() for p in old_run.iterdir() if p.is_file()}
    assert main(["run", str(spec_file), "--out", str(old_run), "--quiet", "--set", "lam=0.2"]) == 2
    assert one_line(capsys.readouterr().err) == (
        f"{old_run}: holds a finished run; start over with --force (the old run moves to {old_run}.old-1), "
        "or choose another --out")
    assert {p.name: p.read_bytes() for p in old_run.iterdir() if p.is_file()} == before
    assert not Path(f"{old_run}.old-1").exists()


def test_an_unfinished_run_is_refused_naming_resume(spec_file, old_run, capsys):
    (old_run / SUMMARY_FILE).unlink()  # as if killed during the last epoch
    assert main(["run", str(spec_file), "--out", str(old_run), "--quiet"]) == 2
    assert one_line(capsys.readouterr().err) == (
        f"{old_run}: holds an unfinished run; continue it with --resume, or start over with --force "
        f"(the old run moves to {old_run}.old-1)")


def test_an_unfinished_run_without_a_checkpoint_does_not_suggest_resume(spec_file, old_run, capsys):
    (old_run / SUMMARY_FILE).unlink()
    (old_run / CHECKPOINT_FILE).unlink()  # killed before its first checkpoint
    assert main(["run", str(spec_file), "--out", str(old_run), "--quiet"]) == 2
    err = one_line(capsys.readouterr().err)
    assert "no checkpoint to resume; start over with --force" in err and "--resume" not in err


@pytest.mark.slow
def test_force_moves_the_old_run_aside_and_says_where(spec_file, old_run, capsys):
    old = params(old_run)
    assert main(["run", str(spec_file), "--out", str(old_run), "--quiet", "--force", "--set", "lam=0.2"]) == 0
    assert f"{old_run}: moved the old run to {old_run}.old-1\n" in capsys.readouterr().err
    aside = Path(f"{old_run}.old-1")
    assert all(torch.equal(old[name], value) for name, value in params(aside).items())
    assert "const lam = 0.2" in (old_run / "spec.energy").read_text()
    assert (old_run / SUMMARY_FILE).exists()
    energydsl.train(energydsl.load(SPEC, {"lam": 0.3}), out=old_run, force=True)  # the API's force
    assert "const lam = 0.2" in Path(f"{old_run}.old-2", "spec.energy").read_text()
    assert f"moved the old run to {old_run}.old-2" in capsys.readouterr().err


def test_train_refuses_a_run_directory_like_the_cli(old_run):
    with pytest.raises(RunError, match=r"holds a finished run; start over with --force"):
        energydsl.train(energydsl.load(SPEC), out=old_run)


def test_resume_and_force_together_are_refused(spec_file, old_run, capsys):
    assert main(["run", str(spec_file), "--out", str(old_run), "--resume", "--force"]) == 2
    assert "--resume and --force exclude each other" in one_line(capsys.readouterr().err)


def test_an_empty_directory_is_used(tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    (out / ".hidden").write_text("dotfiles do not count")
    energydsl.train(energydsl.load(SPEC), out=out)
    assert (out / SUMMARY_FILE).exists() and (out / ".hidden").exists()


@pytest.mark.parametrize("force", [False, True])
def test_a_directory_of_other_files_is_refused_even_with_force(spec_file, tmp_path, capsys, force):
    """--force moves runs aside, not the user's own files."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["run", str(spec_file), "--out", str(out), "--quiet"] + ["--force"] * force) == 2
    assert one_line(capsys.readouterr().err) == (
        f"{out}: not empty and not a run directory (holds notes.txt); choose another --out "
        "(--force moves only runs aside)")
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["notes.txt"]


def test_the_launcher_refuses_before_starting_workers(spec_file, old_run, capsys, monkeypatch):
    from energydsl.training import distributed

    monkeypatch.setattr(distributed, "launch", lambda *a, **k: pytest.fail("workers started"))
    assert main(["run", str(spec_file), "--out", str(old_run), "--nproc", "2"]) == 2
    assert "holds a finished run" in one_line(capsys.readouterr().err)


def test_the_launcher_creates_nothing(spec_file, tmp_path, monkeypatch):
    """Rank 0 creates and locks the directory; the launcher only checks it (no stale lock, no empty folder)."""
    from energydsl.training import distributed

    monkeypatch.setattr(distributed, "launch", lambda *a, **k: 0)
    assert main(["run", str(spec_file), "--out", str(tmp_path / "new"), "--nproc", "2"]) == 0
    assert not (tmp_path / "new").exists()
    (tmp_path / "empty").mkdir()
    assert main(["run", str(spec_file), "--out", str(tmp_path / "empty"), "--nproc", "2"]) == 0
    assert list((tmp_path / "empty").iterdir()) == []


def test_a_run_refused_for_its_data_writes_nothing(tmp_path):
    """Otherwise the next try would find a run in the way."""
    with pytest.raises(UserError, match="fewer than one batch"):
        energydsl.train(energydsl.load(SPEC.replace("batch 20", "batch 2000")), out=tmp_path / "run")
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- two runs at once


def test_a_run_into_a_directory_another_run_holds_is_refused(spec_file, old_run, finished, capsys):
    before = {p.name: p.read_bytes() for p in old_run.iterdir() if p.is_file() and p.name != ".lock"}
    lock = guard.RunLock(old_run)  # another run's lock (flock: per open file, so it binds this process too)
    try:
        for extra in ([], ["--force"], ["--resume"]):
            assert main(["run", str(spec_file), "--out", str(old_run), "--quiet", *extra]) == 2
            assert one_line(capsys.readouterr().err) == (
                f"{old_run}: another run is writing to this directory (pid {os.getpid()}); "
                "wait for it to end, or choose another --out")
    finally:
        lock.release()
    assert {p.name: p.read_bytes() for p in old_run.iterdir() if p.is_file() and p.name != ".lock"} == before
    assert not Path(f"{old_run}.old-1").exists()
    guard.RunLock(finished).release()  # the run that wrote it, in this process, let go of its lock


def test_the_lock_binds_another_process_and_dies_with_its_holder(tmp_path):
    """A process holding the lock refuses this one; kill -9 it and the OS drops the lock."""
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from energydsl.runs.guard import RunLock; "
                               f"RunLock(__import__('pathlib').Path({str(out)!r})); print('held', flush=True); "
                               "time.sleep(600)"], stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(RunError, match=rf"another run is writing to this directory \(pid {holder.pid}\)"):
            guard.RunLock(out)
    finally:
        holder.kill()  # SIGKILL: no handler, no cleanup
        holder.wait()
    guard.RunLock(out).release()


@pytest.mark.slow
def test_two_real_runs_into_one_directory(tmp_path):
    """The second refuses in one line, --force or not; the first finishes undisturbed."""
    spec_file = tmp_path / "long.energy"
    spec_file.write_text(SPEC.replace("epochs 4", "epochs 40"))  # long enough for a second process to start
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "energydsl.cli", "run", str(spec_file), "--out", str(out), "--quiet"]
    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while first.poll() is None and not (out / "metrics.jsonl").exists():
        time.sleep(0.01)
    second = subprocess.run([*command, "--force"], env=env, capture_output=True, text=True, timeout=120)
    running = first.poll() is None
    _, first_err = first.communicate(timeout=300)
    assert running, "the first run ended before the second started; make it longer"
    assert first.returncode == 0, first_err
    assert second.returncode == 2
    assert one_line(second.stderr) == (f"{out}: another run is writing to this directory (pid {first.pid}); "
                                       "wait for it to end, or choose another --out")  # fmt: skip
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 40
    assert (out / SUMMARY_FILE).exists() and not Path(f"{out}.old-1").exists()
    assert not (out / ".lock").exists()  # released at the end


@pytest.mark.slow
def test_two_workers_share_the_directory_and_force_moves_the_old_run(spec_file, old_run):
    """Only rank 0 takes the lock: the workers do not refuse each other."""
    command = [sys.executable, "-m", "energydsl.cli", "run", str(spec_file), "--out", str(old_run), "--quiet",
               "--nproc", "2", "--force", "--set", "lam=0.2"]  # fmt: skip
    result = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                            timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{old_run}: moved the old run to {old_run}.old-1" in result.stderr
    assert len((old_run / "metrics.jsonl").read_text().splitlines()) == 4
    assert "const lam = 0.2" in (old_run / "spec.energy").read_text()


# ---------------------------------------------------------------- faults at the disk


class _FullDisk:
    """``os`` for energydsl.atomic: writes to the files named fail with ``code``, after ``after`` good ones."""

    def __init__(self, code: int, names: tuple[str, ...], after: int = 0):
        self.code, self.names, self.after = code, names, after

    def __getattr__(self, name):
        return getattr(os, name)

    def fdopen(self, fd, mode):
        target = Path(os.readlink(f"/proc/self/fd/{fd}")).name
        handle = os.fdopen(fd, mode)
        if not any(target.startswith(f".{name}.") for name in self.names):
            return handle
        if self.after:
            self.after -= 1
            return handle
        return _Failing(handle, self.code)


class _Failing:
    """A file on a full (or read-only) disk: half the bytes get written, then the error."""

    def __init__(self, handle, code: int):
        self.handle, self.code = handle, code

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.close()

    def write(self, data: bytes):
        self.handle.write(data[: len(data) // 2])
        self.handle.flush()
        raise OSError(self.code, os.strerror(self.code))


def test_atomic_write_keeps_the_old_file_when_the_disk_is_full(tmp_path, monkeypatch):
    path = tmp_path / "file.bin"
    atomic_write(path, b"old contents")
    monkeypatch.setattr(energydsl.atomic, "os", _FullDisk(errno.ENOSPC, ("file.bin",)))
    with pytest.raises(OSError) as error:
        atomic_write(path, b"new contents, longer")
    assert error.value.errno == errno.ENOSPC and error.value.filename == str(path)
    assert path.read_bytes() == b"old contents"
    assert [p.name for p in tmp_path.iterdir()] == ["file.bin"]  # no temporary file left


def test_a_full_disk_at_a_checkpoint_keeps_the_last_good_one(spec_file, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    # checkpoints at steps 10, 20, 24 (the end of epoch 1), 30, then 40: the fifth write fails
    monkeypatch.setattr(energydsl.atomic, "os", _FullDisk(errno.ENOSPC, (CHECKPOINT_FILE,), after=4))
    assert main(["run", str(spec_file), "--out", str(out), "--quiet", "--checkpoint-every", "10"]) == 2
    path = out / CHECKPOINT_FILE
    assert one_line(capsys.readouterr().err) == (
        f"{path}: could not write (No space left on device); the last good checkpoint (step 30) is kept at "
        f"{path}; once the disk can be written, continue with --resume")
    assert checkpoint_step(out) == 30
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    monkeypatch.undo()
    assert main(["run", str(spec_file), "--out", str(out), "--quiet", "--resume"]) == 0
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 4


@pytest.mark.parametrize("code", [errno.EROFS, errno.ENOSPC], ids=["read-only", "full"])
def test_a_failed_final_file_keeps_the_checkpoint(spec_file, tmp_path, monkeypatch, capsys, code):
    out = tmp_path / "run"
    monkeypatch.setattr(energydsl.atomic, "os", _FullDisk(code, (SUMMARY_FILE,)))
    assert main(["run", str(spec_file), "--out", str(out), "--quiet", "--checkpoint-every", "0"]) == 2
    assert one_line(capsys.readouterr().err) == (
        f"{out / SUMMARY_FILE}: could not write ({os.strerror(code)}); the last good checkpoint (step 96) is kept "
        f"at {out / CHECKPOINT_FILE}; once the disk can be written, continue with --resume")
    assert checkpoint_step(out) == 96 and not (out / SUMMARY_FILE).exists()


def test_a_full_disk_before_any_checkpoint_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(energydsl.atomic, "os", _FullDisk(errno.ENOSPC, ("metrics.jsonl",)))
    with pytest.raises(RunError, match=r"metrics.jsonl: could not write \(No space left on device\); "
                                       "no checkpoint had been written yet$"):  # fmt: skip
        energydsl.train(energydsl.load(SPEC), out=tmp_path / "run")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories; the injected EROFS "
                                               "tests above stand in for this one")  # fmt: skip
def test_a_read_only_run_directory(spec_file, old_run, capsys):
    (old_run / SUMMARY_FILE).unlink()
    old_run.chmod(0o555)
    try:
        assert main(["run", str(spec_file), "--out", str(old_run), "--quiet", "--resume"]) == 2
    finally:
        old_run.chmod(0o755)
    err = one_line(capsys.readouterr().err)
    assert "could not write (Permission denied); the last good checkpoint (step 96) is kept" in err
    assert checkpoint_step(old_run) == 96
