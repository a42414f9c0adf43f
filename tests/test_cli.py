"""The command line and run directories, end to end on tiny specs."""

import json
import subprocess
import sys

import pytest
import safetensors.torch
import torch

import energydsl
from energydsl.cli import main


@pytest.fixture
def spec_file(tmp_path, drsae_source):
    path = tmp_path / "drsae_small.energy"
    path.write_text(drsae_source)
    return path


def test_run_writes_the_run_directory(spec_file, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", str(spec_file), "--out", str(out), "--set", "lam=0.02"]) == 0
    assert {p.name for p in out.iterdir()} == {
        "spec.energy", "model.safetensors", "model.json", "metrics.jsonl", "summary.json", "checkpoint.safetensors",
        "report.html", "filters.png", "curves.png", "sparsity.png", "firing.png", "angles.png",
    }  # fmt: skip
    tensors = safetensors.torch.load_file(str(out / "model.safetensors"))
    assert set(tensors) == {"D", "E", "S", "b", "C", "state.activity", "state.dead_window"}  # the tracker's too
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["phase"] for m in lines] == ["pretrain", "finetune"]
    for key in ("energy", "term.recon", "term.sparse", "term.class", "l0", "recon_error", "fvu", "test_error",
                "units.dead", "units.dense", "units.unused", "seconds"):  # fmt: skip
        assert key in lines[-1]
    # the resolved spec records the override, and the sidecar the constants
    assert "const lam = 0.02" in (out / "spec.energy").read_text()
    meta = json.loads((out / "model.json").read_text())
    assert meta["constants"]["lam"] == 0.02 and meta["num_classes"] == 10
    assert "epoch 2/2 [finetune]" in capsys.readouterr().out


def test_load_run_reproduces_the_test_error(spec_file, tmp_path):
    out = tmp_path / "run"
    assert main(["run", str(spec_file), "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    model = energydsl.load_run(out)
    data = energydsl.load(spec_file).dataset
    error = (model.predict(data.x_test) != data.y_test).float().mean().item()
    assert error == pytest.approx(summary["test_error"], abs=1e-6)


def test_same_seed_gives_identical_parameters(spec_file, tmp_path):
    for name in ("a", "b"):
        assert main(["run", str(spec_file), "--out", str(tmp_path / name), "--seed", "5", "--quiet"]) == 0
    a = safetensors.torch.load_file(str(tmp_path / "a" / "model.safetensors"))
    b = safetensors.torch.load_file(str(tmp_path / "b" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_data_override_is_written_into_the_resolved_spec(tmp_path, sparse_coding_source):
    spec = tmp_path / "sc.energy"
    spec.write_text(sparse_coding_source)
    out = tmp_path / "run"
    data = "synthetic(dim = 16, atoms = 24, count = 100, seed = 4)"
    assert main(["run", str(spec), "--out", str(out), "--data", data, "--quiet"]) == 0
    assert f"data {data}" in (out / "spec.energy").read_text()
    assert energydsl.load_run(out).params["W"].shape == (16, 24)


def test_check_prints_a_summary(spec_file, capsys):
    assert main(["check", str(spec_file)]) == 0
    out = capsys.readouterr().out
    assert "param     D[784, 32]  25,088 values  (descent, col_norm <= 1)" in out
    assert "phase     pretrain: 1 epochs, terms recon, sparse" in out


def test_check_lists_the_state_a_mechanism_keeps(spec_file, capsys):
    source = spec_file.read_text().replace("recurrent(T) { relu(E @ x + S @ z - b) }", "batchtopk(relu(E @ x - b), 5)")
    spec_file.write_text(source)
    line = source[: source.index("batchtopk")].count("\n") + 1
    assert main(["check", str(spec_file)]) == 0
    out = capsys.readouterr().out
    assert f"  state     batchtopk_threshold (a scalar): the running threshold of the batchtopk(...) of line {line}" in out


def test_check_shows_a_phases_schedule_and_rate_scale(spec_file, capsys):
    source = spec_file.read_text().replace("phase finetune epochs 1", "phase finetune epochs 1 schedule cosine lr_scale 0.1")
    spec_file.write_text(source)
    assert main(["check", str(spec_file)]) == 0
    assert "phase     finetune: 1 epochs, terms recon, sparse, class, schedule cosine, lr_scale 0.1" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "missing.energy"], "missing.energy: spec file not found"),
        (["run", "{spec}", "--set", "lam"], "--set lam: expected NAME=VALUE"),
        (["run", "{spec}", "--set", "lamda=1"], "--set: unknown constant 'lamda' (did you mean 'lam'?)"),
        (["run", "{spec}", "--set", "lam=abc"], "--set lam: expected a number, got 'abc'"),
        (["run", "{spec}", "--data", "mnistt"], "did you mean 'mnist'"),
        (["run", "{spec}", "--data", "mnist(count = -3)"], "count"),
        (["run", "{spec}", "--data", "file(\"nope.npz\")"], "nope.npz"),
        (["run", "{spec}", "--device", "tpu9"], "--device tpu9: expected cpu, cuda or cuda:N"),
        (["run", "{spec}", "--data", "mnist(count = 20)"], "mnist: 20 training samples, fewer than one batch of 64"),
        (["run", "{spec}", "--checkpoint-every", "-5"], "--checkpoint-every -5: expected a number of steps >= 0"),
    ],
)
def test_user_mistakes_exit_2_with_one_clear_line(spec_file, capsys, argv, message):
    argv = [a.replace("{spec}", str(spec_file)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown where CUDA is missing")
def test_cuda_missing_is_a_clear_error(spec_file, capsys):
    assert main(["run", str(spec_file), "--device", "cuda"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_bad_flags_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["run"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "error:" in err


def test_load_run_errors_are_clear(tmp_path):
    with pytest.raises(energydsl.RunError, match="no such run directory"):
        energydsl.load_run(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(energydsl.RunError, match="model.json is missing"):
        energydsl.load_run(tmp_path / "empty")


def test_checkpoint_refuses_tensors_of_another_spec(spec_file, tmp_path):
    out = tmp_path / "run"
    assert main(["run", str(spec_file), "--out", str(out), "--quiet", "--set", "T=2"]) == 0
    tensors = safetensors.torch.load_file(str(out / "model.safetensors"))
    tensors["D"] = torch.zeros(784, 31)
    (out / "model.safetensors").write_bytes(safetensors.torch.save(tensors))
    with pytest.raises(energydsl.RunError, match="parameter D has shape"):
        energydsl.load_run(out)


def test_console_script_entry_point(spec_file):
    result = subprocess.run(
        [sys.executable, "-m", "energydsl.cli", "check", "--quiet", str(spec_file)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith(": ok")


@pytest.mark.slow
def test_quickstart_example_runs(capsys):
    import runpy
    from pathlib import Path

    runpy.run_path(str(Path(__file__).parent.parent / "examples" / "quickstart.py"), run_name="__main__")
    out = capsys.readouterr().out
    recovered = int(out.split("true atoms recovered: ")[1].split("%")[0])
    assert recovered >= 90


@pytest.mark.slow
def test_a_spec_too_large_for_memory_is_a_clear_error(tmp_path, capsys):
    """A consistent spec whose matrices cannot be allocated: one line, exit 2, no traceback."""
    units = (4**10 - 1) // 3  # a 4-ary tree of depth 9; its inhibition matrix is 349525² (122 GB as bool)
    spec = tmp_path / "huge.energy"
    spec.write_text(f"""
model huge
data synthetic(dim = 16, atoms = 24, count = 100, k = 2)
input x[16]
latent z[{units}]
graph T = tree(4, 9)
param W[16, {units}] init zeros
param S[{units}, {units}] init tree_inhibition(T) learn fixed
energy
  recon : 0.5 * sqerr(x, W @ z)
  inh   : 0.1 * inhibition(z, S)
infer z by ista(steps = 10)
""")
    assert main(["check", str(spec)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{spec}:1:1: out of memory") and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_the_parsers_checkpoint_default_is_the_apis(capsys):
    """The parser keeps its own copy (so that --help needs no torch); it must agree with the API's."""
    from energydsl import api, cli

    assert cli.DEFAULT_CHECKPOINT_EVERY == api.DEFAULT_CHECKPOINT_EVERY
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    assert f"default {api.DEFAULT_CHECKPOINT_EVERY})" in " ".join(capsys.readouterr().out.split())


def test_version_flag_prints_the_packages_version(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.strip() == f"energydsl {energydsl.__version__}"
