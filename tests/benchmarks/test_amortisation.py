"""benchmarks/amortisation.py: its optimum is the optimum, and a smoke run of the whole table."""

from __future__ import annotations

import importlib.util
import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import energydsl

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "amortisation.py"


@pytest.fixture(scope="module")
def amortisation():
    spec = importlib.util.spec_from_file_location("amortisation_benchmark", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def test_lam_gives_the_minimisers_of_the_papers_per_entry_means(amortisation):
    # (1/M)|x - Dz|^2 + (0.01/N)|z|_1 = (2/M) (1/2 |x - Dz|^2 + lam |z|_1) with lam = 0.01 M / (2N)
    setting = amortisation.Setting()
    assert setting.lam == pytest.approx(0.0025)
    g = torch.Generator().manual_seed(0)
    D, x, z = torch.randn(8, 16, generator=g), torch.randn(8, generator=g), torch.rand(16, generator=g)
    theirs = ((x - D @ z) ** 2).mean() + setting.paper_l1 * z.abs().mean()
    ours = 0.5 * ((x - D @ z) ** 2).sum() + setting.lam * z.abs().sum()
    assert theirs.item() == pytest.approx((2 / setting.dim * ours).item(), rel=1e-6)


def test_the_exact_codes_meet_the_optimality_conditions_of_the_nonneg_lasso(amortisation):
    setting = replace(amortisation.Setting(), samples=128)
    dataset = amortisation.data(setting, seed=1)
    exact = energydsl.load(setting.spec(amortisation.OPTIMUM, seed=1), data=dataset)
    with torch.no_grad():
        exact.params["D"].copy_(dataset.extras["dictionary"])
    D, x = dataset.extras["dictionary"].double(), dataset.x_test.double()
    z = exact.infer(dataset.x_test).double()
    # min 1/2 |x - Dz|^2 + lam |z|_1 over z >= 0: with g = D'(Dz - x), g_i = -lam where z_i > 0, g_i >= -lam where z_i = 0
    grad = (z @ D.T - x) @ D
    assert (z >= 0).all() and 2 < (z != 0).sum(dim=1).double().mean() < 6
    assert torch.allclose(grad[z > 0], torch.full_like(grad[z > 0], -setting.lam), atol=1e-5)
    assert (grad[z == 0] >= -setting.lam - 1e-5).all()


@pytest.mark.slow
def test_training_leaves_the_true_dictionary_in_place_and_a_variant_keeps_the_trained_encoder(amortisation):
    setting = replace(amortisation.Setting(), samples=128, steps=20)
    dataset = amortisation.data(setting, seed=1)
    trained = amortisation.trained_encoder(setting, dataset, seed=1)
    assert torch.equal(trained.params["D"].detach(), dataset.extras["dictionary"])
    variant = amortisation.with_inference(trained, setting, "encoder then fista(steps = 5, tol = 0)", seed=1)
    assert torch.equal(variant.params["E"], trained.params["E"])
    assert not torch.equal(variant.infer(dataset.x_test), trained.infer(dataset.x_test))


@pytest.mark.slow
def test_a_quick_run_gives_every_row_and_no_method_beats_the_optimum(amortisation, tmp_path):
    out = tmp_path / "amortisation.json"
    report = amortisation.main(["--quick", "--out", str(out)])
    assert json.loads(out.read_text())["summary"].keys() == amortisation.METHODS.keys()
    rows = report["summary"]
    exact = rows["sparse inference (exact, lars)"]
    assert exact["gap_mean"][0] == 0 and exact["f1_optimum"][0] == 1
    for name, row in rows.items():
        assert row["gap_mean"][0] >= -1e-6, name  # the optimum's energy is the least
    encoder, refined = rows["SAE encoder"], rows["encoder + 20 FISTA steps"]
    assert encoder["gap_mean"][0] > rows["encoder + 5 FISTA steps"]["gap_mean"][0] > refined["gap_mean"][0]
    assert exact["mcc"][0] > 0.9 > encoder["mcc"][0]
    assert 2.5 < exact["l0"][0] < 6  # the truth has 3 active
