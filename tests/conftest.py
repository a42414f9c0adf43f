"""Shared fixtures: small specs as source text, so tests need no files."""

import os

# One numba thread, as one torch thread below: once the lasso homotopy (numba, parallel over samples)
# has run, its idle workers spin, and every later torch operation in the process waits for a core
# (tests/solvers and tests/reporting took 60 s with numba's default 2 threads, 43 s with one).  The
# package's own immunity to this is issue 20's; numba reads the variable when it is first imported.
os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import energydsl  # noqa: E402

SPARSE_CODING = """
model sc
data synthetic(dim = 16, atoms = 24, count = 400, k = 2, seed = 3)
const lam = 0.1
input x[16]
latent z[24]
param W[16, 24] init samples(x) constrain col_norm == 1
energy
  recon  : 0.5 * sqerr(x, W @ z)
  sparse : lam * l1(z)
infer z by fista(steps = 300, tol = 1e-6)
train
  optimizer sgd(lr = 0.1, momentum = 0.9)
  batch 50
  epochs 2
"""

# Adam (optimizer state per parameter), several epochs of several steps: for resume and
# data-parallel tests, which compare whole training runs.
SPARSE_ADAM = """
model sparse_adam
data synthetic(dim = 16, atoms = 24, count = 600, k = 2, seed = 3)
const lam = 0.1
input x[16]
latent z[24]
param W[16, 24] init samples(x) constrain col_norm == 1
energy
  recon  : 0.5 * sqerr(x, W @ z)
  sparse : lam * l1(z)
infer z by fista(steps = 100, tol = 1e-5)
train
  optimizer adam(lr = 0.01)
  batch 20
  epochs 4
"""

DRSAE_SMALL = """
model drsae_small
data mnist(count = 512)
const lam = 0.01
const T = 3
const alpha = 0.5
input x[784] normalize l2
label y : 10 classes
latent z[32] >= 0
param D[784, 32] init samples(x) constrain col_norm <= 1
param E[32, 784] init alpha * D.T constrain row_norm <= 1.25 / (T - 1)
param S[32, 32] init I - alpha * D.T @ D
param b[32] init 0.001
param C[10, 32] init zeros constrain row_norm <= 5
encoder z = recurrent(T) { relu(E @ x + S @ z - b) }
energy
  recon  : 0.5 * sqerr(x, D @ z)
  sparse : lam * l1(z)
  class  : xent(C @ normalize(z), y)
infer z by encoder
train
  optimizer adam(lr = 1e-3)
  batch 64
  phase pretrain epochs 1 terms recon, sparse
  phase finetune epochs 1
"""


TREE_INHIBITION = """
data synthetic(dim = 8, atoms = 15, count = 40)
input x[8]
latent z[15]
graph T = tree(branching = 2, depth = 3)
param W[8, 15]
param S[15, 15] init tree_inhibition(T) learn fixed
energy
  recon   : 0.5 * sqerr(x, W @ z)
  sparse  : 0.1 * l1(z)
  inhibit : 0.05 * inhibition(z, S)
infer z by ista(steps = 10)
"""


@pytest.fixture(scope="session")
def tree_inhibition_source():
    return TREE_INHIBITION


@pytest.fixture(scope="session")
def sparse_coding_source():
    return SPARSE_CODING


@pytest.fixture(scope="session")
def drsae_source():
    return DRSAE_SMALL


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """The tests solve small problems: with several intra-op threads on a busy
    2-core machine every tiny matrix product waits for the scheduler (measured
    100x slower), so the suite runs single-threaded."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------- small sparse auto-encoders (tests/mechanisms)
# Small sparse auto-encoders as source text: the spec of each mechanism's tests differs only in its
# encoder (and the declarations that encoder needs).

SAE = """
model sae
data synthetic(dim = 8, atoms = 12, count = {count}, k = 2, seed = 1)
const k = 3
const epochs = 1
input x[d]
latent z[12]
param E[12, d] init normal(0.5)
param b[12] init 0.1
param D[d, 12] init samples(x)
{extra}
encoder z = {encoder}
energy
  recon : sqerr(x, D @ z){energy}
infer z by encoder
train
  optimizer adam(lr = 0.01)
  batch 32
  epochs epochs
"""


def sae_source(encoder: str, extra: str = "", count: int = 200, energy: str = "") -> str:
    return SAE.format(encoder=encoder, extra=extra, count=count, energy=f"\n  {energy}" if energy else "")


@pytest.fixture
def sae():
    """``sae(encoder, extra="", count=200, energy="", **constants)``: the model of a small auto-encoder
    whose encoder is ``encoder``; ``extra`` declares what it needs, ``energy`` adds a term."""

    def build(encoder: str, extra: str = "", count: int = 200, energy: str = "", **constants):
        return energydsl.load(sae_source(encoder, extra, count, energy), set=constants or None)

    return build


@pytest.fixture
def spec_error():
    """``spec_error(encoder, extra="")``: the SpecError that compiling such a spec raises."""

    def compile_error(encoder: str, extra: str = "") -> energydsl.SpecError:
        with pytest.raises(energydsl.SpecError) as caught:
            energydsl.load(sae_source(encoder, extra))
        return caught.value

    return compile_error


@pytest.fixture
def position():
    """``position(encoder, fragment, extra="")``: the (line, column) of the last ``fragment`` of the
    encoder in such a spec, where an error about it must point."""

    def locate(encoder: str, fragment: str, extra: str = "") -> tuple[int, int]:
        source = sae_source(encoder, extra)
        line = source[: source.index("encoder z =")].count("\n") + 1
        return line, len("encoder z = ") + encoder.rindex(fragment) + 1

    return locate
