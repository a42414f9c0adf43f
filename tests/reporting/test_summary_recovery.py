"""Feature recovery in a run's summary: a decoder set to the true dictionary recovers it."""

from __future__ import annotations

import json

import pytest
import torch

import energydsl
from energydsl import api
from energydsl.data import load_data
from energydsl.ops.recovery import best_matches, detection, mcc
from energydsl.reporting import recovery
from energydsl.reporting.recovery import recovery_metrics

SPEC = """
model recover
data features(dim = 16, features = 32, count = 1500, firing = constant, max_prob = 0.04, test = 0.2)
const units = 32
input x
latent z[units] >= 0
param W[16, units] init normal(0.25) constrain col_norm <= 1  learn fixed
param c[16] init zeros  learn fixed
energy
  recon  : 0.5 * sqerr(x, W @ z)
  sparse : 0.02 * l1(z)
infer z by fista(steps = 200, tol = 1e-5)
train
  batch 250
  epochs 1
"""


@pytest.fixture(scope="module")
def truth():
    return load_data("features", kwargs={"dim": 16, "features": 32, "count": 1500, "firing": "constant",
                                         "max_prob": 0.04, "test": 0.2})  # fmt: skip


def test_a_decoder_set_to_the_true_dictionary_recovers_it_in_the_summary(tmp_path, truth, monkeypatch):
    monkeypatch.setattr(api, "write_pictures", lambda *args: [])  # the slow part, not asked here
    model = energydsl.load(SPEC, data=truth)
    dictionary = truth.extras["dictionary"]
    model.params["W"] = dictionary[:, torch.randperm(32, generator=torch.Generator().manual_seed(0))]
    energydsl.train(model, out=tmp_path / "run")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["recovery.mcc"] == pytest.approx(1.0, abs=1e-5)
    assert summary["recovery.mmcs"] == pytest.approx(1.0, abs=1e-5)
    assert summary["recovery.mmcs_units"] == pytest.approx(1.0, abs=1e-5)
    # with the true directions the lasso finds the firing features (small spurious codes aside)
    assert summary["recovery.recall"] > 0.95 and summary["recovery.f1"] > 0.8
    assert summary["recovery.feature_f1"] >= summary["recovery.f1"] - 1e-6

    # the summary's figures are the module's functions on all held-out codes
    z = model.infer(truth.x_test)
    found = detection(z, truth.extras["codes_test"], best_matches(model.params["W"], dictionary).unit_match)
    assert summary["recovery.f1"] == pytest.approx(found.f1.mean().item(), abs=1e-6)
    assert summary["recovery.feature_f1"] == pytest.approx(found.feature_f1.mean().item(), abs=1e-6)


def test_a_random_decoder_scores_low_and_batches_do_not_change_the_figures(truth):
    model = energydsl.load(SPEC, data=truth)
    whole = recovery_metrics(model, truth, batch=10_000)
    assert whole["recovery.mcc"] == pytest.approx(mcc(model.params["W"], truth.extras["dictionary"]), abs=1e-6)
    assert whole["recovery.mcc"] < 0.6 and whole["recovery.f1"] < 0.5
    assert recovery_metrics(model, truth, batch=64) == whole


def test_no_truth_or_no_decoder_means_no_recovery_metrics(truth, monkeypatch):
    patches = energydsl.load(SPEC.replace("data features(", "data patches(size = 4, count = 300) #"))
    assert recovery_metrics(patches, patches.dataset) == {}
    no_decoder = energydsl.load(SPEC.replace("W @ z", "W @ relu(z)"), data=truth)  # not W @ z: no role
    assert no_decoder.program.roles.decoder is None and recovery_metrics(no_decoder, truth) == {}
    monkeypatch.setattr(recovery, "MCC_MAX_ENTRIES", 32 * 32 - 1)  # too large a matching: left out
    model = energydsl.load(SPEC, data=truth)
    notes = []
    left_out = recovery_metrics(model, truth, notes=notes)
    assert "recovery.mcc" not in left_out and "recovery.mmcs" in left_out
    assert notes == ["recovery.mcc left out: matching 32 units with 32 features needs more than 1,023 cosines"]
