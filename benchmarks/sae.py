"""Sparse auto-encoders side by side with SAELens, on SAELens's own synthetic-data suite.

For TopK, BatchTopK, JumpReLU and Matryoshka(-BatchTopK), and for each seed:

1. **One world.**  A scaled-down SynthSAEBench-16k built with ``sae_lens.synthetic``
   (``SyntheticModel``): ground-truth unit feature vectors in superposition
   (orthogonalised), Zipfian firing, a feature hierarchy with mutually exclusive children
   and compensated probabilities, low-rank correlated firing, magnitudes falling linearly
   from 5 to 4 with folded-normal spread.  One fixed training set of ``--train`` samples
   and one held-out set of ``--test`` samples (with their true feature activations) are
   drawn once and cached, so both libraries see exactly the same samples.
2. **SAELens.**  Its SAE of the architecture (width = the number of true features, k = the
   world's true L0 rounded), trained by its own ``SAETrainer`` on the fixed samples
   (``--epochs`` shuffled passes, the settings of ``sae_lens.synthetic.train_toy_sae``:
   Adam, constant learning rate, no autocast, no evaluations during training).
3. **energydsl.**  ``specs/sae_<arch>.energy`` trained through the Python API on the same
   samples saved as an .npz, with ``units``, ``k`` and ``epochs`` set (``batch`` and ``lr``
   too where the spec declares them).  An architecture whose spec is missing is skipped
   with a message.
4. **One evaluation.**  Both models are scored by SAELens's own metric code on the held-out
   set, in batches of the training batch (as ``eval_sae_on_synthetic_data`` does): MCC of
   the decoder to the true features, the latents' mean F1 as detectors of their
   best-matching true feature, explained variance, L0, dead latents (never firing on the
   held-out set).  Training throughput is samples per second of the training steps after
   the first (data generation, evaluation and the first step's one-time set-up excluded).

Prints a markdown table (mean ± std over seeds) and writes ``benchmarks/results/sae.json``.
Throughput on a machine shared with other work varies several-fold from run to run: compare
samples per second from an otherwise idle machine (each seed trains SAELens and energydsl back
to back, so that they at least see the same load).
Needs sae-lens (the ``bench`` extra).  Run by hand, e.g.::

    python benchmarks/sae.py                       # the defaults below, 3 seeds
    python benchmarks/sae.py --quick               # a smoke run (tiny world, 1 seed)
    python benchmarks/sae.py --libraries saelens --archs topk,jumprelu
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # SAELens's progress bars would flood the output

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "specs"
RESULTS = ROOT / "benchmarks" / "results" / "sae.json"
ARCHITECTURES = ("topk", "batchtopk", "jumprelu", "matryoshka")
LIBRARIES = ("saelens", "energydsl")
METRICS = ("mcc", "f1", "explained_variance", "l0", "dead", "samples_per_s")


# ---------------------------------------------------------------- the world


@dataclass(frozen=True)
class WorldConfig:
    """A SynthSAEBench-16k scaled down to train on a laptop CPU.

    SynthSAEBench-16k: 16,384 features in 768 dimensions, Zipf(0.5) firing from 0.4 to 5e-4,
    128 hierarchy roots (branching 4, depth 3, all children mutually exclusive, compensated
    probabilities), low-rank correlation (rank 25, scale 0.1), 100 orthogonalisation steps,
    mean magnitudes 5 → 4, folded-normal(0.5, 0.5) spread; true L0 about 34.  At a few
    thousand features a depth-3 tree saturates the compensated probabilities, so the tree
    here is depth 2 with a root per 64 features (a third of the features in the hierarchy).
    """

    features: int = 1024
    dim: int = 128
    p_max: float = 0.4
    p_min: float = 5e-3
    zipf_exponent: float = 0.5
    branching: int = 4
    depth: int = 2
    correlation_rank: int = 25
    correlation_scale: float = 0.1
    orthogonalization_steps: int = 100

    @property
    def roots(self) -> int:
        return max(1, self.features // 64)

    def saelens(self, seed: int):
        from sae_lens.synthetic import (
            FoldedNormalMagnitudeConfig,
            HierarchyConfig,
            LinearMagnitudeConfig,
            LowRankCorrelationConfig,
            OrthogonalizationConfig,
            SyntheticModelConfig,
            ZipfianFiringProbabilityConfig,
        )

        return SyntheticModelConfig(
            num_features=self.features,
            hidden_dim=self.dim,
            firing_probability=ZipfianFiringProbabilityConfig(exponent=self.zipf_exponent, max_prob=self.p_max,
                                                              min_prob=self.p_min),  # fmt: skip
            hierarchy=HierarchyConfig(total_root_nodes=self.roots, branching_factor=self.branching,
                                      max_depth=self.depth, mutually_exclusive_portion=1.0,
                                      compensate_probabilities=True),  # fmt: skip
            orthogonalization=OrthogonalizationConfig(num_steps=self.orthogonalization_steps, lr=3e-4),
            correlation=LowRankCorrelationConfig(rank=self.correlation_rank, correlation_scale=self.correlation_scale),
            mean_firing_magnitudes=LinearMagnitudeConfig(start=5.0, end=4.0),
            std_firing_magnitudes=FoldedNormalMagnitudeConfig(mean=0.5, std=0.5),
            seed=seed,
        )


@dataclass
class GroundTruth:
    """What the held-out set really is: the true feature vectors (features, dim) and each
    held-out sample's true feature activations (test samples, features)."""

    features: torch.Tensor
    test_activations: torch.Tensor


@dataclass
class World:
    x_train: torch.Tensor
    x_test: torch.Tensor
    truth: GroundTruth

    @property
    def true_l0(self) -> float:
        return float((self.truth.test_activations > 0).sum(1).double().mean())


def build_world(config: WorldConfig, train: int, test: int, seed: int, workdir: Path) -> World:
    """The world of ``seed``: drawn once with SAELens's generator, then read from ``workdir``."""
    key = hashlib.sha1(json.dumps([asdict(config), train, test, seed]).encode()).hexdigest()[:12]
    cached = workdir / f"world-{key}.npz"
    if not cached.exists():
        from sae_lens.synthetic import SyntheticModel

        started = time.perf_counter()
        with open(os.devnull, "w") as quiet, contextlib.redirect_stderr(quiet):  # its orthogonalisation's bar
            model = SyntheticModel(config.saelens(seed))
        x_train = torch.cat([model.sample(chunk) for chunk in _chunks(train)])
        x_test, f_test = model.sample_with_features(test)
        workdir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=workdir, suffix=".npz", delete=False) as handle:
            np.savez(handle, x=x_train.numpy(), x_test=x_test.numpy(), f_test=f_test.numpy(),
                     features=model.feature_dict.feature_vectors.detach().numpy())  # fmt: skip
        os.replace(handle.name, cached)
        print(f"  world seed {seed}: generated in {time.perf_counter() - started:.0f} s ({cached})", file=sys.stderr)
    arrays = np.load(cached)
    truth = GroundTruth(torch.from_numpy(arrays["features"]), torch.from_numpy(arrays["f_test"]))
    return World(torch.from_numpy(arrays["x"]), torch.from_numpy(arrays["x_test"]), truth)


def _chunks(total: int, size: int = 65536) -> list[int]:
    return [min(size, total - start) for start in range(0, total, size)]


# ---------------------------------------------------------------- one evaluation for both


@torch.no_grad()
def recovery_metrics(encode, decode, decoder_rows: torch.Tensor, x_test: torch.Tensor, truth: GroundTruth,
                     batch: int) -> dict:  # fmt: skip
    """SAELens's synthetic-data metrics of a trained SAE on the fixed held-out set.

    ``encode(x) -> latents``, ``decode(latents, x) -> reconstruction``, ``decoder_rows``
    (latents, dim): one latent's decoder direction per row.  Batches of ``batch`` samples, as
    ``sae_lens.synthetic.eval_sae_on_synthetic_data`` feeds them (BatchTopK's encoder ranks
    over the batch it is given).
    """
    from sae_lens.evals import ExplainedVarianceCalculator
    from sae_lens.synthetic import (
        ClassificationMetricsCalculator,
        DeadLatentsCalculator,
        L0Calculator,
        feature_uniqueness,
        mean_correlation_coefficient,
    )

    decoder_rows = decoder_rows.detach().float()
    l0, dead = L0Calculator(), DeadLatentsCalculator(decoder_rows.shape[0])
    variance = ExplainedVarianceCalculator()
    detection = ClassificationMetricsCalculator(decoder_rows, truth.features)
    for x, true_acts in zip(x_test.split(batch), truth.test_activations.split(batch)):
        latents = encode(x)
        l0.add_batch(latents)
        dead.add_batch(latents)
        variance.add_batch(decode(latents, x), x)
        detection.add_batch(latents, true_acts)
    classification = detection.compute()
    return {
        "mcc": mean_correlation_coefficient(decoder_rows, truth.features),
        "f1": classification.f1_score,
        "precision": classification.precision,
        "recall": classification.recall,
        "explained_variance": variance.compute(),
        "l0": l0.compute(),
        "dead": dead.compute(),
        "uniqueness": feature_uniqueness(decoder_rows, truth.features),
    }


# ---------------------------------------------------------------- SAELens


@dataclass(frozen=True)
class TrainSettings:
    epochs: int = 1
    batch: int = 256
    lr: float = 1e-3
    dead_window: int = 200  # steps without firing before a latent counts as dead (auxiliary losses)
    matryoshka_levels: int = 4  # nested prefixes of width/2^(levels-1), ..., width/2, width


def saelens_config(arch: str, dim: int, width: int, k: int, settings: TrainSettings):
    """SAELens's training config for ``arch``: its defaults, with k (or target L0) = ``k``.

    JumpReLU aims at the same L0 through its quadratic L0 penalty (Gemma Scope 2's mode,
    ``target_l0``), so that every architecture is compared at the same sparsity.
    """
    import sae_lens as sl

    if arch == "topk":
        return sl.TopKTrainingSAEConfig(d_in=dim, d_sae=width, k=k)
    if arch == "batchtopk":
        return sl.BatchTopKTrainingSAEConfig(d_in=dim, d_sae=width, k=k)
    if arch == "jumprelu":
        return sl.JumpReLUTrainingSAEConfig(d_in=dim, d_sae=width, jumprelu_sparsity_loss_mode="quadratic",
                                            target_l0=float(k))  # fmt: skip
    if arch == "matryoshka":
        return sl.MatryoshkaBatchTopKTrainingSAEConfig(d_in=dim, d_sae=width, k=k,
                                                       matryoshka_widths=matryoshka_widths(width, settings))  # fmt: skip
    raise ValueError(f"unknown architecture {arch!r}")


def matryoshka_widths(width: int, settings: TrainSettings) -> list[int]:
    return sorted({max(1, width >> level) for level in range(settings.matryoshka_levels)})


class FixedSamples:
    """SAELens's data provider over the fixed training set: shuffled full batches, epoch
    after epoch (an infinite iterator, as its trainer expects)."""

    def __init__(self, x: torch.Tensor, batch: int, seed: int):
        self.x, self.batch = x, batch
        self.generator = torch.Generator().manual_seed(seed)
        self.pending: list[torch.Tensor] = []
        self.served = 0
        self.after_first_step: float | None = None  # when the second batch is asked for

    def __iter__(self):
        return self

    def __next__(self) -> torch.Tensor:
        self.served += 1
        if self.served == 2:
            self.after_first_step = time.perf_counter()
        if not self.pending:
            order = torch.randperm(self.x.shape[0], generator=self.generator)
            self.pending = list(order[: len(order) - len(order) % self.batch].split(self.batch))[::-1]
        return self.x[self.pending.pop()]


def train_saelens(arch: str, world: World, width: int, k: int, seed: int, settings: TrainSettings) -> dict:
    """Train SAELens's SAE of ``arch`` on the world's training set; its metrics and throughput."""
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.registry import get_sae_training_class
    from sae_lens.training.sae_trainer import SAETrainer

    config = saelens_config(arch, world.x_train.shape[1], width, k, settings)
    torch.manual_seed(seed)
    sae = get_sae_training_class(config.architecture())[0](config)
    steps = world.x_train.shape[0] // settings.batch * settings.epochs
    trainer_config = SAETrainerConfig(  # sae_lens.synthetic.train_toy_sae's settings
        n_checkpoints=0, checkpoint_path=None, save_final_checkpoint=False,
        total_training_samples=steps * settings.batch, device="cpu", autocast=False,
        lr=settings.lr, lr_end=settings.lr, lr_scheduler_name="constant", lr_warm_up_steps=0, lr_decay_steps=0,
        adam_beta1=0.9, adam_beta2=0.999, n_restart_cycles=1, train_batch_size_samples=settings.batch,
        dead_feature_window=settings.dead_window, feature_sampling_window=2000,
        logger=LoggingConfig(log_to_wandb=False), n_batches_for_norm_estimate=1,
    )  # fmt: skip
    samples = FixedSamples(world.x_train, settings.batch, seed)
    trainer = SAETrainer(cfg=trainer_config, sae=sae, data_provider=samples)
    started = time.perf_counter()
    trainer.fit()
    finished = time.perf_counter()
    metrics = recovery_metrics(sae.encode, lambda z, x: sae.decode(z), sae.W_dec, world.x_test, world.truth,
                               settings.batch)  # fmt: skip
    steady = (steps - 1) * settings.batch / (finished - samples.after_first_step)  # as TrainingClock counts
    result = {**metrics, "samples_per_s": steady, "train_seconds": finished - started}
    if arch in ("batchtopk", "matryoshka"):
        result["as_saved"] = _as_saved(sae, world, settings)
    return result


def _as_saved(sae, world: World, settings: TrainSettings) -> dict:
    """The metrics of the SAE as SAELens saves it for inference: a BatchTopK (and a Matryoshka
    BatchTopK) becomes a JumpReLU SAE with the learned batch threshold for every latent."""
    from sae_lens import SAE

    with tempfile.TemporaryDirectory() as directory:
        sae.save_inference_model(directory)
        saved = SAE.load_from_disk(directory)
    return recovery_metrics(saved.encode, lambda z, x: saved.decode(z), saved.W_dec, world.x_test, world.truth,
                            settings.batch)  # fmt: skip


# ---------------------------------------------------------------- energydsl


class SpecMissing(Exception):
    """The architecture's spec is not written yet."""


class TrainingClock:
    """Seconds spent in training steps after the first (the first pays for one-time set-up), up
    to each epoch's last step, so that the evaluation the loop runs after every epoch is left out."""

    def __init__(self):
        self.seconds, self.steps = 0.0, 0
        self.mark: float | None = None

    def on_step(self, done: int, total: int, energy: float) -> None:
        if self.mark is None:  # the end of the run's first step: the clock starts
            self.mark = time.perf_counter()
            return
        self.steps += 1
        if done == total:
            self.seconds += time.perf_counter() - self.mark

    def on_epoch(self, metrics: dict) -> None:
        self.mark = time.perf_counter()


def train_energydsl(arch: str, x_train: torch.Tensor, x_test: torch.Tensor, ground_truth: GroundTruth, width: int,
                    k: int, seed: int, *, settings: TrainSettings = TrainSettings(), specs: Path = SPECS,
                    workdir: Path = Path(tempfile.gettempdir()) / "energydsl-bench-sae") -> dict:  # fmt: skip
    """Train ``specs/sae_<arch>.energy`` on ``x_train`` (saved as an .npz) through the Python
    API; its metrics by SAELens's metric code on ``x_test``, and its throughput.

    The spec's conventions: ``input x``, ``latent z[units] >= 0``, ``param D[d, units]`` the
    decoder (SAELens's W_dec = Dᵀ), ``param b_dec[d]``, ``const units``, ``const k``,
    ``const epochs``.  Raises :class:`SpecMissing` when the spec does not exist.
    """
    import energydsl
    from energydsl.api import read_spec

    spec = specs / f"sae_{arch}.energy"
    if not spec.exists():
        raise SpecMissing(f"{spec} does not exist yet")
    declared = {decl.name.name for decl in read_spec(spec).consts}
    wanted = {"units": width, "k": k, "epochs": settings.epochs, "batch": settings.batch, "lr": settings.lr,
              "window": settings.dead_window * settings.batch}  # SAELens's dead window, in samples
    overrides = {name: value for name, value in wanted.items() if name in declared}
    for name in wanted.keys() - declared:
        print(f"  {spec.name} declares no const {name}: its own value is used, not {wanted[name]}", file=sys.stderr)
    data = _npz_of(x_train, x_test, workdir)
    model = energydsl.load(spec, set=overrides, data=f'file("{data}")', seed=seed)
    clock, started = TrainingClock(), time.perf_counter()
    history = energydsl.train(model, seed=seed, on_step=clock.on_step, on_epoch=clock.on_epoch)
    total_seconds = time.perf_counter() - started
    model.eval()
    decoder = model.params[model.program.roles.decoder].detach()
    recon_term = model.program.reconstruction

    def decode(z, x):  # the reconstruction term's estimate (a matryoshka's: the whole dictionary's)
        xp = model.preprocess(x)
        return recon_term.reconstruction(model.env(xp, z))[1].reshape(x.shape)

    metrics = recovery_metrics(model.infer, decode, decoder.T, x_test, ground_truth, settings.batch)
    batch = model.program.training.batch
    return {**metrics, "samples_per_s": clock.steps * batch / clock.seconds, "train_seconds": total_seconds,
            "epochs": len(history), "overrides": overrides, "batch": batch}  # fmt: skip


def _npz_of(x_train: torch.Tensor, x_test: torch.Tensor, workdir: Path) -> Path:
    """The samples as an .npz the ``file`` source reads (``x``, ``x_test``), written once."""
    digest = hashlib.sha1(x_train[:4096].numpy().tobytes() + str((x_train.shape, x_test.shape)).encode())
    path = workdir / f"samples-{digest.hexdigest()[:12]}.npz"
    if not path.exists():
        workdir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=workdir, suffix=".npz", delete=False) as handle:
            np.savez(handle, x=x_train.numpy(), x_test=x_test.numpy())
        os.replace(handle.name, path)
    return path


# ---------------------------------------------------------------- the table


def summarise(runs: list[dict]) -> dict:
    """Mean and standard deviation over seeds of each metric, per (architecture, library)."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for run in runs:
        groups.setdefault((run["arch"], run["library"]), []).append(run)
    summary = {}
    for (arch, library), members in groups.items():
        summary[f"{arch}/{library}"] = {metric: _mean_std([m[metric] for m in members]) for metric in METRICS}
        summary[f"{arch}/{library}"]["seeds"] = len(members)
    return summary


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def markdown_table(summary: dict) -> str:
    formats = {"mcc": ".3f", "f1": ".3f", "explained_variance": ".3f", "l0": ".1f", "dead": ".0f",
               "samples_per_s": ",.0f"}  # fmt: skip
    lines = ["| architecture | library | MCC | F1 | explained variance | L0 | dead | samples/s |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for key, row in summary.items():
        arch, library = key.split("/")
        cells = [f"{row[m][0]:{formats[m]}} ± {row[m][1]:{formats[m]}}" for m in METRICS]
        lines.append(f"| {arch} | {library} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=int, default=1024, help="true features = SAE width")
    parser.add_argument("--dim", type=int, default=128, help="activation dimension")
    parser.add_argument("--p-min", type=float, default=5e-3, help="the rarest feature's base firing probability")
    parser.add_argument("--train", type=int, default=524_288, help="training samples (one fixed set)")
    parser.add_argument("--test", type=int, default=16_384, help="held-out samples")
    parser.add_argument("--epochs", type=int, default=1, help="passes over the training set")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam's rate (SAELens's 3e-4 is for 100M+ samples)")
    parser.add_argument("--k", type=int, default=None, help="k / target L0 (default: the world's true L0, rounded)")
    parser.add_argument("--dead-window", type=int, default=200, help="SAELens's dead_feature_window, in steps")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--archs", default=",".join(ARCHITECTURES))
    parser.add_argument("--libraries", default=",".join(LIBRARIES))
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "energydsl-bench-sae",
                        help="where the worlds and the .npz files are cached")  # fmt: skip
    parser.add_argument("--specs", type=Path, default=SPECS, help="where sae_<arch>.energy are read from")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--quick", action="store_true", help="a smoke run: a tiny world, one seed")
    args = parser.parse_args()
    if args.quick:
        args.features, args.dim, args.train, args.test, args.seeds = 256, 32, 16_384, 2048, 1
    archs, libraries = args.archs.split(","), args.libraries.split(",")
    config = WorldConfig(features=args.features, dim=args.dim, p_min=args.p_min)
    settings = TrainSettings(epochs=args.epochs, batch=args.batch, lr=args.lr, dead_window=args.dead_window)
    runs, skipped = [], set()
    for seed in range(args.seeds):
        world = build_world(config, args.train, args.test, seed, args.workdir)
        k = args.k or max(1, round(world.true_l0))
        for arch in archs:
            for library in libraries:
                if (arch, library) in skipped:
                    continue
                try:
                    if library == "saelens":
                        result = train_saelens(arch, world, config.features, k, seed, settings)
                    else:
                        result = train_energydsl(arch, world.x_train, world.x_test, world.truth, config.features, k,
                                                 seed, settings=settings, specs=args.specs,
                                                 workdir=args.workdir)  # fmt: skip
                except SpecMissing as missing:
                    print(f"energydsl skipped for {arch}: {missing}", file=sys.stderr)
                    skipped.add((arch, library))
                    continue
                run = {"arch": arch, "library": library, "seed": seed, "k": k, "true_l0": world.true_l0, **result}
                runs.append(run)
                print(f"  {arch:10s} {library:9s} seed {seed}: MCC {run['mcc']:.3f}  F1 {run['f1']:.3f}  "
                      f"EV {run['explained_variance']:.3f}  L0 {run['l0']:.1f}  dead {run['dead']}  "
                      f"{run['samples_per_s']:,.0f} samples/s", file=sys.stderr)  # fmt: skip
    summary = summarise(runs)
    print(markdown_table(summary))
    report = {"world": {**asdict(config), "roots": config.roots, "train": args.train, "test": args.test},
              "settings": asdict(settings), "threads": torch.get_num_threads(), "summary": summary, "runs": runs}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=float) + "\n")


if __name__ == "__main__":
    main()
