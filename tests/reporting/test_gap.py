"""The amortisation gap (``energydsl gap``): the encoder's codes against the optimum of its own energy.

The optimal codes are checked against scikit-learn's lasso on the same samples and dictionary,
the figures against what they mean (an encoder at the optimum has no gap; refining closes part of
it), and the command as a user meets it: JSON, the report's section, a rerun, a spec it cannot measure.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.linear_model import Lasso

import energydsl
from energydsl.api import run_dataset
from energydsl.building import compile_program, read_spec
from energydsl.cli import main
from energydsl.reporting.amortisation import amortisation_gap, amortised_terms, l0_mechanism
from tests.conftest import DRSAE_SMALL


@pytest.fixture(scope="module")
def drsae_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "drsae"
    model = energydsl.load(DRSAE_SMALL)
    energydsl.train(model, out=out)
    return out


def test_the_optimal_energies_of_a_drsae_run_agree_with_scikit_learn(drsae_run):
    model = energydsl.load_run(drsae_run)
    dataset = run_dataset(drsae_run, model)
    figures, energies = amortisation_gap(model, dataset, samples=64)
    x = model.preprocess(dataset.x_test[:64]).double().numpy()
    D = model.params["D"].detach().double().numpy()
    lam = 0.01
    # scikit-learn's lasso minimises ‖x − Dz‖² / (2 · dim) + alpha ‖z‖₁: alpha = lam / dim
    lasso = Lasso(alpha=lam / x.shape[1], positive=True, fit_intercept=False, tol=1e-14, max_iter=1_000_000)
    codes = np.stack([lasso.fit(D, sample).coef_ for sample in x])
    reference = 0.5 * ((x - codes @ D.T) ** 2).sum(1) + lam * np.abs(codes).sum(1)
    np.testing.assert_allclose(energies["optimal"], reference, rtol=1e-6)
    assert figures["amortisation.certified"] is True
    assert figures["amortisation.optimal.certified_gap"] <= 1e-6
    assert (energies["encoder"] >= energies["optimal"] - 1e-9).all()
    assert (energies["refined"] <= energies["encoder"] + 1e-9).all()  # FISTA steps from the encoder's codes
    assert 0 < figures["amortisation.refined.closed"] <= 1


def test_gap_writes_json_a_picture_and_a_report_section_and_reruns(drsae_run, capsys):
    for _ in range(2):  # a rerun replaces the figures, and the report keeps one section
        assert main(["gap", str(drsae_run), "--json", "--samples", "32"]) == 0
        printed = json.loads(capsys.readouterr().out)
    assert printed["amortisation.samples"] == 32
    assert json.loads((drsae_run / "amortisation.json").read_text()) == printed
    assert (drsae_run / "amortisation.png").stat().st_size > 0
    report = (drsae_run / "report.html").read_text()
    assert report.count("<h2>Amortisation gap</h2>") == 1 and "amortisation.png" in report


def test_gap_on_a_spec_without_an_encoder_is_one_line(tmp_path, sparse_coding_source, capsys):
    model = energydsl.load(sparse_coding_source)
    energydsl.train(model, out=tmp_path / "run")
    assert main(["gap", str(tmp_path / "run")]) == 2
    error = capsys.readouterr().err.strip()
    assert "has no encoder" in error and len(error.splitlines()) == 1


def test_gap_refuses_a_bad_sample_count(drsae_run, capsys):
    with pytest.raises(SystemExit) as exit:
        main(["gap", str(drsae_run), "--samples", "0"])
    assert exit.value.code == 2 and "whole number >= 1" in capsys.readouterr().err


@pytest.mark.parametrize(("spec", "terms", "mechanism"), [
    ("drsae", ("recon", "sparse"), None),  # the classifier needs labels
    ("psd", ("recon", "sparse"), None),  # the prediction term trains the encoder
    ("lista", ("recon", "sparse"), None),
    ("sae_relu", ("recon", "sparse"), None),
    ("sae_topk", ("recon",), "topk"),  # the auxiliary loss reads the encoder's pre-activations
    ("sae_batchtopk", ("recon",), "batchtopk"),
    ("sae_jumprelu", ("recon",), "jumprelu"),  # its L0 penalty reads the pre-activations too
    ("sae_gated", ("recon",), "step"),
    ("sae_matryoshka", ("recon",), "batchtopk"),
])
def test_the_energy_an_encoder_approximates(spec, terms, mechanism):
    program = compile_program(read_spec(f"specs/{spec}.energy"))
    assert amortised_terms(program) == terms
    assert l0_mechanism(program) == mechanism


def test_an_encoder_at_the_optimum_has_no_gap():
    """LISTA with as many steps as FISTA needs: its codes are the optimum, up to the solver's gap."""
    model = energydsl.load("specs/lista.energy", set={"T": 3000}, data="patches(size = 12, count = 300, whiten = zca)")
    figures, energies = amortisation_gap(model, model.dataset, samples=32)
    assert figures["amortisation.encoder.gap.mean"] < 1e-4
    assert figures["amortisation.support.recall"] > 0.95
    torch.testing.assert_close(torch.from_numpy(energies["encoder"]), torch.from_numpy(energies["optimal"]),
                               rtol=1e-4, atol=0)  # fmt: skip
