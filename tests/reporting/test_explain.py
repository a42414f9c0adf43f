"""``explain``: the report names every term with its prox, every parameter with its size,
and its FLOP counts match counts worked out by hand from the spec's shapes."""

import functools
import re
from pathlib import Path

import pytest

from energydsl.api import compile_program
from energydsl.reporting.explain import explain
from energydsl.terms import TERMS

SPECS = Path(__file__).resolve().parents[2] / "specs"


@functools.cache
def report(name: str, **overrides) -> str:
    return explain(compile_program(SPECS / f"{name}.energy", overrides))


def cost_rows(text: str) -> dict[str, tuple[float, int]]:
    """The cost table: label → (per sample, per batch)."""
    table = text.split("Cost in FLOPs")[1].split("\n\n")[0]
    rows = {}
    for line in table.splitlines()[1:]:
        label, per_sample, per_batch = re.fullmatch(r"\s+(.+?)\s{2,}([\d,.]+)\s+([\d,]+)", line).groups()
        rows[label] = (float(per_sample.replace(",", "")), int(per_batch.replace(",", "")))
    return rows


def term_block(text: str, name: str) -> str:
    """A term's lines in the Energy section, joined into one line."""
    energy = text.split("\nEnergy ")[1].split("\n\n")[0]
    blocks = re.split(r"\n(?=  \w+ +=)", energy)
    block = next(b for b in blocks if re.match(rf"  {name} +=", b))
    return " ".join(block.split())


# ---------------------------------------------------------------- terms and their prox

TERM_CASES = [
    ("sparse_coding", "recon", "recon = 0.5 · ‖x − W @ z‖²", "smooth, quadratic in z"),
    ("sparse_coding", "sparse", "sparse = 0.1 · ‖z‖₁", "prox = soft-threshold sign(v)·max(|v| − τ·0.1, 0)"),
    ("drsae", "recon", "recon = 0.5 · ‖x − D @ z‖²", "inference is by the encoder"),
    ("drsae", "sparse", "sparse = 0.01 · ‖z‖₁", "inference is by the encoder"),
    ("drsae", "class", "class = −log softmax(C @ normalize(z))[y]", "inference is by the encoder"),
    ("topographic", "group", "group = 0.05 · Σⱼ ‖z[Pⱼ]‖₂", "prox = weighted pools, each unit in 25 pools: with a quadratic smooth part (a reconstruction) FISTA hands the whole problem to ADMM"),
    ("tree_inhibition", "sparse", "sparse = 0.05 · ‖z‖₁", "prox = soft-threshold"),
    ("tree_inhibition", "inhibit", "inhibit = 0.15 · |z|ᵀ S |z|",
     "prox = per-unit soft-threshold at τ·0.15·((S + Sᵀ)|z|)ᵢ"),
    ("tree_sparsity", "tree", "tree = 0.05 · Σ_n∈T ‖z[subtree(n)]‖₂",
     "prox = nested composition (laminar pools, 6 levels of nesting)"),
    ("group_sparsity", "group", "group = 0.15 · Σⱼ ‖z[Pⱼ]‖₂", "prox = group soft-threshold (disjoint pools)"),
]  # fmt: skip


@pytest.mark.parametrize("spec, term, formula, handling", TERM_CASES)
def test_each_term_is_shown_with_its_formula_and_prox(spec, term, formula, handling):
    block = term_block(report(spec), term)
    assert block.startswith(formula)
    assert handling in block


def test_term_arguments_are_shown_with_their_shapes():
    assert "inhibition(z, S): z: [63] per sample; S: [63, 63]" in term_block(report("tree_inhibition"), "inhibit")
    assert "xent(C @ normalize(z), y): C @ normalize(z): [10] per sample; y: label" in term_block(
        report("drsae"), "class"
    )
    assert "group_l2(z, P): z: [256] per sample; P: 256 pools" in term_block(report("topographic"), "group")


def test_every_registered_term_has_a_formula_naming_all_its_arguments():
    for name, cls in TERMS.items():
        assert all("{" + argument + "}" in cls.formula for argument in cls.arguments), name


# ---------------------------------------------------------------- parameters

PARAMETERS = {
    "sparse_coding": {"W": ((144, 256), "descent, lr 0.5")},
    "drsae": {
        "D": ((784, 400), "descent, lr 0.0003"),
        "E": ((400, 784), "descent, lr 0.0003"),
        "S": ((400, 400), "descent, lr 0.0003"),
        "b": ((400,), "descent, lr 0.0003"),
        "C": ((10, 400), "descent, lr 0.003 (= 0.0003 × lr_scale 10)"),
    },
    "topographic": {"W": ((144, 256), "descent, lr 2")},
    "tree_inhibition": {"W": ((64, 63), "descent, lr 0.5"), "S": ((63, 63), "ascent, lr 1 (its own)")},
}


@pytest.mark.parametrize("spec", sorted(PARAMETERS))
def test_every_parameter_is_listed_with_its_exact_count(spec):
    text = report(spec)
    total = 0
    for name, (shape, learning) in PARAMETERS[spec].items():
        count = 1
        for size in shape:
            count *= size
        total += count
        dims = ", ".join(map(str, shape))
        assert re.search(rf"^  {name}\[{dims}\] +{count:,} values +{re.escape(learning)}$", text, re.MULTILINE), name
    assert f"Parameters  ({total:,} values, {total:,} learned)" in text


def test_parameters_show_their_init_and_constraints_in_projection_order():
    drsae = report("drsae")
    assert "init I - alpha * D.T @ D" in drsae
    assert "constrain row_norm <= 0.125" in drsae  # 1.25 / (T - 1) with T = 11
    tree = report("tree_inhibition")
    assert "constrain mask tree_inhibition(T), symmetric, nonneg, zero_diag, norm <= 58.3" in tree


def test_training_plan_lists_each_phase_with_its_terms():
    text = report("drsae")
    assert "Training  adam(lr = 0.0003), batch 64, seed 0" in text
    assert "phase pretrain: 10 epochs, terms recon, sparse\n" in text
    assert "phase finetune: 50 epochs, terms recon, sparse, class, cosine learning-rate schedule\n" in text


# ---------------------------------------------------------------- FLOPs against hand counts


def test_sparse_coding_flops_match_the_hand_count():
    n, m, batch, steps = 144, 256, 256, 100  # W[144, 256], batch 256, fista(steps = 100)
    rows = cost_rows(report("sparse_coding"))
    gram_step = 2 * m * m  # z·H with H = WᵀW
    autograd_step = 2 * n * m * 2  # W z forward, Wᵀ r backward
    assert rows["fista step: gradient z·H"] == (gram_step, gram_step * batch)
    assert rows["(the same gradient by autograd)"] == (autograd_step, autograd_step * batch)
    assert rows["fista step: prox"] == (0, 0)  # soft-thresholding has no matrix product
    # reading H off the energy: gradients at 0, at the unit vectors (m ≤ batch: one pass) and at a
    # random probe, plus the probe's predicted gradient
    setup = 3 * autograd_step * batch + 2 * batch * m * m
    assert rows["fista setup, once per batch (Gram matrix)"][1] == setup
    assert rows["inference, in all (at most)"][1] == setup + steps * gram_step * batch
    learning = 2 * n * m * 2  # W z forward, the gradient in W backward (z* is fixed)
    assert rows["training step [train]: energy + gradient"] == (learning, learning * batch)


def drsae_hand_count(T: int) -> dict[str, int]:
    """Per sample, for D[784, 400], E[400, 784], S[400, 400], C[10, 400]."""
    n, m, classes = 784, 400, 10
    encoder = 2 * m * n + T * 2 * m * m  # E @ x once (hoisted), S @ z on each of the T steps
    forward = encoder + 2 * n * m  # and D @ z
    backward = (
        2 * m * n  # E @ x: the gradient in E only (x needs none)
        + 2 * m * m  # the first S @ z: in S only (the state starts at the constant 0)
        + (T - 1) * 2 * (2 * m * m)  # the other steps: in S and in z
        + 2 * (2 * n * m)  # D @ z: in D and in z
    )
    pretrain = forward + backward
    finetune = pretrain + 3 * (2 * classes * m)  # C @ normalize(z): forward, in C, in z
    return {"encoder": encoder, "pretrain": pretrain, "finetune": finetune}


@pytest.mark.parametrize("overrides", [{}, {"T": 3}])
def test_drsae_flops_match_the_hand_count(overrides):
    T = overrides.get("T", 11)
    text = report("drsae", **overrides)
    assert f"encoder: {T} recurrent steps of z ← relu(E @ x + S @ z - b)" in text
    assert "computed once, before the steps (they do not read z): E @ x" in text
    rows = cost_rows(text)
    expected = drsae_hand_count(T)
    assert rows["encoder, whole pass"] == (expected["encoder"], expected["encoder"] * 64)
    assert rows["training step [pretrain], in all"][0] == expected["pretrain"]
    assert rows["training step [finetune], in all"][0] == expected["finetune"]


def test_prox_flops_follow_the_structure():
    m = 63
    inhibition = cost_rows(report("tree_inhibition"))
    assert inhibition["ista step: prox"][0] == 2 * m * m  # the threshold |z|·(S + Sᵀ)
    assert inhibition["ista step, in all"][0] == 2 * m * m + 2 * m * m  # and the gradient z·H
    # nested pools: per level, ‖z_P‖² and the scale back to units are products with the
    # units × pools one-hot matrix of that level; the 63 subtrees are spread over the levels
    tree = cost_rows(report("tree_sparsity"))
    assert tree["fista step: prox"][0] == 2 * (2 * m * 63)


# ---------------------------------------------------------------- how inference runs

PER_SAMPLE_HESSIAN = """
data synthetic(dim = 8, atoms = 12, count = 40)
input x[8]
latent z[12]
param W[8, 12]
energy
  recon  : 0.5 * sqerr(x, x * (W @ z))
  sparse : 0.1 * l1(z)
infer z by fista(steps = 10)
train
  batch 16
"""


def test_gram_path_is_reported_only_where_it_applies():
    assert "gradient: Gram fast path: ∇ = c + z·H" in report("sparse_coding")
    # quadratic in z, but the Hessian WᵀDiag(x²)W differs from sample to sample
    text = " ".join(explain(compile_program(PER_SAMPLE_HESSIAN)).split())
    assert "gradient: autograd (forward and backward of the smooth energy): the smooth part is quadratic, " \
           "but its Hessian differs between samples" in text  # fmt: skip
    rows = cost_rows(explain(compile_program(PER_SAMPLE_HESSIAN)))
    n, m = 8, 12
    assert rows["fista step: gradient by autograd"] == (2 * n * m * 2, 2 * n * m * 2 * 16)


def test_explain_leaves_no_warm_start_on_the_program():
    program = compile_program(SPECS / "topographic.energy")
    first = explain(program)
    norms = [t.term.norms for t in program.terms if t.term.prox_kind == "group"]
    assert norms and all(n.warm_start is None for n in norms)
    assert explain(program) == first


def test_explain_command_prints_the_report(capsys):
    from energydsl.cli import main

    assert main(["explain", str(SPECS / "sparse_coding.energy"), "--set", "lam=0.2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("model sparse_coding ") and "sparse = 0.2 · ‖z‖₁" in out


SPARSE_AUTOENCODER = """
model sae
data synthetic(dim = 8, atoms = 12, count = 100, seed = 1)
const k = 3
input x[d]
latent z[12] >= 0
param E[12, d]
param b[12]
param D[d, 12] init samples(x)
let pre = E @ x + b
encoder z = batchtopk(relu(pre), k)
energy
  recon : sqerr(x, D @ z)
infer z by encoder
"""


def test_an_encoder_with_a_sparsity_mechanism_says_what_it_does_and_what_it_keeps():
    text = explain(compile_program(SPARSE_AUTOENCODER))
    inference = text.split("\nInference ")[1].split("\n\n")[0]
    assert "encoder: z = batchtopk(relu(pre), k), one pass" in inference
    assert "batchtopk(v, k, rate = 0.01): while training, keep the k·B largest entries" in " ".join(inference.split())
    state = text.split("\nState ")[1].split("\n\n")[0]
    assert "batchtopk_threshold (a scalar): the running threshold of the batchtopk(...) of line 11" in state
    plain = explain(compile_program(SPECS / "sparse_coding.energy")).split("\nState ")[1].split("\n\n")[0]
    assert "activity[" in plain and "batchtopk" not in plain  # every model tracks its units' firing


def test_a_transcoder_shows_its_target_and_counts_its_encoder():
    text = report("transcoder")
    assert "  target  y[24]          24 values per sample, reconstructed from the code of the input" in text
    assert "sqerr(y, yhat): y: [24] per sample; yhat: [24] per sample" in term_block(text, "recon")
    assert cost_rows(text)["encoder, whole pass"] == (2 * 32 * 256, 2 * 32 * 256 * 256)  # E @ x, E [256, 32]


@pytest.mark.parametrize("name", sorted(p.stem for p in SPECS.glob("*.energy")))
def test_every_shipped_spec_explains(name):
    text = report(name)
    assert "Energy" in text and "Cost in FLOPs" in text
