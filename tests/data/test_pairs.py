"""Paired data, for transcoders: each sample comes with a target, from user files or ``features``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from energydsl.data import DataError, Description, describe_source, load_data


def pairs(count: int = 10, d: int = 3, e: int = 2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Samples and targets whose rows can be told apart: row i of y is 100·i + its column."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((count, d)).astype(np.float32)
    y = (100 * np.arange(count)[:, None] + np.arange(e)).astype(np.float64)
    return x, y


def paired(x: torch.Tensor, y: torch.Tensor, x_all: np.ndarray, y_all: np.ndarray) -> bool:
    """Whether every row of ``x`` comes with the target of the same sample in ``x_all`` / ``y_all``."""
    index = [int(np.flatnonzero((x_all == row.numpy()).all(axis=1))[0]) for row in x]
    return torch.equal(y, torch.from_numpy(y_all[index].astype(np.float32)))


def one_line(excinfo) -> str:
    text = str(excinfo.value)
    assert text and "\n" not in text
    return text


# --------------------------------------------------------------------------- .npz


def test_npz_targets_are_split_with_their_samples(tmp_path):
    x, y = pairs()
    np.savez(tmp_path / "p.npz", x=x, out=y)
    data = load_data("file", ["p.npz"], {"target": "out"}, base_dir=tmp_path)
    assert data.target_train.dtype == torch.float32 and data.target_train.shape == (8, 2)
    assert data.target_test.shape == (2, 2)  # every fifth sample, as for the samples
    assert paired(data.x_train, data.target_train, x, y) and paired(data.x_test, data.target_test, x, y)
    assert describe_source("file", ["p.npz"], {"target": "out"}, base_dir=tmp_path) == data.description
    assert data.description == Description((3,), None, (2,))


def test_npz_without_target_argument_ignores_a_target_array(tmp_path):
    x, y = pairs()
    np.savez(tmp_path / "p.npz", x=x, out=y)
    data = load_data("file", ["p.npz"], base_dir=tmp_path)
    assert data.target_train is None and data.target_test is None and data.target_shape is None


def test_npz_own_test_split_and_separate_test_file(tmp_path):
    x, y = pairs(12)
    np.savez(tmp_path / "own.npz", x=x[:9], out=y[:9], x_test=x[9:], out_test=y[9:])
    own = load_data("file", ["own.npz"], {"target": "out"}, base_dir=tmp_path)
    assert torch.equal(own.target_test, torch.from_numpy(y[9:].astype(np.float32)))
    np.savez(tmp_path / "train.npz", x=x[:9], out=y[:9])
    np.savez(tmp_path / "test.npz", x=x[9:], out=y[9:])
    apart = load_data("file", ["train.npz"], {"test": "test.npz", "target": "out"}, base_dir=tmp_path)
    assert torch.equal(apart.target_train, own.target_train) and torch.equal(apart.target_test, own.target_test)


def test_npz_targets_may_have_another_shape_than_the_samples(tmp_path):
    x, _ = pairs(10, d=4)
    y = np.arange(10 * 6, dtype=np.float32).reshape(10, 2, 3)
    np.savez(tmp_path / "p.npz", x=x, y_out=y)
    assert describe_source("file", ["p.npz"], {"target": "y_out"}, base_dir=tmp_path) == ((4,), None, (2, 3))


# --------------------------------------------------------------------------- .npy


def test_npy_targets_come_from_their_own_files(tmp_path):
    x, y = pairs(15)
    np.save(tmp_path / "in.npy", x[:10])
    np.save(tmp_path / "out.npy", y[:10])
    data = load_data("file", ["in.npy"], {"target_file": "out.npy"}, base_dir=tmp_path)
    assert paired(data.x_train, data.target_train, x, y) and paired(data.x_test, data.target_test, x, y)
    np.save(tmp_path / "in_test.npy", x[10:])
    np.save(tmp_path / "out_test.npy", y[10:])
    kwargs = {"test": "in_test.npy", "target_file": "out.npy", "test_target_file": "out_test.npy"}
    data = load_data("file", ["in.npy"], kwargs, base_dir=tmp_path)
    assert torch.equal(data.target_test, torch.from_numpy(y[10:].astype(np.float32)))
    assert data.target_train.shape == (10, 2)
    assert describe_source("file", ["in.npy"], kwargs, base_dir=tmp_path) == Description((3,), None, (2,))


@pytest.mark.parametrize(
    ("files", "kwargs", "phrase"),
    [
        ({"p.npz": {"x": 10}}, {"target": "out"}, "p.npz: no array 'out' (arrays present: 'x')"),
        ({"p.npz": {"x": 10, "out": 9}}, {"target": "out"}, "p.npz['out']: 9 targets for the 10 samples"),
        ({"p.npz": {"x": 8, "out": 8, "x_test": 2}}, {"target": "out"}, "gives the targets of p.npz['x'] but "
                                                                         "p.npz['x_test'] has none"),
        ({"p.npz": {"x": 10, "out": 10}}, {"target_file": "o.npy"}, "target_file= and test_target_file= are for "
                                                                     ".npy and IDX files"),
        ({"in.npy": 10}, {"target": "out"}, "target='out' names an array of an .npz"),
        ({"in.npy": 10, "o.npy": 10}, {"test_target_file": "o.npy"}, "test_target_file='o.npy' needs a test= file"),
        ({"in.npy": 10, "t.npy": 4, "o.npy": 10}, {"test": "t.npy", "target_file": "o.npy"},
         "the test file t.npy has none; add test_target_file="),
        ({"in.npy": 10, "o.npz": {"a": 10}}, {"target_file": "o.npz"}, "o.npz: a target file must be .npy or IDX"),
    ],
)
def test_pairing_mistakes_are_one_line_errors(tmp_path, files, kwargs, phrase):
    for name, arrays in files.items():
        if name.endswith(".npz"):
            np.savez(tmp_path / name, **{key: np.zeros((n, 2), np.float32) for key, n in arrays.items()})
        else:
            np.save(tmp_path / name, np.zeros((arrays, 2), np.float32))
    path = "p.npz" if "p.npz" in files else "in.npy"
    for call in (load_data, describe_source):
        with pytest.raises(DataError) as excinfo:
            call("file", [path], kwargs, base_dir=tmp_path)
        assert phrase in one_line(excinfo)


def test_test_targets_of_another_shape_are_refused(tmp_path):
    np.savez(tmp_path / "p.npz", x=np.zeros((8, 2)), out=np.zeros((8, 3)), x_test=np.zeros((2, 2)),
             out_test=np.zeros((2, 4)))  # fmt: skip
    with pytest.raises(DataError) as excinfo:
        describe_source("file", ["p.npz"], {"target": "out"}, base_dir=tmp_path)
    assert "test target shape (4,) differs from the training target shape (3,)" in one_line(excinfo)


# --------------------------------------------------------------------------- features


WORLD = {"dim": 12, "features": 20, "count": 400, "seed": 3}


def test_features_targets_are_the_same_codes_through_a_second_dictionary():
    data = load_data("features", kwargs={**WORLD, "target_dim": 7})
    B = data.extras["target_dictionary"]
    assert B.shape == (7, 20)
    torch.testing.assert_close(B.norm(dim=0), torch.ones(20))
    codes = data.extras["codes_test"].to_dense()
    torch.testing.assert_close(data.target_test, codes @ B.T)
    torch.testing.assert_close(data.x_test, codes @ data.extras["dictionary"].T + data.extras["bias"])
    assert data.target_train.shape == (360, 7)
    assert not torch.allclose(B[:, :7].abs(), data.extras["dictionary"][:7, :7].abs())  # another dictionary


def test_features_targets_leave_the_samples_as_they_were():
    plain = load_data("features", kwargs=WORLD)
    pairs = load_data("features", kwargs={**WORLD, "target_dim": 5})
    assert torch.equal(plain.x_train, pairs.x_train) and torch.equal(plain.x_test, pairs.x_test)
    assert plain.target_train is None and "target_dictionary" not in plain.extras
    assert describe_source("features", kwargs={**WORLD, "target_dim": 5}) == pairs.description == ((12,), None, (5,))


def test_features_target_dim_is_checked():
    with pytest.raises(DataError) as excinfo:
        load_data("features", kwargs={**WORLD, "target_dim": -1})
    assert "argument 'target_dim' must be an integer in [0, 65536]" in one_line(excinfo)
