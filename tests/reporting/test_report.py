"""What a run shows: pictures, report.html, eval, plot, progress, TensorBoard, DrSAE unit analysis."""

from __future__ import annotations

import base64
import io
import json
import math

import numpy as np
import pytest
import torch
from rich.console import Console

import energydsl
from energydsl.cli import main
from energydsl.reporting.analysis import CATEGORICAL_ABOVE, PART_BELOW, unit_angles, unit_kinds
from energydsl.training.progress import ConsoleProgress

PICTURES = {"filters.png", "curves.png", "sparsity.png", "firing.png", "angles.png"}


@pytest.fixture(scope="module")
def drsae_run(tmp_path_factory, drsae_source):
    out = tmp_path_factory.mktemp("drsae") / "run"
    spec = out.parent / "drsae_small.energy"
    spec.write_text(drsae_source)
    assert main(["run", str(spec), "--out", str(out), "--quiet"]) == 0
    return out


def test_report_embeds_every_picture_of_the_run(drsae_run):
    page = (drsae_run / "report.html").read_text()
    for name in PICTURES:
        data = base64.b64encode((drsae_run / name).read_bytes()).decode()
        assert f"data:image/png;base64,{data}" in page, name
    summary = json.loads((drsae_run / "summary.json").read_text())
    assert f"{summary['test_error']:.6g}" in page
    assert "encoder z = recurrent(T)" in page  # the spec itself
    assert "<script" not in page and "http" not in page.replace("http-equiv", "")  # self-contained


def test_plot_rewrites_pictures_and_report(drsae_run, capsys):
    for name in [*PICTURES, "report.html"]:
        (drsae_run / name).unlink()
    assert main(["plot", str(drsae_run)]) == 0
    printed = capsys.readouterr().out.split()
    for name in [*PICTURES, "report.html"]:
        assert (drsae_run / name).is_file() and str(drsae_run / name) in printed


def test_eval_prints_the_saved_runs_metrics_without_retraining(drsae_run, capsys):
    assert main(["eval", str(drsae_run), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    summary = json.loads((drsae_run / "summary.json").read_text())
    for key in ("test_error", "energy", "term.recon", "term.class", "l0", "recon_error", "units.part", "fvu",
                "explained_variance", "units.dead", "units.dense", "units.unused"):  # fmt: skip
        assert metrics[key] == pytest.approx(summary[key], rel=1e-6, abs=1e-9), key
    assert main(["eval", str(drsae_run)]) == 0
    assert "test_error" in capsys.readouterr().out


def test_eval_of_a_missing_run_is_a_clear_error(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "nope")]) == 2
    assert "no such run directory" in capsys.readouterr().err


def test_unit_angles_and_kinds_against_numpy(drsae_run):
    model = energydsl.load_run(drsae_run)
    E = model.params["E"].detach().double().numpy()
    D = model.params["D"].detach().double().numpy()
    C = model.params["C"].detach().double().numpy()
    cosine = (E * D.T).sum(1) / (np.linalg.norm(E, axis=1) * np.linalg.norm(D, axis=0))
    expected = np.arccos(np.clip(cosine, -1, 1))
    assert np.allclose(unit_angles(model).numpy(), expected, atol=1e-9)
    kinds = unit_kinds(model)
    part, categorical = expected < PART_BELOW, expected > CATEGORICAL_ABOVE
    assert kinds["units.part"] == part.sum() and kinds["units.categorical"] == categorical.sum()
    norms = np.linalg.norm(C, axis=0)
    for kind, mask in (("part", part), ("categorical", categorical)):
        expected_norm = norms[mask].mean() if mask.any() else 0.0
        assert kinds[f"units.{kind}_classifier_norm"] == pytest.approx(expected_norm, abs=1e-6)


def test_isotropic_units_split_by_construction():
    """Units built at known angles land in the expected groups."""
    spec = """
model angles
data synthetic(dim = 4, atoms = 3, count = 40, k = 1, seed = 0)
input x[4]
latent z[3]
param D[4, 3] init zeros
param E[3, 4] init zeros
encoder z = relu(E @ x)
energy
  recon : 0.5 * sqerr(x, D @ z)
infer z by encoder
"""
    model = energydsl.load(spec)
    angles = torch.tensor([0.1, 0.6, 1.2])  # part, neither, categorical
    with torch.no_grad():
        model.params["D"].copy_(torch.eye(4)[:, :3])
        rows = torch.stack([torch.cos(a) * torch.eye(4)[i] + torch.sin(a) * torch.eye(4)[3] for i, a in enumerate(angles)])
        model.params["E"].copy_(rows)
    assert torch.allclose(unit_angles(model).float(), angles, atol=1e-6)
    assert unit_kinds(model) == {"units.part": 1, "units.categorical": 1}
    # a unit that never fires is neither kind, whatever its angle
    assert unit_kinds(model, alive=torch.tensor([True, True, False])) == {"units.part": 1, "units.categorical": 0}


def test_progress_bar_on_a_terminal_and_plain_lines_elsewhere():
    metrics = {"phase": "train", "epoch": 1, "energy": 1.5, "term.recon": 1.0, "l0": 3.0, "seconds": 0.5}
    terminal = io.StringIO()
    with ConsoleProgress(2, console=Console(file=terminal, force_terminal=True, width=100)) as progress:
        progress.step(1, 4, 2.0)
        progress.step(2, 4, 1.0)
        progress.epoch(metrics)
    assert "epoch 1/2 [train]  energy 1.5  recon 1  L0 3  (0.5 s)" in terminal.getvalue()
    piped = io.StringIO()
    with ConsoleProgress(2, console=Console(file=piped, force_terminal=False)) as progress:
        progress.step(1, 4, 2.0)
        progress.epoch(metrics)
    assert piped.getvalue() == "epoch 1/2 [train]  energy 1.5  recon 1  L0 3  (0.5 s)\n"
    quiet = io.StringIO()
    with ConsoleProgress(2, quiet=True, console=Console(file=quiet, force_terminal=True)) as progress:
        progress.step(1, 4, 2.0)
        progress.epoch(metrics)
    assert quiet.getvalue() == ""


def test_tensorboard_logs_per_step_energy_and_epoch_metrics(tmp_path, sparse_coding_source):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    spec = tmp_path / "sc.energy"
    spec.write_text(sparse_coding_source)
    out = tmp_path / "run"
    assert main(["run", str(spec), "--out", str(out), "--quiet", "--tensorboard"]) == 0
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    steps = events.Scalars("train/energy")
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(steps) == 2 * math.ceil(320 / 50) and all(math.isfinite(s.value) for s in steps)
    logged = [s.value for s in events.Scalars("test/energy")]
    assert logged == pytest.approx([m["energy"] for m in history], rel=1e-6)
