"""No run is ever lost: checkpoints, resume, Ctrl-C, kill -9 and numerical faults.

A resumed run must end with bitwise the same parameters as a run that was never
interrupted (CPU, same thread count): the checkpoint holds the parameters, the
optimizer state, both random generators and the position in the epoch's order.
"""

from __future__ import annotations

import os
import random
import signal
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
from energydsl.cli import EXIT_INTERRUPTED, main
from energydsl.errors import RunError
from energydsl.runs.checkpoint import CHECKPOINT_FILE, MODEL_FILE
from energydsl.training.loop import Interrupted

SPEC = SPARSE_ADAM


def params(directory: Path) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(str(directory / MODEL_FILE))


def assert_bitwise_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"parameter {name} differs"


def checkpoint_step(directory: Path) -> int:
    with safetensors.safe_open(str(directory / CHECKPOINT_FILE), framework="pt") as handle:
        return int(__import__("json").loads(handle.metadata()["state"])["step"])


@pytest.fixture
def spec_file(tmp_path):
    path = tmp_path / "sparse_adam.energy"
    path.write_text(SPEC)
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run's final parameters (in-process, one thread, like the tests)."""
    out = tmp_path_factory.mktemp("reference")
    energydsl.train(energydsl.load(SPEC), out=out)
    return params(out)


@pytest.mark.parametrize("every", [7, 0])
def test_resume_after_an_interruption_mid_epoch_is_bitwise_identical(tmp_path, reference, every):
    """Ctrl-C lands mid-epoch (the flag is raised from a callback); resuming finishes the run."""
    out = tmp_path / "run"
    model = energydsl.load(SPEC)

    def press_ctrl_c(metrics):
        if metrics["epoch"] == 2:
            os.kill(os.getpid(), signal.SIGINT)  # handled as a flag: the loop saves after the next step

    with pytest.raises(Interrupted) as stop:
        energydsl.train(model, out=out, on_epoch=press_ctrl_c, checkpoint_every=every)
    steps_per_epoch = model.dataset.x_train.shape[0] // 20
    assert stop.value.step == 2 * steps_per_epoch + 1 == checkpoint_step(out)
    history = energydsl.train(energydsl.load(SPEC), out=out, resume=True)
    assert [m["epoch"] for m in history] == [1, 2, 3, 4]
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 4
    assert_bitwise_equal(params(out), reference)


@pytest.mark.slow
def test_kill_9_at_a_random_step_then_resume_is_bitwise_identical(spec_file, tmp_path):
    """A real process killed without warning loses at most one checkpoint interval."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "energydsl.cli", "run", str(spec_file), "--quiet", "--checkpoint-every", "3"]
    clean = tmp_path / "clean"
    subprocess.run([*command, "--out", str(clean)], env=env, check=True, capture_output=True)

    killed = tmp_path / "killed"
    victim = subprocess.Popen([*command, "--out", str(killed)], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)  # fmt: skip
    target = random.Random().randint(6, 80)
    while victim.poll() is None:
        if (killed / CHECKPOINT_FILE).exists() and checkpoint_step(killed) >= target:
            victim.kill()  # SIGKILL: no handler runs
            break
        time.sleep(0.002)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL, "the run ended before it could be killed; make it longer"
    assert checkpoint_step(killed) < 4 * 24

    resumed = subprocess.run([*command, "--out", str(killed), "--resume"], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert_bitwise_equal(params(killed), params(clean))


def test_resume_refuses_a_checkpoint_of_another_spec(spec_file, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", str(spec_file), "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["run", str(spec_file), "--out", str(out), "--resume", "--set", "lam=0.2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{out / CHECKPOINT_FILE}: written for a different spec")
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_resume_without_a_checkpoint_is_a_clear_error(spec_file, tmp_path, capsys):
    assert main(["run", str(spec_file), "--out", str(tmp_path / "empty"), "--resume"]) == 2
    assert f"nothing to resume ({CHECKPOINT_FILE} is missing)" in capsys.readouterr().err


def test_a_corrupt_checkpoint_is_a_clear_error(spec_file, tmp_path):
    out = tmp_path / "run"
    energydsl.train(energydsl.load(spec_file), out=out)
    (out / CHECKPOINT_FILE).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(RunError, match="unreadable checkpoint"):
        energydsl.train(energydsl.load(spec_file), out=out, resume=True)


@pytest.mark.slow
def test_ctrl_c_from_the_command_line_saves_and_exits_130(spec_file, tmp_path):
    """A real SIGINT to a real process: it finishes the step, saves, says how to resume."""
    out = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-m", "energydsl.cli", "run", str(spec_file), "--out", str(out),
                                "--checkpoint-every", "1", "--quiet"], stderr=subprocess.PIPE, text=True)  # fmt: skip
    while process.poll() is None and not (out / CHECKPOINT_FILE).exists():
        time.sleep(0.002)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    if process.returncode == 0:
        pytest.fail("the run finished before Ctrl-C arrived; make it longer")
    assert process.returncode == EXIT_INTERRUPTED, err
    assert "Traceback" not in err
    assert f"saved {out / CHECKPOINT_FILE}" in err and "--resume" in err
    assert energydsl.train(energydsl.load(spec_file), out=out, resume=True)[-1]["epoch"] == 4


DIVERGING = SPEC.replace("adam(lr = 0.01)", "sgd(lr = 1e30)").replace(" constrain col_norm == 1", "")


def test_a_diverging_run_stops_naming_the_step_and_keeps_the_last_checkpoint(tmp_path, capsys):
    spec = tmp_path / "diverging.energy"
    spec.write_text(DIVERGING)
    out = tmp_path / "run"
    assert main(["run", str(spec), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("step ") and "(epoch 1, phase train)" in err, err
    causes = ("parameter W became non-finite", "term 'recon'", "curvature is not finite")
    assert any(cause in err for cause in causes), err
    assert f"the last good checkpoint is in {out}/" in err and "Traceback" not in err
    saved = params(out)["W"]
    assert torch.isfinite(saved).all()
