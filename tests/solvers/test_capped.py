"""Inference that stops at its step cap before its tolerance says so.

``model.infer`` warns once per call (:class:`energydsl.InferenceCapWarning`) with the
method, the share of the batch capped and the worst relative step; ``tol = 0`` (exactly
``steps`` iterations) and a cap that is never reached stay silent; training records the
share per epoch as ``infer.capped`` in ``metrics.jsonl`` and does not warn.
"""

from __future__ import annotations

import json
import re
import warnings

import pytest
import torch

import energydsl
from energydsl.solvers.fista import fista, fista_report
from energydsl.training.progress import format_epoch

SPEC = """
model lasso
data synthetic(dim = 16, atoms = 40, k = 4, count = 200, noise = 0.3)
input x[16]
latent z[40]
param W[16, 40] init samples(x) constrain col_norm == 1
energy
  recon  : 0.5 * sqerr(x, W @ z)
  sparse : 0.05 * l1(z)
infer z by {method}
train optimizer sgd(lr = 0.05) batch 20 epochs 2
"""

POOLS_SPEC = """
model topographic_small
data synthetic(dim = 24, atoms = 16, count = 64)
input x[24]
latent z[16]
graph M = torus(4, 4)
pools P = windows(M, size = 3, stride = 1, sigma = 1)
param W[24, 16] init samples(x) constrain col_norm == 1
energy
  recon : 0.5 * sqerr(x, W @ z)
  group : 0.35 * group_l2(z, P)
infer z by fista(steps = {steps}, tol = 1e-4)
"""

CAPPED = re.compile(r"^(\S+(?: \(by ADMM\))?) stopped at its (\d+)-step cap on (\d+) of (\d+) samples \(([\d.]+)%\) "
                    r"before reaching tol (\S+) \(worst relative (step|residual) (\S+)\); "
                    r"raise 'steps' in the spec's infer line or pass steps= to infer$")  # fmt: skip


def capped_warning(record) -> re.Match:
    """The one warning of ``record``, parsed."""
    caps = [w for w in record if issubclass(w.category, energydsl.InferenceCapWarning)]
    assert len(caps) == 1, [str(w.message) for w in caps]
    match = CAPPED.match(str(caps[0].message))
    assert match, str(caps[0].message)
    return match


def silent(call):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return call()


def small(method: str = "fista(steps = 1000, tol = 1e-6)"):
    model = energydsl.load(SPEC.format(method=method))
    return model, model.dataset.x_test  # 40 samples


def test_the_sparse_coding_spec_at_its_100_step_cap_warns_once_with_method_share_and_hint():
    model = energydsl.load("specs/sparse_coding.energy")
    x = model.dataset.x_test[:256]
    with pytest.warns(energydsl.InferenceCapWarning) as record:
        z = model.infer(x, tol=1e-5)
    match = capped_warning(record)
    method, steps, count, total, percent, tol, measure, worst = match.groups()
    assert (method, steps, total, tol, measure) == ("fista", "100", "256", "1e-05", "step")
    assert 0 < int(count) < 256 and float(percent) == pytest.approx(100 * int(count) / 256, abs=0.05)
    assert float(worst) > 1e-5
    assert record[0].filename == __file__  # the warning points at the caller's line
    # the codes are those of a capped run: more steps move them
    assert not torch.equal(z, silent(lambda: model.infer(x, steps=2000, tol=1e-5)))


def test_the_capped_share_is_the_samples_still_moving_at_the_cap():
    model, x = small()
    problem = model.problem(model.preprocess(x))
    z0 = torch.zeros(len(x), 40)
    z, convergence = fista_report(problem, z0, 150, 1e-4)
    torch.testing.assert_close(z, fista(problem, z0, 150, 1e-4), rtol=0, atol=0)  # fista's value unchanged
    assert convergence.method == "fista" and 0 < convergence.count < len(x)
    # per sample: capped exactly where its last step was above tol relative to its code
    assert torch.equal(convergence.capped, convergence.step > 1e-4)
    # ten more steps (momentum restarted) move a sample that was not capped by about 10·tol at most,
    # and some capped ones by more
    moved = (fista(problem, z, 10, 0) - z).norm(dim=1) / z.norm(dim=1)
    assert float(moved[~convergence.capped].max()) < 2e-3 < float(moved[convergence.capped].max())
    with pytest.warns(energydsl.InferenceCapWarning) as record:
        model.infer(x, steps=150, tol=1e-4)
    assert int(capped_warning(record).group(3)) == convergence.count


def test_a_generous_cap_and_tol_0_do_not_warn():
    model, x = small()
    silent(lambda: model.infer(x))  # 1000 steps, tol 1e-6: every sample converges first
    silent(lambda: model.infer(x, steps=5, tol=0))  # exactly 5 steps asked for
    silent(lambda: energydsl.load(SPEC.format(method="fista(steps = 5, tol = 0)")).infer(x))


def test_ista_names_itself():
    model, x = small("ista(steps = 10, tol = 1e-5)")
    with pytest.warns(energydsl.InferenceCapWarning) as record:
        model.infer(x)
    assert capped_warning(record).groups()[:2] == ("ista", "10")


def test_admm_over_overlapping_pools_warns_when_capped():
    model = energydsl.load(POOLS_SPEC.format(steps=20))
    x = model.dataset.x_train[:32]
    with pytest.warns(energydsl.InferenceCapWarning) as record:
        model.infer(x)
    method, steps, count, total, _, tol, measure, worst = capped_warning(record).groups()
    assert (method, steps, total, tol, measure) == ("fista (by ADMM)", "20", "32", "0.0001", "residual")
    assert int(count) > 0 and float(worst) > 1e-4
    silent(lambda: model.infer(x, steps=5000))
    silent(lambda: model.infer(x, tol=0))


def test_training_records_the_capped_share_per_epoch_and_does_not_warn(tmp_path):
    model = energydsl.load(SPEC.format(method="fista(steps = 3, tol = 1e-6)"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", energydsl.InferenceCapWarning)
        history = energydsl.train(model, out=tmp_path / "run")
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["infer.capped"] for m in lines] == [m["infer.capped"] for m in history]
    assert all(0.5 < m["infer.capped"] <= 1 for m in lines)  # 3 steps: (nearly) every sample capped
    assert f"infer capped {history[0]['infer.capped']:.1%}" in format_epoch(history[0], 2)  # the epoch line
    generous = energydsl.train(energydsl.load(SPEC.format(method="fista(steps = 2000, tol = 1e-4)")))
    assert [m["infer.capped"] for m in generous] == [0.0, 0.0]
    assert "capped" not in format_epoch(generous[0], 2)
