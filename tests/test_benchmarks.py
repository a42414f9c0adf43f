"""The benchmarks' smoke modes run end to end (slow: each trains several models)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def benchmark(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_hierarchy_quick_mode_trains_every_model_and_writes_its_table(tmp_path, capsys):
    hierarchy = benchmark("hierarchy")
    out = tmp_path / "hierarchy.json"
    hierarchy.main(["--quick", "--out", str(out)])
    report = json.loads(out.read_text())
    assert list(report["summary"]) == list(hierarchy.MODELS)
    assert [run["model"] for run in report["runs"]] == list(hierarchy.MODELS)
    for run in report["runs"]:
        assert 0 <= run["f1"] <= 1 and 0 <= run["feature_f1"] <= 1 and 0 < run["mcc"] <= 1
    by_model = {run["model"]: run for run in report["runs"]}
    for name in ("batchtopk", "tree_topk"):  # a BatchTopK's held-out L0 is k on average
        assert by_model[name]["l0"] == pytest.approx(report["k"], rel=0.3)
    table = capsys.readouterr().out
    assert table.startswith("| model | F1 (SynthSAEBench) |") and all(f"| {name} |" in table for name in hierarchy.MODELS)
