"""The SAELens export: a trained SAE run written as ``cfg.json`` + ``sae_weights.safetensors``.

A tiny ReLU SAE (the SAE specs' conventions: ``let pre = E @ (x - b_dec) + b_enc``, decoder
``D @ z + b_dec``) is trained for one epoch into a run directory, exported, and the written
tensors are checked against the spec's parameters; with sae-lens installed,
``SAE.load_from_disk`` loads the export and its encode and decode match the model's to 1e-5.
The TopK and JumpReLU layouts are checked against SAELens's own classes from tensors made here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save

import energydsl
from energydsl.errors import RunError
from energydsl.runs import checkpoint
from energydsl.runs.saelens import (
    CFG_FILE,
    WEIGHTS_FILE,
    SaelensSAE,
    check_against_model,
    export_saelens,
    from_bytes,
    saelens_decode,
    saelens_encode,
    to_saelens,
)

RELU_SAE = """
model relu_sae
data synthetic(dim = 12, atoms = 20, count = 256, k = 3, seed = 1)
const units = 16
const epochs = 1
input x[12]{normalize}
latent z[units] >= 0
param D[12, units] init normal(0.3)
param E[units, 12] init D.T
param b_enc[units] init -0.05
param b_dec[12] init 0.1
let pre = E @ (x - b_dec) + b_enc
encoder z = relu(pre)
energy
  recon  : sqerr(x, D @ z + b_dec)
  sparse : 0.01 * l1(z)
infer z by {infer}
train
  optimizer adam(lr = 0.01)
  batch 64
  epochs epochs
"""


def run_directory(directory: Path, normalize: str = "", infer: str = "encoder", encoder: str = "relu(pre)") -> Path:
    """A run directory of the relu SAE (variants by argument), trained for one epoch; written
    as a run is, without the report that energydsl.train(out=...) adds."""
    spec = RELU_SAE.format(normalize=normalize, infer=infer).replace("relu(pre)", encoder)
    model = energydsl.load(spec)
    energydsl.train(model)
    checkpoint.save_model(directory, model, checkpoint.resolved_source(model.program, {}, None))
    return directory


@pytest.fixture(scope="module")
def relu_run(tmp_path_factory) -> Path:
    return run_directory(tmp_path_factory.mktemp("relu_run"))


def params(run: Path) -> dict[str, torch.Tensor]:
    return {name: t.detach() for name, t in energydsl.load_run(run).params.items()}


def random_inputs(n: int = 64, d: int = 12) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(1))


def test_written_tensors_are_the_specs_parameters(relu_run, tmp_path):
    out = export_saelens(relu_run, tmp_path / "sae")
    weights = load_file(out / WEIGHTS_FILE)
    cfg = json.loads((out / CFG_FILE).read_text())
    p = params(relu_run)
    assert set(weights) == {"W_enc", "b_enc", "W_dec", "b_dec"}
    torch.testing.assert_close(weights["W_enc"], p["E"].T, rtol=0, atol=1e-6)
    torch.testing.assert_close(weights["W_dec"], p["D"].T, rtol=0, atol=1e-6)
    torch.testing.assert_close(weights["b_enc"], p["b_enc"], rtol=0, atol=1e-6)
    torch.testing.assert_close(weights["b_dec"], p["b_dec"], rtol=0, atol=1e-6)
    assert cfg["architecture"] == "standard" and (cfg["d_in"], cfg["d_sae"]) == (12, 16)
    assert cfg["apply_b_dec_to_input"] is True and cfg["normalize_activations"] == "none"
    assert cfg["metadata"]["sae_lens_version"].startswith("6.")


def test_plain_torch_forward_matches_the_model(relu_run, tmp_path):
    model = energydsl.load_run(relu_run)
    out = export_saelens(relu_run, tmp_path / "sae")
    weights, cfg = load_file(out / WEIGHTS_FILE), json.loads((out / CFG_FILE).read_text())
    sae = SaelensSAE(cfg["architecture"], **weights)
    x = random_inputs()
    z = saelens_encode(sae, x)
    torch.testing.assert_close(z, model.infer(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(saelens_decode(sae, z, x), z @ model.params["D"].detach().T + model.params["b_dec"].detach())
    assert 0 < (z > 0).float().mean() < 1  # the inputs exercise both sides of the ReLU


@pytest.mark.slow  # importing sae_lens takes 10 s and more
def test_sae_lens_loads_the_export_with_the_models_outputs(relu_run, tmp_path):
    sae_lens = pytest.importorskip("sae_lens")
    model = energydsl.load_run(relu_run)
    sae = sae_lens.SAE.load_from_disk(export_saelens(relu_run, tmp_path / "sae"))
    x = random_inputs()
    with torch.no_grad():
        z = sae.encode(x)
        torch.testing.assert_close(z, model.infer(x), rtol=1e-5, atol=1e-5)
        expected = z @ model.params["D"].detach().T + model.params["b_dec"].detach()
        torch.testing.assert_close(sae.decode(z), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.slow  # importing sae_lens takes 10 s and more
def test_l2_normalised_input_folds_into_constant_norm_rescale(tmp_path):
    sae_lens = pytest.importorskip("sae_lens")
    run = run_directory(tmp_path / "run", normalize=" normalize l2")
    model = energydsl.load_run(run)
    out = export_saelens(run, tmp_path / "sae")
    assert json.loads((out / CFG_FILE).read_text())["normalize_activations"] == "constant_norm_rescale"
    sae = sae_lens.SAE.load_from_disk(out)
    x = random_inputs() * 7.0  # the model sees x / ‖x‖ whatever the scale
    with torch.no_grad():
        z = sae.encode(x)
        torch.testing.assert_close(z, model.infer(x), rtol=1e-5, atol=1e-5)
        unit_recon = z @ model.params["D"].detach().T + model.params["b_dec"].detach()
        torch.testing.assert_close(sae.decode(z), unit_recon * x.norm(dim=1, keepdim=True), rtol=1e-5, atol=1e-5)


@pytest.mark.slow  # importing sae_lens takes 10 s and more
@pytest.mark.parametrize("architecture", ["topk", "jumprelu"])
def test_topk_and_jumprelu_layouts_are_sae_lens_own(tmp_path, architecture):
    """The files SaelensSAE writes load into SAELens's class of that architecture, which then
    computes what saelens_encode / saelens_decode compute."""
    sae_lens = pytest.importorskip("sae_lens")
    generator = torch.Generator().manual_seed(0)
    d, units = 10, 24
    tensors = dict(W_enc=torch.randn(d, units, generator=generator), b_enc=torch.randn(units, generator=generator) * 0.1,
                   W_dec=torch.randn(units, d, generator=generator), b_dec=torch.randn(d, generator=generator) * 0.1)  # fmt: skip
    extra = {"k": 5} if architecture == "topk" else {"threshold": torch.rand(units, generator=generator)}
    ours = SaelensSAE(architecture, **tensors, **extra)
    out = tmp_path / "sae"
    out.mkdir()
    (out / WEIGHTS_FILE).write_bytes(save(ours.tensors()))
    (out / CFG_FILE).write_text(json.dumps(ours.config()))
    theirs = sae_lens.SAE.load_from_disk(out)
    assert type(theirs).__name__ == {"topk": "TopKSAE", "jumprelu": "JumpReLUSAE"}[architecture]
    read = from_bytes((out / WEIGHTS_FILE).read_bytes(), (out / CFG_FILE).read_text())
    x = torch.randn(32, d, generator=generator)
    with torch.no_grad():
        z = theirs.encode(x)
        torch.testing.assert_close(z, saelens_encode(read, x))
        torch.testing.assert_close(theirs.decode(z), saelens_decode(read, z, x))
    assert ((z != 0).sum(1) == 5).all() if architecture == "topk" else 0 < (z != 0).float().mean() < 1


def test_refuses_inference_beyond_the_encoder(tmp_path):
    run = run_directory(tmp_path / "run", infer="encoder then fista(steps = 3)")
    with pytest.raises(RunError, match="encoder alone"):
        export_saelens(run, tmp_path / "sae")
    assert not (tmp_path / "sae").exists()


def test_refuses_an_activation_sae_lens_lacks(tmp_path):
    run = run_directory(tmp_path / "run", encoder="tanh(pre)")
    with pytest.raises(RunError, match="'tanh' is not an activation SAELens has"):
        export_saelens(run, tmp_path / "sae")


def test_refuses_a_non_empty_directory_unless_overwrite(relu_run, tmp_path):
    (tmp_path / "sae").mkdir()
    (tmp_path / "sae" / "notes.txt").write_text("mine")
    with pytest.raises(RunError, match="not empty"):
        export_saelens(relu_run, tmp_path / "sae")
    export_saelens(relu_run, tmp_path / "sae", overwrite=True)
    assert (tmp_path / "sae" / CFG_FILE).exists() and (tmp_path / "sae" / "notes.txt").read_text() == "mine"


def test_the_check_refuses_an_export_that_differs_from_the_model(relu_run):
    model = energydsl.load_run(relu_run)
    exact = to_saelens(model)
    as_written = from_bytes(save(exact.tensors()), json.dumps(exact.config()))
    check_against_model(model, as_written)  # the faithful export passes
    as_written.b_enc = as_written.b_enc + 0.01
    with pytest.raises(RunError, match="encode: .* random inputs get other latents"):
        check_against_model(model, as_written)
    as_written.b_enc = as_written.b_enc - 0.01
    as_written.W_dec = as_written.W_dec * 1.001
    with pytest.raises(RunError, match="decode: the reconstructions differ"):
        check_against_model(model, as_written)


# ---------------------------------------------------------------- the shipped SAE specs

SPECS = Path(__file__).resolve().parents[2] / "specs"
SMALL = {"units": 32, "k": 4, "k_aux": 8, "epochs": 1, "batch": 64, "window": 256}
SHIPPED = {"relu": "standard", "topk": "topk", "batchtopk": "jumprelu", "jumprelu": "jumprelu", "gated": "gated",
           "matryoshka": "jumprelu"}  # fmt: skip


def shipped_run(directory: Path, name: str) -> Path:
    """specs/sae_NAME.energy trained for an epoch on a small world, written as a run directory."""
    spec = SPECS / f"sae_{name}.energy"
    declared = {decl.name.name for decl in energydsl.api.read_spec(spec).consts}
    model = energydsl.load(spec, set={key: value for key, value in SMALL.items() if key in declared},
                           data="features(dim = 16, features = 32, count = 3000, seed = 1)")  # fmt: skip
    energydsl.train(model)
    source = checkpoint.resolved_source(model.program, model.overrides, model.data_text)
    checkpoint.save_model(directory, model, source)
    return directory


@pytest.fixture(scope="module")
def shipped_runs(tmp_path_factory) -> dict[str, Path]:
    return {name: shipped_run(tmp_path_factory.mktemp(name), name) for name in SHIPPED}


@pytest.mark.parametrize("name", list(SHIPPED))
def test_every_shipped_sae_spec_exports_to_the_architecture_sae_lens_saves_it_as(shipped_runs, tmp_path, name):
    out = export_saelens(shipped_runs[name], tmp_path / "sae")
    cfg = json.loads((out / CFG_FILE).read_text())
    sae = from_bytes((out / WEIGHTS_FILE).read_bytes(), (out / CFG_FILE).read_text())
    model = energydsl.load_run(shipped_runs[name])
    x = random_inputs(256, 16) + sae.b_dec
    z = model.infer(x)
    assert cfg["architecture"] == SHIPPED[name]
    assert 0 < float((z != 0).float().mean()) < 0.9  # units both on and off: the comparison means something
    torch.testing.assert_close(saelens_encode(sae, x), z, rtol=1e-5, atol=1e-5)
    if name == "gated":  # the magnitudes share the gate's directions, scaled by exp(r_mag)
        p = model.params
        torch.testing.assert_close(sae.gate[1], p["r_mag"].detach(), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(sae.W_enc, p["E"].detach().T, rtol=0, atol=1e-6)


@pytest.mark.slow  # importing sae_lens takes 10 s and more
@pytest.mark.parametrize("name", list(SHIPPED))
def test_sae_lens_computes_every_shipped_spec_as_the_model_does(shipped_runs, tmp_path, name):
    sae_lens = pytest.importorskip("sae_lens")
    model = energydsl.load_run(shipped_runs[name])
    sae = sae_lens.SAE.load_from_disk(export_saelens(shipped_runs[name], tmp_path / "sae"))
    x = random_inputs(256, 16)
    with torch.no_grad():
        z = sae.encode(x)
        torch.testing.assert_close(z, model.infer(x), rtol=1e-5, atol=1e-5)
        xp = model.preprocess(x)
        expected = model.program.reconstruction.reconstruction(model.env(xp, z))[1]
        torch.testing.assert_close(sae.decode(z), expected, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- transcoders

TRANSCODER = """
model relu_transcoder
data features(dim = 12, features = 20, count = 600, target_dim = 8, seed = 1)
input  x[12]{normalize}
target y[e]
latent z[16] >= 0
param D[e, 16]   init normal(0.3)
param E[16, 12]  init normal(0.3)
param b_enc[16]  init -0.05
param b_dec[e]   init 0.1
let pre = E @ x + b_enc
encoder z = {encoder}
energy
  recon  : sqerr(y, D @ z + b_dec)
  sparse : 0.01 * l1(z)
infer z by encoder
train
  optimizer adam(lr = 0.01)
  batch 64
  epochs 1
"""


def transcoder_run(directory: Path, encoder: str = "relu(pre)", normalize: str = "") -> Path:
    model = energydsl.load(TRANSCODER.format(encoder=encoder, normalize=normalize))
    energydsl.train(model)
    checkpoint.save_model(directory, model, checkpoint.resolved_source(model.program, {}, None))
    return directory


def transcoder_outputs(model, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's code of x and its estimate of the target."""
    z = model.infer(x)
    return z, z @ model.params["D"].detach().T + model.params["b_dec"].detach()


@pytest.mark.parametrize(("encoder", "architecture"), [("relu(pre)", "transcoder"),
                                                        ("jumprelu(pre, 0.05)", "jumprelu_transcoder")])
def test_a_transcoder_exports_as_a_sae_lens_transcoder(tmp_path, encoder, architecture):
    run = transcoder_run(tmp_path / "run", encoder)
    out = export_saelens(run, tmp_path / "sae")
    cfg = json.loads((out / CFG_FILE).read_text())
    assert (cfg["architecture"], cfg["d_in"], cfg["d_out"], cfg["d_sae"]) == (architecture, 12, 8, 16)
    assert cfg["apply_b_dec_to_input"] is False  # SAELens refuses a transcoder that subtracts b_dec
    model = energydsl.load_run(run)
    weights = load_file(out / WEIGHTS_FILE)
    torch.testing.assert_close(weights["W_enc"], model.params["E"].detach().T)
    torch.testing.assert_close(weights["b_enc"], model.params["b_enc"].detach())  # no b_dec folded in
    sae = from_bytes((out / WEIGHTS_FILE).read_bytes(), (out / CFG_FILE).read_text())
    x = random_inputs()
    z, estimate = transcoder_outputs(model, x)
    assert 0 < float((z != 0).float().mean()) < 1
    torch.testing.assert_close(saelens_encode(sae, x), z, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(saelens_decode(sae, z, x), estimate, rtol=1e-5, atol=1e-5)


def test_a_topk_transcoder_is_refused(tmp_path):
    run = transcoder_run(tmp_path / "run", "topk(relu(pre), 3)")
    with pytest.raises(RunError, match="target 'y': SAELens's transcoders have a relu or a jumprelu encoder "
                                       r"\(transcoder, jumprelu_transcoder\), not topk"):  # fmt: skip
        export_saelens(run, tmp_path / "sae")


@pytest.mark.slow  # importing sae_lens takes 10 s and more
@pytest.mark.parametrize("normalize", ["", " normalize l2"])
def test_sae_lens_computes_a_transcoder_as_the_model_does(tmp_path, normalize):
    sae_lens = pytest.importorskip("sae_lens")
    run = transcoder_run(tmp_path / "run", normalize=normalize)
    sae = sae_lens.SAE.load_from_disk(export_saelens(run, tmp_path / "sae"))
    assert type(sae).__name__ == "Transcoder"
    model = energydsl.load_run(run)
    x = random_inputs() * 3.0
    z, estimate = transcoder_outputs(model, x)
    with torch.no_grad():
        torch.testing.assert_close(sae.encode(x), z, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(sae.decode(z), estimate, rtol=1e-5, atol=1e-5)
