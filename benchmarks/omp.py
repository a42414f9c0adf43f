"""Orthogonal matching pursuit: energydsl's batched OMP against scikit-learn's orthogonal_mp_gram.

Both start from the same Gram matrix and correlations (float64): random unit-norm atoms,
random signals, k nonzeros per code.  scikit-learn pursues one sample at a time (LAPACK on
each support); energydsl all samples at once (energydsl/ops/pursuit.py).  Reports the
medians of ``--repeats`` runs, whether the supports agree and the largest difference of
the codes, and energydsl's nonnegative pursuit on the same problem.
Run by hand, on one thread for both:  OMP_NUM_THREADS=1 python benchmarks/omp.py [--repeats 3]
"""

from __future__ import annotations

import argparse

import torch
from common import report, timed
from sklearn.linear_model import orthogonal_mp_gram

from energydsl.ops.pursuit import omp_gram


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=4096)
    parser.add_argument("--atoms", type=int, default=512)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)
    D = torch.randn(args.dim, args.atoms, generator=generator, dtype=torch.float64)
    D /= D.norm(dim=0)
    X = torch.randn(args.samples, args.dim, generator=generator, dtype=torch.float64)
    G, C = D.T @ D, X @ D
    ours_seconds, ours = timed(lambda: omp_gram(G, C, args.k), args.repeats)
    gram, covariances = G.numpy(), C.numpy().T.copy()
    theirs_seconds, theirs = timed(lambda: orthogonal_mp_gram(gram, covariances, n_nonzero_coefs=args.k),
                                   args.repeats)  # fmt: skip
    theirs = torch.from_numpy(theirs.T.copy())
    nonneg_seconds, _ = timed(lambda: omp_gram(G, C, args.k, nonneg=True), args.repeats)
    report("omp", samples=args.samples, atoms=args.atoms, dim=args.dim, k=args.k, repeats=args.repeats,
           energydsl_seconds=round(ours_seconds, 3), sklearn_seconds=round(theirs_seconds, 3),
           same_supports=bool(torch.equal(ours != 0, theirs != 0)),
           largest_difference=float((ours - theirs).abs().max()),
           energydsl_nonneg_seconds=round(nonneg_seconds, 3))  # fmt: skip


if __name__ == "__main__":
    main()
