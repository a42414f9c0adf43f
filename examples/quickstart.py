"""A tour of the Python API on built-in data; runs in a few seconds.

    python examples/quickstart.py
"""

import tempfile

import torch

import energydsl

SPEC = """
model quickstart
data synthetic(dim = 20, atoms = 24, k = 3, count = 2000)

const lam = 0.1

input  x[20]
latent z[24]

param W[20, 24]  init samples(x)  constrain col_norm == 1

energy
  recon  : 0.5 * sqerr(x, W @ z)
  sparse : lam * l1(z)

infer z by fista(steps = 300, tol = 1e-5)

train
  optimizer sgd(lr = 0.5, momentum = 0.9)
  batch 32
  epochs 4
"""


def matched_atoms(learned: torch.Tensor, true: torch.Tensor) -> float:
    """Share of the true atoms that some learned atom matches with |cosine| >= 0.95."""
    cosine = (learned / learned.norm(dim=0)).T @ (true / true.norm(dim=0))
    return (cosine.abs().max(dim=0).values >= 0.95).float().mean().item()


def main() -> None:
    # A spec is a file or its text; constants can be overridden when loading.
    model = energydsl.load(SPEC, set={"lam": 0.1})
    data = model.dataset
    x = data.x_test[:8]

    z = model.infer(x)  # sparse codes by FISTA, (8, 24)
    print("energy per sample before training:", model.energy(x, z).detach().numpy().round(3))
    print("terms:", {name: round(t.mean().item(), 4) for name, t in model.terms(x, z).items()})

    with tempfile.TemporaryDirectory() as out:
        history = energydsl.train(model, out=out)  # the generic loop; writes a run directory
        print("held-out energy by epoch:", [m["energy"] for m in history])
        trained = energydsl.load_run(out)  # back from model.safetensors + model.json alone
        true = data.extras["dictionary"]
        print(f"true atoms recovered: {matched_atoms(trained.params['W'].detach(), true):.0%}")


if __name__ == "__main__":
    main()
