"""Shared fixtures: small specs as source text, so tests need no files."""

import pytest
import torch

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
