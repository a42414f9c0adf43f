"""A trained sparse auto-encoder run in SAELens's format, for ``sae_lens.SAE.load_from_disk``.

SAELens (6.x) reads a directory of two files:

- ``cfg.json``: ``architecture`` (``standard``, ``topk``, ``jumprelu``, …), ``d_in``, ``d_sae``,
  ``dtype``, ``device``, ``apply_b_dec_to_input``, ``normalize_activations``,
  ``reshape_activations``, ``metadata`` (its ``sae_lens_version`` at 6 or above, or the file is
  read as a pre-6 config), and per architecture ``k`` and ``rescale_acts_by_decoder_norm`` (topk);
- ``sae_weights.safetensors``: ``W_enc`` (d_in, d_sae), ``b_enc`` (d_sae), ``W_dec``
  (d_sae, d_in), ``b_dec`` (d_in), and ``threshold`` (d_sae) for jumprelu.

and computes, with ``x̃ = x − b_dec`` (``apply_b_dec_to_input``)::

    pre = x̃ @ W_enc + b_enc
    standard: z = relu(pre)       topk: z = relu of the k largest of pre, 0 elsewhere
    jumprelu: z = relu(pre) · [pre > threshold]
    decode:   x̂ = z @ W_dec + b_dec

A spec is exported when its code is its encoder's alone (``infer z by encoder``) and the encoder
is one of ``relu(pre)``, ``topk(relu(pre), k)``, ``batchtopk(relu(pre), k, …)`` or
``jumprelu(pre, θ, …)``, with ``pre`` any affine map of the input (``E @ (x - b_dec) + b_enc``
by the SAE specs' convention; lets are followed).  The affine maps of the encoder and of the
reconstruction ``sqerr(x, D @ z + b_dec)`` are read off numerically, in float64, by evaluating
them on the zero input and the unit inputs; so ``W_enc = Eᵀ``, ``W_dec = Dᵀ`` exactly for the
conventional spelling, whatever else it is written as.  A BatchTopK is saved as SAELens saves its
own, a JumpReLU whose every unit has the calibrated batch threshold.  ``normalize l2`` on the
input is folded into SAELens's ``constant_norm_rescale`` (which scales each input to norm
√d_in and the reconstruction back): the latents are the model's, the reconstruction is the
model's reconstruction of the unit-norm input times ‖x‖.

A transcoder's spec (``target y``: the decoder writes another activation than the encoder reads)
is exported as one of SAELens's transcoders, ``transcoder`` (a ReLU encoder) or
``jumprelu_transcoder``, with ``d_out``, the target's size: they compute ``pre = x @ W_enc + b_enc``
(no ``b_dec`` subtracted: it lives in the target's space) and ``ŷ = z @ W_dec + b_dec``; SAELens has
no TopK transcoder, so a TopK transcoder is refused.  ``normalize l2`` on its input becomes
constant_norm_rescale of the input alone (SAELens does not rescale a transcoder's output).

Before anything is written the export is checked: encode and decode are recomputed from the
bytes about to be written, the way SAELens computes them, and compared with the model on
random inputs; a difference refuses the export.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from energydsl._version import __version__
from energydsl.atomic import atomic_write
from energydsl.errors import RunError
from energydsl.expr.compiler import Env
from energydsl.expr.functions import ELEMENTWISE
from energydsl.lang import spec as S
from energydsl.model import EnergyModel
from energydsl.runs.directory import load_run

GATE_TENSORS = ("b_gate", "r_mag", "b_mag")
CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
SAELENS_FORMAT = "6.0.0"  # the config layout written (SAELens reads older ones through a converter)
CHECK_SAMPLES = 512  # random inputs the export is checked on
# SAELens's transcoders by their activation (it has no TopK or gated transcoder)
TRANSCODERS = {"standard": "transcoder", "jumprelu": "jumprelu_transcoder"}
TOLERANCE = 1e-5  # relative to the scale of the compared values


@dataclass
class SaelensSAE:
    """What SAELens needs: its architecture, its tensors (SAELens's names and layouts) and
    the settings of ``cfg.json``."""

    architecture: str  # standard | topk | jumprelu | gated, or transcoder | jumprelu_transcoder
    W_enc: torch.Tensor  # (d_in, d_sae)
    b_enc: torch.Tensor  # (d_sae,)
    W_dec: torch.Tensor  # (d_sae, d_in)
    b_dec: torch.Tensor  # (d_in,)
    threshold: torch.Tensor | None = None  # (d_sae,), jumprelu
    k: int | None = None  # topk
    gate: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # gated: b_gate, r_mag, b_mag (d_sae,)
    normalize_activations: str = "none"  # or constant_norm_rescale
    metadata: dict = field(default_factory=dict)

    def tensors(self) -> dict[str, torch.Tensor]:
        named = {"W_enc": self.W_enc, "b_enc": self.b_enc, "W_dec": self.W_dec, "b_dec": self.b_dec}
        if self.gate is not None:  # a gated SAE has no b_enc: its gate and its magnitudes have their own biases
            del named["b_enc"]
            named.update(zip(GATE_TENSORS, self.gate))
        if self.threshold is not None:
            named["threshold"] = self.threshold
        return {name: t.detach().to(torch.float32).contiguous() for name, t in named.items()}

    @property
    def transcoder(self) -> bool:
        """Whether the decoder writes another activation than the encoder reads (W_dec is (d_sae, d_out))."""
        return self.architecture in TRANSCODERS.values()

    @property
    def activation(self) -> str:
        """The encoder's activation, as an SAE of that architecture computes it: standard, topk, jumprelu, gated."""
        return {name: activation for activation, name in TRANSCODERS.items()}.get(self.architecture, self.architecture)

    def config(self) -> dict:
        d_in, (d_sae, d_out) = self.W_enc.shape[0], self.W_dec.shape
        cfg = {"architecture": self.architecture, "d_in": d_in, "d_sae": d_sae, "dtype": "float32",
               "device": "cpu", "apply_b_dec_to_input": not self.transcoder,
               "normalize_activations": self.normalize_activations, "reshape_activations": "none",
               "metadata": {"sae_lens_version": SAELENS_FORMAT, **self.metadata}}  # fmt: skip
        if self.transcoder:
            cfg["d_out"] = d_out
        if self.architecture == "topk":
            cfg.update(k=self.k, rescale_acts_by_decoder_norm=False)
        return cfg


# ---------------------------------------------------------------- SAELens's forward pass, in plain torch


def saelens_encode(sae: SaelensSAE, x: torch.Tensor) -> torch.Tensor:
    """The latents SAELens computes from ``x`` (its ``encode``)."""
    pre = pre_activation(sae, x)
    if sae.activation == "standard":
        return pre.relu()
    if sae.activation == "jumprelu":
        return pre.relu() * (pre > sae.threshold)
    if sae.architecture == "topk":
        top = pre.topk(sae.k, dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())
    if sae.architecture == "gated":
        _, r_mag, b_mag = sae.gate
        magnitude = (_rescaled(sae, x) - sae.b_dec) @ (sae.W_enc * r_mag.exp()) + b_mag
        return (pre > 0).to(pre.dtype) * magnitude.relu()
    raise ValueError(f"unknown architecture {sae.architecture!r}")


def pre_activation(sae: SaelensSAE, x: torch.Tensor) -> torch.Tensor:
    """The pre-activation (a gated SAE's: its gate's); a transcoder's b_dec is not the input's to subtract."""
    bias = sae.gate[0] if sae.gate is not None else sae.b_enc
    return (_rescaled(sae, x) - (0.0 if sae.transcoder else sae.b_dec)) @ sae.W_enc + bias


def saelens_decode(sae: SaelensSAE, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """SAELens's ``decode`` of ``z``, the latents of ``x`` (constant_norm_rescale scales an SAE's
    reconstruction back by the norm of the input just encoded, not a transcoder's)."""
    out = z @ sae.W_dec + sae.b_dec
    rescaled = sae.normalize_activations == "constant_norm_rescale" and not sae.transcoder
    return out / _norm_coefficient(sae, x) if rescaled else out


def _rescaled(sae: SaelensSAE, x: torch.Tensor) -> torch.Tensor:
    return x * _norm_coefficient(sae, x) if sae.normalize_activations == "constant_norm_rescale" else x


def _norm_coefficient(sae: SaelensSAE, x: torch.Tensor) -> torch.Tensor:
    return sae.W_enc.shape[0] ** 0.5 / x.norm(dim=-1, keepdim=True)


# ---------------------------------------------------------------- export


def export_saelens(run_directory: str | Path, out_directory: str | Path, *, overwrite: bool = False) -> Path:
    """Write the run's SAE where ``sae_lens.SAE.load_from_disk(out_directory)`` loads it.

    Refuses (:class:`RunError`, one line) a spec SAELens cannot compute, an output directory
    that holds files (unless ``overwrite``), and an export whose recomputed encode or decode
    differs from the model.  Returns the output directory.
    """
    run_directory, out = Path(run_directory), Path(out_directory)
    model = load_run(run_directory)
    if out.exists() and not out.is_dir():
        raise RunError(f"{out}: exists and is not a directory")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise RunError(f"{out}: exists and is not empty (--force, or overwrite=True, replaces its "
                       f"{CFG_FILE} and {WEIGHTS_FILE})")
    try:
        sae = to_saelens(model)
    except RunError as error:
        raise RunError(f"{run_directory}: cannot export to SAELens: {error}") from None
    sae.metadata.update(exported_from=f"energydsl {__version__}", spec=model.name)
    weights = save_safetensors(sae.tensors(), metadata={"format": "pt"})
    config = json.dumps(sae.config(), indent=2, sort_keys=True) + "\n"
    written = from_bytes(weights, config)
    try:
        check_against_model(model, written)
    except RunError as error:
        raise RunError(f"{run_directory}: the SAELens export differs from the model: {error}") from None
    atomic_write(out / WEIGHTS_FILE, weights)
    atomic_write(out / CFG_FILE, config.encode())
    return out


def from_bytes(weights: bytes, config: str) -> SaelensSAE:
    """The SAE as SAELens reads it from the bytes of its weights file and the text of its cfg.json."""
    tensors, cfg = load_safetensors(weights), json.loads(config)
    gate = tuple(tensors[name] for name in GATE_TENSORS) if cfg["architecture"] == "gated" else None
    return SaelensSAE(cfg["architecture"], tensors["W_enc"], tensors.get("b_enc"), tensors["W_dec"], tensors["b_dec"],
                      tensors.get("threshold"), cfg.get("k"), gate, cfg["normalize_activations"], cfg["metadata"])  # fmt: skip


def to_saelens(model: EnergyModel) -> SaelensSAE:
    """The model's SAE in SAELens's terms (float64 tensors), or a :class:`RunError` naming what
    SAELens has no equivalent for."""
    program = model.program
    if [method.kind for method in program.methods] != ["encoder"]:
        methods = " then ".join(str(method) for method in program.methods)
        raise RunError(f"'infer z by {methods}': SAELens computes the code by its encoder alone (infer z by encoder)")
    if len(program.input.shape) != 1 or len(program.latent.shape) != 1:
        raise RunError("SAELens's SAEs map a vector input to a vector of latents")
    if program.normalize not in (None, "l2"):
        raise RunError(f"'normalize {program.normalize}' on the input has no SAELens equivalent")
    probe = _Probe(model)
    activation = _recognise(probe, program.spec.encoders[0].value)
    W_enc, b_enc_raw = probe.affine(activation.pre, "the encoder's pre-activation")
    W_dec, b_dec = _decoder(probe)
    if program.target is not None:
        return _transcoder(program, activation, W_enc, b_enc_raw, W_dec, b_dec)
    sae = SaelensSAE(activation.architecture, W_enc, b_enc_raw + b_dec @ W_enc, W_dec, b_dec,
                     activation.threshold, activation.k)  # fmt: skip
    if activation.magnitude is not None:
        sae.gate = _gate(probe, sae, activation.magnitude)
    if program.normalize == "l2":
        _fold_l2_normalisation(sae)
    return sae


def _transcoder(program, activation: _Activation, W_enc, b_enc, W_dec, b_dec) -> SaelensSAE:
    """A transcoder's export: its encoder reads the input as it is (no b_dec to subtract, SAELens's
    b_enc is the model's), its decoder writes the target."""
    if activation.architecture not in TRANSCODERS:
        raise RunError(f"target '{program.target.name}': SAELens's transcoders have a relu or a jumprelu encoder "
                       f"({', '.join(TRANSCODERS.values())}), not {activation.architecture}")  # fmt: skip
    sae = SaelensSAE(TRANSCODERS[activation.architecture], W_enc, b_enc, W_dec, b_dec, activation.threshold)
    if program.normalize == "l2":  # the model reads x/‖x‖, SAELens √d·x/‖x‖; the output is not rescaled
        sae.W_enc = sae.W_enc / sae.W_enc.shape[0] ** 0.5
        sae.normalize_activations = "constant_norm_rescale"
    return sae


def _gate(probe: _Probe, sae: SaelensSAE, magnitude: S.Expr) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(b_gate, r_mag, b_mag) of a gated encoder whose gate's pre-activation gave ``sae``: SAELens's
    magnitude path shares the gate's directions, each unit's scaled by exp(r_mag)."""
    W_mag, c_mag = probe.affine(magnitude, "the gated encoder's magnitude")
    norms = (sae.W_enc**2).sum(dim=0)
    scale = (W_mag * sae.W_enc).sum(dim=0) / norms.clamp_min(1e-300)
    if not bool((scale > 0).all()) or not torch.allclose(W_mag, sae.W_enc * scale, rtol=1e-9, atol=1e-12):
        raise RunError(f"the magnitude path {probe.text(magnitude)} does not share the gate's directions, each "
                       "scaled by a positive factor, as SAELens's gated SAE does")  # fmt: skip
    b_gate = sae.b_enc
    sae.b_enc = None
    return b_gate, scale.log(), c_mag + sae.b_dec @ W_mag


def _fold_l2_normalisation(sae: SaelensSAE) -> None:
    """The model reads x/‖x‖; SAELens's constant_norm_rescale reads √d·x/‖x‖ and divides the
    reconstruction by √d/‖x‖.  So the encoder's weights shrink by √d, the decoder's grow by √d
    (b_enc, computed from the shrunk W_enc and the grown b_dec, is unchanged)."""
    root_d = sae.W_enc.shape[0] ** 0.5
    sae.W_enc, sae.W_dec, sae.b_dec = sae.W_enc / root_d, sae.W_dec * root_d, sae.b_dec * root_d
    sae.normalize_activations = "constant_norm_rescale"


# ---------------------------------------------------------------- recognising the encoder


@dataclass
class _Activation:
    architecture: str
    pre: S.Expr  # the pre-activation, affine in the input (a gated encoder's: its gate's)
    k: int | None = None
    threshold: torch.Tensor | None = None
    magnitude: S.Expr | None = None  # a gated encoder's magnitude pre-activation


def _recognise(probe: _Probe, node: S.Expr) -> _Activation:
    """Which SAELens activation the encoder expression is (lets followed)."""
    node = probe.resolve(node)
    gated = _gated(probe, node)
    if gated is not None:
        return gated
    name = node.func if isinstance(node, S.Call) else _describe(node)
    if not isinstance(node, S.Call) or node.func not in ("relu", "topk", "batchtopk", "jumprelu"):
        raise RunError(f"encoder z = {probe.text(node)}: '{name}' is not an activation SAELens has "
                       "(relu, topk, batchtopk, jumprelu, step(gate) * relu(magnitude))")  # fmt: skip
    inner = _without_relu(probe, node.args[0]) if node.args else None
    if node.func == "relu" and len(node.args) == 1:
        if isinstance(inner, S.Call) and inner.func in ("topk", "batchtopk", "jumprelu"):
            return _recognise(probe, inner)  # relu(topk(pre, k)) and the like: rectified already
        return _Activation("standard", node.args[0])
    if node.func == "topk" and len(node.args) == 2:
        k = probe.integer(node.args[1], "k")
        if not 1 <= k <= probe.units:
            raise RunError(f"topk(..., k = {k}) with {probe.units} units")
        return _Activation("topk", inner, k=k)
    if node.func == "batchtopk" and len(node.args) >= 2:
        return _Activation("jumprelu", inner, threshold=_batch_threshold(probe, node))
    if node.func == "jumprelu" and len(node.args) >= 2:
        return _Activation("jumprelu", inner, threshold=_unit_threshold(probe, node.args[1]))
    raise RunError(f"encoder z = {probe.text(node)}: unexpected arguments to {node.func}(...)")


def _gated(probe: _Probe, node: S.Expr) -> _Activation | None:
    """``step(gate) * relu(magnitude)`` (either order): a gated encoder."""
    if not (isinstance(node, S.BinOp) and node.op == "*"):
        return None
    sides = [probe.resolve(node.left), probe.resolve(node.right)]
    steps = [side for side in sides if isinstance(side, S.Call) and side.func == "step" and len(side.args) == 1]
    relus = [side for side in sides if isinstance(side, S.Call) and side.func == "relu" and len(side.args) == 1]
    if len(steps) != 1 or len(relus) != 1:
        return None
    return _Activation("gated", steps[0].args[0], magnitude=relus[0].args[0])


def _without_relu(probe: _Probe, node: S.Expr) -> S.Expr:
    """topk(relu(pre), k) and topk(pre, k) select alike once the values are rectified."""
    node = probe.resolve(node)
    return node.args[0] if isinstance(node, S.Call) and node.func == "relu" and len(node.args) == 1 else node


def _unit_threshold(probe: _Probe, node: S.Expr) -> torch.Tensor:
    theta = probe.constant_tensor(node, "the JumpReLU threshold").expand(probe.units).clone()
    if (theta < 0).any():
        raise RunError("a negative JumpReLU threshold passes negative pre-activations, SAELens's does not")
    return theta


def _batch_threshold(probe: _Probe, node: S.Call) -> torch.Tensor:
    """BatchTopK's inference threshold, the running threshold its state slot keeps (the encoder's only
    batchtopk: the first one declared)."""
    found = [value for name, value in probe.model.state.items() if name.startswith("batchtopk_threshold")]
    if len(found) != 1:
        raise RunError("batchtopk(...): SAELens's JumpReLU takes the threshold of one batchtopk, "
                       f"this run holds {len(found)}")  # fmt: skip
    return found[0].detach().double().expand(probe.units).clone()


def _describe(node: S.Expr) -> str:
    return {"binop": lambda: node.op, "name": lambda: node.id}.get(node.kind, lambda: node.kind)()


def _decoder(probe: _Probe) -> tuple[torch.Tensor, torch.Tensor]:
    """(W_dec, b_dec) of the reconstruction term's estimate R(z) (a matryoshka's: its whole
    dictionary's), R affine in z."""
    term = probe.model.program.reconstruction
    if term is None:
        raise RunError("no reconstruction of the input, such as sqerr(x, D @ z + b_dec), to decode the latents")
    return probe.affine_in_latent(lambda env: term.reconstruction(env)[1])


# ---------------------------------------------------------------- reading affine maps off the model


class _Probe:
    """Evaluates parts of the model's expressions in float64 on inputs of our choosing."""

    def __init__(self, model: EnergyModel):
        self.model, self.program = model, model.program
        self.lets = {decl.name.name: decl.value for decl in self.program.spec.lets}
        self.d = self.program.input.shape[0]
        self.units = self.program.latent.shape[0]

    def text(self, node: S.Expr) -> str:
        """The expression as written in the spec."""
        lines = self.program.spec.source.split("\n")
        span = node.span
        if span.line == span.end_line:
            return lines[span.line - 1][span.column - 1 : span.end_column - 1]
        return lines[span.line - 1][span.column - 1 :].strip() + " …"

    def resolve(self, node: S.Expr) -> S.Expr:
        while isinstance(node, S.Name) and node.id in self.lets:
            node = self.lets[node.id]
        return node

    def env(self, x: torch.Tensor, z: torch.Tensor | None = None) -> Env:
        tensors = {name: p.detach().double() for name, p in self.model.params.items()}
        tensors.update({self.program.input.name: x, "batch_size": x.shape[0], "reference": x})
        target = self.program.target
        if target is not None:  # read by the reconstruction term, whose estimate alone is exported
            tensors[target.name] = x.new_zeros((x.shape[0],) + target.shape)
        if z is not None:
            tensors[self.program.latent.name] = z
        return Env(tensors)

    def evaluate(self, node: S.Expr, env: Env):
        """The value of an expression: numbers, constants, parameters, the input, lets,
        arithmetic, ``@``, ``.T`` and the elementwise functions."""
        if node.kind == "number":
            return node.value
        if node.kind == "name":
            return self._name(node, env)
        if node.kind == "neg":
            return -self.evaluate(node.operand, env)
        if node.kind == "transpose":
            return self.evaluate(node.operand, env).T
        if node.kind == "binop":
            return self._binop(node, env)
        if node.kind == "call" and node.func in ELEMENTWISE and len(node.args) == 1 and not node.kwargs:
            value = self.evaluate(node.args[0], env)
            return ELEMENTWISE[node.func](torch.as_tensor(value, dtype=torch.float64))
        raise RunError(f"'{self.text(node)}' is not an expression the SAELens export can evaluate")

    def _name(self, node: S.Name, env: Env):
        if node.id in self.program.lets:
            return self.program.lets[node.id](env)
        if node.id in env.tensors:
            return env[node.id]
        if node.id in self.program.constants:
            return self.program.constants[node.id]
        raise RunError(f"'{node.id}' cannot be evaluated for the SAELens export")

    def _binop(self, node: S.BinOp, env: Env):
        left, right = self.evaluate(node.left, env), self.evaluate(node.right, env)
        if node.op == "@":  # a parameter matrix on the left; a batch of vectors on the right is (B, n)
            batched = isinstance(right, torch.Tensor) and right.dim() == 2 and _depends_on_sample(node.right, self)
            return right @ left.T if batched else left @ right
        return {"+": lambda: left + right, "-": lambda: left - right, "*": lambda: left * right,
                "/": lambda: left / right, "**": lambda: left**right}[node.op]()  # fmt: skip

    def integer(self, node: S.Expr, what: str) -> int:
        value = self.evaluate(node, self.env(torch.zeros(1, self.d, dtype=torch.float64)))
        if isinstance(value, torch.Tensor) or value != int(value):
            raise RunError(f"{what} = {self.text(node)} is not a whole number")
        return int(value)

    def constant_tensor(self, node: S.Expr, what: str) -> torch.Tensor:
        value = torch.as_tensor(self.evaluate(node, self.env(torch.zeros(1, self.d, dtype=torch.float64))),
                                dtype=torch.float64)  # fmt: skip
        if _depends_on_sample(node, self) or value.numel() not in (1, self.units):
            raise RunError(f"{what} {self.text(node)} must be a number or one value per unit")
        return value.reshape(-1)

    def affine(self, node: S.Expr, what: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(W, c) with f(x) = x @ W + c for the expression f of the input, checked on random inputs."""
        return self._affine(lambda x: self.evaluate(node, self.env(x)), self.d, what, self.text(node))

    def affine_in_latent(self, closure) -> tuple[torch.Tensor, torch.Tensor]:
        """(W, c) with R(z) = z @ W + c for the reconstruction closure R of the latent."""
        x = torch.zeros(1, self.d, dtype=torch.float64)

        def reconstruction(z):
            return closure(self.env(x.expand(z.shape[0], -1), z)).reshape(z.shape[0], -1)

        return self._affine(reconstruction, self.units, "the reconstruction", "sqerr(x, ...)")

    @staticmethod
    def _affine(f, size: int, what: str, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        basis = torch.cat([torch.zeros(1, size, dtype=torch.float64), torch.eye(size, dtype=torch.float64)])
        values = torch.as_tensor(f(basis), dtype=torch.float64)
        offset, W = values[0], values[1:] - values[0]
        probes = torch.randn(8, size, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        expected = probes @ W + offset
        error = (torch.as_tensor(f(probes)) - expected).abs().max()
        if not error <= 1e-9 * (1 + expected.abs().max()):
            raise RunError(f"{what} {text} is not an affine map, as SAELens's is")
        return W, offset


def _depends_on_sample(node: S.Expr, probe: _Probe) -> bool:
    """Whether the expression reads the input or the latent (following lets)."""
    node = probe.resolve(node)
    if node.kind == "name":
        target = probe.program.target
        return node.id in (probe.program.input.name, probe.program.latent.name, target and target.name)
    children = {"binop": lambda: (node.left, node.right), "neg": lambda: (node.operand,),
                "transpose": lambda: (node.operand,), "call": lambda: node.args}.get(node.kind, tuple)()  # fmt: skip
    return any(_depends_on_sample(child, probe) for child in children)


# ---------------------------------------------------------------- the check


def check_against_model(model: EnergyModel, sae: SaelensSAE) -> None:
    """Encode and decode random inputs both ways; a :class:`RunError` saying where they differ.

    Samples whose code SAELens and the model could tell apart only by rounding — a k-th and a
    (k+1)-th pre-activation, or a pre-activation and its threshold, closer than the tolerance —
    are not held against the export.
    """
    x = _check_inputs(model, sae)
    with torch.no_grad():
        z_model = model.infer(x).reshape(x.shape[0], -1)
        z_sae = saelens_encode(sae, x)
        scale = 1.0 + z_model.abs().max()
        differs = ((z_model - z_sae).abs() > TOLERANCE * scale).any(dim=1) & ~_ambiguous(sae, x, scale)
        if differs.any():
            worst = float((z_model - z_sae)[differs].abs().max())
            raise RunError(f"encode: {int(differs.sum())} of {x.shape[0]} random inputs get other latents "
                           f"(largest difference {worst:.3g})")  # fmt: skip
        recon_model = _model_reconstruction(model, x, z_model)
        recon_sae = saelens_decode(sae, z_model, x)
        gap = float((recon_model - recon_sae).abs().max())
        if not gap <= TOLERANCE * (1.0 + float(recon_model.abs().max())):
            raise RunError(f"decode: the reconstructions differ by up to {gap:.3g}")


def _check_inputs(model: EnergyModel, sae: SaelensSAE) -> torch.Tensor:
    """Half dictionary-like inputs (b_dec plus a few decoder rows, so units fire), half noise."""
    generator = torch.Generator().manual_seed(0)
    n, units, d_in = CHECK_SAMPLES // 2, sae.W_dec.shape[0], sae.W_enc.shape[0]
    active = (torch.rand(n, units, generator=generator) < min(1.0, 8 / units)).float()
    codes = active * torch.rand(n, units, generator=generator) * 2
    scale = 1.0 if sae.normalize_activations == "none" else d_in**-0.5
    # a transcoder's decoder writes another space than the input's: its inputs go along the encoder's rows
    atoms, bias = (sae.W_enc.T, 0.0) if sae.transcoder else (sae.W_dec, sae.b_dec)
    dictionary_like = (bias + codes @ atoms) * scale
    rms = float(dictionary_like.pow(2).mean().sqrt()) or 1.0
    noise = torch.randn(CHECK_SAMPLES - n, d_in, generator=generator) * rms
    return torch.cat([dictionary_like, noise]).to(model.dtype)


def _ambiguous(sae: SaelensSAE, x: torch.Tensor, scale) -> torch.Tensor:
    """Samples whose code turns on a comparison closer than the tolerance."""
    pre = pre_activation(sae, x)
    margin = TOLERANCE * scale
    if sae.architecture == "topk" and sae.k < pre.shape[1]:
        top = pre.topk(sae.k + 1, dim=1).values
        return (top[:, -2] - top[:, -1]).abs() <= margin
    if sae.activation == "jumprelu":
        return ((pre - sae.threshold).abs() <= margin).any(dim=1)
    if sae.architecture == "gated":
        return (pre.abs() <= margin).any(dim=1)
    return torch.zeros(x.shape[0], dtype=torch.bool)


def _model_reconstruction(model: EnergyModel, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """The model's reconstruction of x (or a transcoder's target) from z, at the input's scale."""
    xp, target = model.preprocess(x), model.program.target
    unread = None if target is None else xp.new_zeros((x.shape[0],) + target.shape)  # the estimate does not read it
    recon = model.program.reconstruction.reconstruction(model.env(xp, z, target=unread))[1].reshape(x.shape[0], -1)
    if model.program.normalize == "l2" and target is None:
        recon = recon * x.norm(dim=1, keepdim=True)
    return recon
