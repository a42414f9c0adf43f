"""Logistic regression on the exported features of trained convolutional layers (MNIST).

    energydsl run specs/conv_group_sparsity.energy      # layer 1 → runs/conv_group_sparsity
    energydsl run specs/stacked_layer2.energy           # layer 2 → runs/stacked_layer2
    python benchmarks/stacked_features.py [LAYER1_RUN [LAYER2_RUN]]

Features: ``energydsl.export(run)`` — the trained encoders with L2 pooling (2×2) — on the
project's MNIST split (8,000 training, 2,000 test digits; ``data mnist``).  Layer 1 alone
is the layer-1 run exported by itself; layers 1+2 is the layer-2 run (which brings layer 1).
Each feature is standardised on the training digits; the inverse regularisation C of the
logistic regression is chosen among a few values on the last 1,000 training digits, then
the model is refitted on all 8,000 and scored once on the 2,000 test digits.
Prints one JSON line: test error (%) of each, with the feature counts and the C chosen.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

import energydsl
from energydsl.data.mnist import mnist

C_VALUES = (0.01, 0.03, 0.1, 0.3, 1.0)
VALIDATION = 1000


def features(network: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return torch.cat([network(x[i : i + 500]) for i in range(0, len(x), 500)]).double().numpy()


def fit(train: np.ndarray, labels: np.ndarray, C: float) -> tuple[StandardScaler, LogisticRegression]:
    scaler = StandardScaler().fit(train)
    classifier = LogisticRegression(C=C, max_iter=2000).fit(scaler.transform(train), labels)
    return scaler, classifier


def test_error(network: torch.nn.Module, data) -> dict:
    train, test = features(network, data.x_train), features(network, data.x_test)
    y_train, y_test = data.y_train.numpy(), data.y_test.numpy()
    fit_part, held = slice(0, len(train) - VALIDATION), slice(len(train) - VALIDATION, None)
    scores = {}
    for C in C_VALUES:
        scaler, classifier = fit(train[fit_part], y_train[fit_part], C)
        scores[C] = classifier.score(scaler.transform(train[held]), y_train[held])
    best = max(scores, key=scores.get)
    scaler, classifier = fit(train, y_train, best)
    error = 100 * (1 - classifier.score(scaler.transform(test), y_test))
    return {"test_error_percent": round(error, 2), "features": train.shape[1], "C": best}


def main() -> None:
    layer1 = sys.argv[1] if len(sys.argv) > 1 else "runs/conv_group_sparsity"
    layer2 = sys.argv[2] if len(sys.argv) > 2 else "runs/stacked_layer2"
    data = mnist()
    start = time.perf_counter()
    result = {"layer1": test_error(energydsl.export(layer1), data),
              "layers1+2": test_error(energydsl.export(layer2), data)}  # fmt: skip
    result["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
