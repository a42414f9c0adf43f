"""The amortisation gap: how far a learned encoder's codes are from the codes its own energy asks for.

An encoder (DrSAE, LISTA, PSD, a sparse auto-encoder) is a fast approximation of argmin_z E(x, z).
``energydsl gap RUN`` measures the approximation on held-out samples against the optimum of
*the same energy as inference sees it*:

- the terms: those that depend on the code, less those that need a label (as ``infer`` leaves them
  out) and less those that read what the encoder computes (PSD's and LISTA's prediction terms, a
  sparse auto-encoder's auxiliary loss: they train the encoder, they do not define the code);
- the optimum: the exact lasso homotopy (``lars``) where the energy is a lasso, else FISTA (or ADMM
  for overlapping pools) run until every sample's duality gap is at most :data:`OPTIMAL_GAP` of its
  energy: certified either way (:mod:`energydsl.solvers.certificate`), and in float64, on a copy of
  the model, as every energy measured here;
- an encoder whose code is cut to a few units by an L0-type mechanism (``topk``, ``batchtopk``,
  ``jumprelu``, ``step``) has an implicit constraint ‖z‖₀ ≤ k that no convex solver certifies: the
  optimum is then orthogonal matching pursuit's code with, for each sample, as many units as the
  encoder's code has (``omp``), stated as **not certified**, and the refined codes take their
  projected gradient steps on the encoder's own support, so they keep its L0.

Figures (``amortisation.*`` keys):

- ``optimal.certified_gap``, the largest certified relative gap of the optimal codes, and
  ``encoder.duality_gap``, the mean certified bound on the encoder's own, (E_enc − E*) / E_enc ≤
  gap / E_enc, which needs no optimal codes;
- the relative energy gap (E_enc − E*) / E* per sample, mean and 90th percentile (E* no less than
  :data:`RELATIVE_FLOOR` of its mean there: an input near 0 would swamp the mean);
- each code's mean energy and reconstruction error, and its mean L0;
- the support precision and recall of the encoder's codes against the optimal ones;
- the codes refined by :data:`REFINE_STEPS` FISTA steps from the encoder's (``infer z by encoder
  then fista(...)``) and the share of the gap they close (``refined.closed``);
- where the data know the true codes, feature recovery of each code: the F1 of
  :mod:`energydsl.reporting.recovery` and the code MCC of :func:`~energydsl.ops.recovery.code_mcc`
  (left out above :data:`CODE_MCC_MAX_ENTRIES` correlations).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch

from energydsl.compiler import Program
from energydsl.data import Dataset
from energydsl.expr.syntax import functions_called, names_read
from energydsl.mechanisms import MECHANISMS
from energydsl.model import EnergyModel
from energydsl.ops.pursuit import omp_gram
from energydsl.ops.recovery import best_matches, code_mcc, detection
from energydsl.reporting.viz import new_figure, save_figure
from energydsl.solvers.certificate import certify
from energydsl.solvers.fista import fista_report
from energydsl.solvers.lars import lars_report
from energydsl.solvers.problem import Problem, affine_gradient, largest_eigenvalue
from energydsl.solvers.stepsize import DENSE_GRAM_MAX_UNITS

GAP_SAMPLES = 2048  # held-out samples measured
REFINE_STEPS = 5  # FISTA steps from the encoder's codes
OPTIMAL_GAP = 1e-6  # the certified relative gap the optimal codes are solved to
OPTIMAL_STEPS = 100_000
RELATIVE_FLOOR = 0.01  # of the mean optimal energy: the least denominator of a sample's relative gap
PREFIX = "amortisation."
CODE_MCC_MAX_ENTRIES = 1 << 24  # units × features correlations at most (a Hungarian matching of 4096 × 4096)
GAP_FILE = "amortisation.json"  # in a run directory, written by ``energydsl gap``; report.html shows it
GAP_PICTURE = "amortisation.png"


@dataclass(frozen=True)
class Measured:
    """Codes of one kind on the measured samples, with their energy per sample."""

    codes: torch.Tensor  # (B, m)
    energy: torch.Tensor  # (B,) float64


def amortised_terms(program: Program) -> tuple[str, ...]:
    """The terms whose optimum the encoder's codes approximate (see the module docstring)."""
    spec = program.spec
    if program.encoder is None:
        raise ValueError(f"spec '{program.name}' has no encoder, so there is no amortisation gap to measure")
    encoder_lets = _lets_read(spec, names_read(spec.encoders[0].value))
    declared = {decl.name.name: decl.value for decl in spec.energy}
    chosen = program.inference_terms
    return tuple(t.name for t in program.terms
                 if t.degree > 0 and not t.term.needs_label and (chosen is None or t.name in chosen)
                 and not _lets_read(spec, names_read(declared[t.name])) & encoder_lets)  # fmt: skip


def _lets_read(spec, names: set[str]) -> set[str]:
    """The lets among ``names``, and those they read, transitively."""
    lets = {decl.name.name: decl.value for decl in spec.lets}
    found, frontier = set(), names & lets.keys()
    while frontier:
        found |= frontier
        frontier = set().union(*(names_read(lets[name]) for name in frontier)) & lets.keys() - found
    return found


def l0_mechanism(program: Program) -> str | None:
    """The L0-type mechanism the encoder applies (``topk`` ...), through its lets; None when it has none."""
    spec = program.spec
    encoder = spec.encoders[0].value
    values = [encoder] + [decl.value for decl in spec.lets if decl.name.name in _lets_read(spec, names_read(encoder))]
    called = set().union(*(functions_called(value) for value in values))
    return next((name for name in sorted(called) if name in MECHANISMS and MECHANISMS[name].l0), None)


def amortisation_gap(model: EnergyModel, dataset: Dataset, samples: int = GAP_SAMPLES,
                     refine_steps: int = REFINE_STEPS) -> tuple[dict, dict[str, np.ndarray]]:  # fmt: skip
    """The figures of the module docstring on the first ``samples`` held-out samples, and the per-sample
    energies ``{"encoder", "refined", "optimal"}`` the picture draws."""
    names = amortised_terms(model.program)
    x = dataset.x_test if dataset.x_test.shape[0] else dataset.x_train
    x = x[:samples].to(model.device)
    target = None
    if model.program.target is not None:
        target = (dataset.target_test if dataset.x_test.shape[0] else dataset.target_train)[: x.shape[0]]
    encoder = model.encode(x).flatten(1).double()
    exact = copy.deepcopy(model).double()  # every code measured, and the optimum solved, in float64
    xp = exact.preprocess(x)
    problem = exact.problem(xp, None, names, exact.preprocess_target(target) if target is not None else None)
    mechanism = l0_mechanism(model.program)
    with torch.no_grad():
        if mechanism is not None:
            figures, optimal, refined = _sparse_pursuit(problem, encoder, mechanism, refine_steps)
        else:
            figures, optimal, refined = _certified(problem, encoder, refine_steps)
    coded = {"encoder": _measured(problem, encoder), "refined": refined, "optimal": optimal}
    figures.update(_compare(coded, exact, xp, target))
    figures.update(_recovery(exact, dataset, coded, x.shape[0]))
    figures[PREFIX + "samples"] = x.shape[0]
    energies = {name: codes.energy.cpu().numpy() for name, codes in coded.items()}
    return {key: (float(f"{value:.6g}") if isinstance(value, float) else value) for key, value in figures.items()}, energies


def _measured(problem: Problem, z: torch.Tensor) -> Measured:
    with torch.no_grad():
        energy = problem.smooth(z).double() + (problem.nonsmooth(z).double() if problem.nonsmooth else 0)
    return Measured(z, energy)


def _certified(problem: Problem, encoder: torch.Tensor, refine_steps: int):
    """Optimal codes by the homotopy or to a certified gap, and the encoder's refined by FISTA."""
    if problem.uncertified is not None:
        raise ValueError(f"no certified optimum for this energy: {problem.uncertified}")
    zeros = torch.zeros_like(encoder)
    lasso = problem.prox.group is None and problem.prox.l1_weight() is not None
    if lasso and encoder.shape[1] <= DENSE_GRAM_MAX_UNITS and problem.lipschitz is None:
        optimal, _ = lars_report(problem, zeros)
        method = "lars (exact homotopy)"
    else:
        optimal, _ = fista_report(problem, zeros, OPTIMAL_STEPS, 0.0, gap=OPTIMAL_GAP)
        method = f"fista to a relative duality gap of {OPTIMAL_GAP:g}"
    certificate = certify(problem, optimal)
    refined, _ = fista_report(problem, encoder, refine_steps, 0.0)
    figures = {PREFIX + "certified": True, PREFIX + "method": method, PREFIX + "refined": f"fista({refine_steps} steps)",
               PREFIX + "optimal.certified_gap": float(certificate.relative.max()),
               PREFIX + "encoder.duality_gap": float(certify(problem, encoder).relative.mean())}  # fmt: skip
    return figures, Measured(optimal, certificate.energy.double()), _measured(problem, refined)


def _sparse_pursuit(problem: Problem, encoder: torch.Tensor, mechanism: str, refine_steps: int):
    """The best codes with as many units as the encoder's, by orthogonal matching pursuit (not certified),
    and the encoder's codes refined by projected gradient steps on their own support."""
    affine = affine_gradient(problem, encoder)
    if affine is None:
        raise ValueError("no optimum to compare with: the energy's smooth terms do not share one Hessian")
    H, c = affine
    counts = (encoder != 0).sum(dim=1)
    optimal = torch.zeros_like(encoder)
    for count in counts.unique().tolist():  # the pursuit takes one k at a time
        rows = counts == count
        if count > 0:
            optimal[rows] = omp_gram(H, -c[rows], count, nonneg=problem.prox.nonneg).to(optimal)
    refined = _support_steps(H, c, encoder, refine_steps, problem.prox.nonneg)
    figures = {PREFIX + "certified": False,
               PREFIX + "method": f"orthogonal matching pursuit at the encoder's L0 per sample ({mechanism} is an "
                                  "L0 constraint: not certified)",
               PREFIX + "refined": f"{refine_steps} projected gradient steps on the encoder's support"}  # fmt: skip
    return figures, _measured(problem, optimal), _measured(problem, refined)


def _support_steps(H: torch.Tensor, c: torch.Tensor, z: torch.Tensor, steps: int, nonneg: bool) -> torch.Tensor:
    """``steps`` gradient steps of size 1/λ_max(H) on ½zHzᵀ + c·z, each projected back onto z's own support
    (and z ≥ 0): the energy never rises, and the code keeps its L0."""
    support = z != 0
    step = 1 / float(largest_eigenvalue(H))
    for _ in range(steps):
        z = torch.where(support, z - step * torch.addmm(c, z, H), 0)
        z = z.clamp(min=0) if nonneg else z
    return z


def _compare(coded: dict[str, Measured], model: EnergyModel, xp, target) -> dict:
    """The energy gaps, errors and supports of the three codes."""
    optimal = coded["optimal"].energy
    # a sample whose optimal energy is near 0 (an input near 0) is measured against a floor of 1 % of the
    # mean optimal energy, or its ratio would swamp the mean
    scale = optimal.clamp_min(RELATIVE_FLOOR * float(optimal.mean()))
    figures = {}
    for name, measured in coded.items():
        figures[f"{PREFIX}{name}.energy"] = float(measured.energy.mean())
        error = _reconstruction_error(model, xp, measured.codes, target)
        if error is not None:
            figures[f"{PREFIX}{name}.recon_error"] = error
        if name != "optimal":
            relative = ((measured.energy - optimal) / scale).cpu().numpy()
            figures[f"{PREFIX}{name}.gap.mean"] = float(relative.mean())
            figures[f"{PREFIX}{name}.gap.p90"] = float(np.quantile(relative, 0.9))
    encoder_gap = float((coded["encoder"].energy - optimal).mean())
    refined_gap = float((coded["refined"].energy - optimal).mean())
    figures[PREFIX + "refined.closed"] = 1 - refined_gap / encoder_gap if encoder_gap > 0 else 1.0
    found, best = coded["encoder"].codes != 0, coded["optimal"].codes != 0
    together = float((found & best).sum())
    figures[PREFIX + "support.precision"] = together / max(float(found.sum()), 1)
    figures[PREFIX + "support.recall"] = together / max(float(best.sum()), 1)
    figures[PREFIX + "encoder.l0"] = float(found.sum(1).double().mean())
    figures[PREFIX + "optimal.l0"] = float(best.sum(1).double().mean())
    return figures


def _reconstruction_error(model: EnergyModel, xp, z, target) -> float | None:
    """Σ‖x − x̂‖² / Σ‖x‖² of the spec's reconstruction term for codes ``z`` (None without one)."""
    term = model.program.reconstruction
    if term is None:
        return None
    z = z.reshape((z.shape[0],) + model.program.latent.shape)
    with torch.no_grad():
        wanted, estimate = term.reconstruction(model.env(xp, z, detach=True, target=target))
    return float((wanted - estimate).pow(2).sum() / wanted.pow(2).sum().clamp_min(1e-30))


def _recovery(model: EnergyModel, dataset: Dataset, coded: dict[str, Measured], count: int) -> dict:
    """Feature recovery of each code where the data know the true codes of these samples."""
    truth, true_codes = dataset.extras.get("dictionary"), dataset.extras.get("codes_test")
    decoder = model.program.roles.decoder
    if truth is None or true_codes is None or decoder is None or not dataset.x_test.shape[0]:
        return {}
    learned = model.params[decoder].detach()
    if learned.dim() != 2 or learned.shape[0] != truth.shape[0] or model.program.target is not None:
        return {}
    true_codes = true_codes.to_dense()[:count] if true_codes.is_sparse else true_codes[:count]
    match = best_matches(learned, truth).unit_match
    figures = {}
    for name, measured in coded.items():
        codes = measured.codes.cpu()
        figures[f"{PREFIX}{name}.f1"] = float(detection(codes, true_codes, match).f1.mean())
        if codes.shape[1] * true_codes.shape[1] <= CODE_MCC_MAX_ENTRIES:
            figures[f"{PREFIX}{name}.code_mcc"] = code_mcc(codes, true_codes)
    return figures


def gap_png(energies: dict[str, np.ndarray], path, certified: bool) -> None:
    """Each sample's energy of the encoder's (and the refined) codes against its optimal energy."""
    figure, axes = new_figure(figsize=(5.5, 5))
    optimal = energies["optimal"]
    for name, colour in (("encoder", "tab:red"), ("refined", "tab:blue")):
        axes.scatter(optimal, energies[name], s=4, alpha=0.5, color=colour, label=f"{name} codes")
    low, high = float(min(optimal.min(), 0)), float(max(energies["encoder"].max(), optimal.max()))
    axes.plot([low, high], [low, high], color="black", linewidth=1, label="the optimum")
    axes.set_xlabel("optimal energy" + ("" if certified else " (matching pursuit, not certified)"))
    axes.set_ylabel("energy of the codes")
    axes.set_title("Amortisation gap per held-out sample")
    axes.legend(loc="upper left")
    save_figure(figure, path)
