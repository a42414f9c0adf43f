"""Tests for energydsl.data: bundled sources, synthetic data, user files and argument errors."""

from __future__ import annotations

import gzip
import inspect
import math
import struct
import zipfile
from importlib.resources import files

import numpy as np
import pytest
import torch

import energydsl
from energydsl.cli import main
from energydsl.data import SOURCES, DataError, Dataset, Description, describe_source, load_data

MNIST_CLASS_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def decode_bundled_idx(name: str, header_bytes: int) -> np.ndarray:
    """Decode a bundled MNIST file independently of energydsl.data (uint8 after the header)."""
    with files("energydsl").joinpath("datasets", "mnist", name).open("rb") as raw:
        return np.frombuffer(gzip.decompress(raw.read())[header_bytes:], np.uint8)


def write_idx(path, array: np.ndarray, code: int, *, gz: bool = False) -> None:
    """Write ``array`` as an IDX file with element type ``code`` (per the IDX spec)."""
    magic = struct.pack(">BBBB", 0, 0, code, array.ndim)
    sizes = struct.pack(f">{array.ndim}I", *array.shape)
    data = magic + sizes + array.astype(IDX_TYPES[code]).tobytes()
    with (gzip.open(path, "wb") if gz else open(path, "wb")) as out:
        out.write(data)


def error_text(excinfo: pytest.ExceptionInfo) -> str:
    """The message of a raised DataError, checked to be a single line."""
    text = str(excinfo.value)
    assert text and "\n" not in text
    return text


# --------------------------------------------------------------------------- mnist


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_data("mnist")


def test_mnist_split_sizes_and_class_counts(digits):
    assert digits.x_train.shape == (8000, 784) and digits.x_test.shape == (2000, 784)
    assert digits.x_train.dtype == torch.float32 and digits.y_train.dtype == torch.int64
    assert digits.num_classes == 10 and digits.sample_shape == (784,)
    all_labels = torch.cat([digits.y_train, digits.y_test])
    assert torch.bincount(all_labels, minlength=10).tolist() == MNIST_CLASS_COUNTS


def test_mnist_test_split_is_every_fifth_image(digits):
    images = decode_bundled_idx("t10k-images-idx3-ubyte.gz", 16).reshape(10000, 784)
    labels = decode_bundled_idx("t10k-labels-idx1-ubyte.gz", 8).astype(np.int64)
    index = np.arange(10000)
    expected_test = torch.from_numpy(images[index % 5 == 0] / np.float32(255))
    expected_train = torch.from_numpy(images[index % 5 != 0] / np.float32(255))
    assert torch.equal(digits.x_test, expected_test)
    assert torch.equal(digits.x_train, expected_train)
    assert digits.y_test.tolist() == labels[index % 5 == 0].tolist()
    assert digits.y_train.tolist() == labels[index % 5 != 0].tolist()


def test_mnist_pixels_are_scaled_to_unit_interval(digits):
    assert digits.x_train.min() == 0.0 and digits.x_train.max() == 1.0
    assert 0.05 < digits.x_train.mean() < 0.25  # mostly background, not all zeros


def test_mnist_count_keeps_first_training_samples(digits):
    small = load_data("mnist", kwargs={"count": 100})
    assert small.x_train.shape == (100, 784)
    assert torch.equal(small.x_train, digits.x_train[:100])
    assert torch.equal(small.x_test, digits.x_test)


def test_mnist_returns_fresh_tensors_each_time():
    first = load_data("mnist", kwargs={"count": 5})
    first.x_train.fill_(7.0)
    first.y_train.fill_(-1)
    second = load_data("mnist", kwargs={"count": 5})
    assert second.x_train.max() <= 1.0 and second.y_train.min() >= 0


# --------------------------------------------------------------------------- patches


def patch_data(**kwargs) -> Dataset:
    return load_data("patches", kwargs={"size": 8, "count": 4000, **kwargs})


def max_off_diagonal_correlation(x: torch.Tensor) -> float:
    second = (x.T.double() @ x.double()) / len(x)
    scale = torch.sqrt(second.diag())
    correlation = second / scale[:, None] / scale[None, :]
    return (correlation - torch.diag(correlation.diag())).abs().max().item()


def test_patches_shapes_and_held_out_fraction():
    data = patch_data(test=0.25)
    assert data.x_train.shape == (3000, 64) and data.x_test.shape == (1000, 64)
    assert data.y_train is None and data.num_classes is None
    assert data.extras["whitening"].shape == (64, 64)


@pytest.mark.parametrize("whiten", ["zca", "none"])
def test_centered_patches_have_zero_mean(whiten):
    data = patch_data(whiten=whiten)
    for x in (data.x_train, data.x_test):
        assert x.mean(dim=1).abs().max() < 1e-6 * x.abs().max()


def test_zca_decorrelates_the_training_patches():
    raw = patch_data(whiten="none")
    white = patch_data(whiten="zca")
    assert max_off_diagonal_correlation(raw.x_train) > 0.5  # neighbouring pixels correlate
    assert max_off_diagonal_correlation(white.x_train) < 0.1
    variances = (white.x_train.double() ** 2).mean(dim=0)
    assert variances.max() / variances.min() < 1.5


def test_patches_are_normalised_to_unit_mean_squared_norm():
    for whiten in ("zca", "none"):
        data = patch_data(whiten=whiten)
        mean_squared_norm = (data.x_train.double() ** 2).sum(dim=1).mean().item()
        assert mean_squared_norm == pytest.approx(1.0, rel=1e-5)


def test_whitening_matrix_transforms_train_and_test_alike():
    raw, white = patch_data(whiten="none"), patch_data(whiten="zca")
    matrix = white.extras["whitening"]
    assert torch.allclose(matrix, matrix.T, atol=1e-6)
    for plain, whitened in ((raw.x_train, white.x_train), (raw.x_test, white.x_test)):
        mapped = plain @ matrix
        factor = (mapped * whitened).sum() / (mapped * mapped).sum()  # raw is a scaled copy
        assert torch.allclose(mapped * factor, whitened, atol=1e-4 * whitened.abs().max())


def test_uncentered_unwhitened_patches_are_scaled_pixels():
    data = patch_data(whiten="none", center=False)
    assert data.x_train.min() >= 0 and data.extras == {}
    assert data.x_train.mean(dim=1).abs().max() > 0.01


def test_patches_are_deterministic_given_the_seed():
    assert torch.equal(patch_data(seed=3).x_train, patch_data(seed=3).x_train)
    assert not torch.equal(patch_data(seed=3).x_train, patch_data(seed=4).x_train)


# --------------------------------------------------------------------------- synthetic


def test_synthetic_without_noise_is_codes_times_dictionary():
    data = load_data("synthetic", kwargs={"dim": 10, "atoms": 15, "count": 500, "k": 4})
    dictionary = data.extras["dictionary"]
    assert dictionary.shape == (10, 15)
    assert torch.allclose(dictionary.norm(dim=0), torch.ones(15), atol=1e-6)
    splits = ((data.x_train, data.extras["codes_train"]), (data.x_test, data.extras["codes_test"]))
    for x, codes in splits:
        assert torch.allclose(x, codes @ dictionary.T, atol=1e-5)
        assert ((codes != 0).sum(dim=1) == 4).all()
        active = codes[codes != 0].abs()
        assert active.min() >= 0.5 and active.max() <= 1.5
    assert data.x_train.shape == (400, 10) and data.x_test.shape == (100, 10)
    assert (data.extras["codes_train"] < 0).any()


def test_synthetic_nonneg_codes_and_noise_level():
    data = load_data("synthetic", kwargs={"nonneg": True, "noise": 0.1, "count": 2000})
    codes = data.extras["codes_train"]
    assert (codes >= 0).all()
    residual = data.x_train - codes @ data.extras["dictionary"].T
    assert residual.std().item() == pytest.approx(0.1, rel=0.05)


def test_synthetic_is_deterministic_given_the_seed():
    a, b = load_data("synthetic", kwargs={"seed": 1}), load_data("synthetic", kwargs={"seed": 1})
    assert torch.equal(a.x_train, b.x_train)
    assert torch.equal(a.extras["dictionary"], b.extras["dictionary"])
    assert not torch.equal(a.x_train, load_data("synthetic", kwargs={"seed": 2}).x_train)


def test_synthetic_halfnormal_magnitudes_are_the_absolute_values_of_standard_normals():
    data = load_data("synthetic", kwargs={"atoms": 16, "dim": 8, "k": 3, "count": 20000, "nonneg": True,
                                          "values": "halfnormal"})  # fmt: skip
    codes = data.extras["codes_train"]
    assert ((codes != 0).sum(dim=1) == 3).all() and (codes >= 0).all()
    active = codes[codes != 0].double()
    # |N(0, 1)|: mean sqrt(2/pi) = 0.798, second moment 1, and a fifth of its values below 0.25 (2 Phi(0.25) - 1)
    assert active.mean().item() == pytest.approx(math.sqrt(2 / math.pi), abs=0.01)
    assert (active**2).mean().item() == pytest.approx(1.0, abs=0.02)
    assert (active < 0.25).double().mean().item() == pytest.approx(0.1974, abs=0.01)
    signed = load_data("synthetic", kwargs={"count": 4000, "values": "halfnormal"}).extras["codes_train"]
    assert (signed < 0).any() and (signed > 0).any()


def test_synthetic_rejects_an_unknown_way_of_drawing_values():
    with pytest.raises(DataError) as excinfo:
        load_data("synthetic", kwargs={"values": "gaussian"})
    text = error_text(excinfo)
    assert "'values'" in text and "'halfnormal'" in text and "'gaussian'" in text


def test_synthetic_rejects_more_nonzeros_than_atoms():
    with pytest.raises(DataError) as excinfo:
        load_data("synthetic", kwargs={"atoms": 5, "k": 6})
    text = error_text(excinfo)
    assert "'synthetic'" in text and "'k'" in text and "[1, 5]" in text


# --------------------------------------------------------------------------- files


def test_npz_round_trip_scales_uint8_and_splits_every_fifth(tmp_path):
    x = np.arange(10 * 6, dtype=np.uint8).reshape(10, 2, 3)
    y = np.array([0, 1, 2, 3, 4, 0, 1, 2, 3, 4])
    np.savez(tmp_path / "digits.npz", x=x, y=y)
    data = load_data("file", ["digits.npz"], base_dir=tmp_path)
    assert data.name == "file:digits.npz" and data.sample_shape == (2, 3)
    assert torch.equal(data.x_test, torch.from_numpy(x[[0, 5]] / np.float32(255)))
    train = [1, 2, 3, 4, 6, 7, 8, 9]
    assert torch.equal(data.x_train, torch.from_numpy(x[train] / np.float32(255)))
    assert data.y_test.tolist() == [0, 0] and data.y_train.tolist() == [1, 2, 3, 4, 1, 2, 3, 4]
    assert data.num_classes == 5


def test_npz_with_its_own_test_split_and_custom_keys(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {"images": rng.normal(size=(6, 4)), "digits": np.array([0, 1, 1, 0, 1, 0]),
              "images_test": rng.normal(size=(3, 4)), "digits_test": np.array([2, 0, 1])}
    np.savez_compressed(tmp_path / "d.npz", **arrays)
    path = str(tmp_path / "d.npz")  # absolute: no base_dir needed
    data = load_data("file", kwargs={"path": path, "x": "images", "y": "digits"})
    assert torch.allclose(data.x_train, torch.from_numpy(arrays["images"]).float())
    assert torch.allclose(data.x_test, torch.from_numpy(arrays["images_test"]).float())
    assert data.y_test.tolist() == [2, 0, 1] and data.num_classes == 3


def test_npz_with_a_separate_test_file(tmp_path):
    np.savez(tmp_path / "train.npz", x=np.ones((4, 2), dtype=np.float32), y=np.array([0, 1, 0, 1]))
    np.savez(tmp_path / "test.npz", x=np.full((3, 2), 2.0), y=np.array([1, 1, 5]))
    data = load_data("file", ["train.npz"], {"test": "test.npz"}, base_dir=tmp_path)
    assert data.x_train.shape == (4, 2) and data.x_test.tolist() == [[2.0, 2.0]] * 3
    assert data.y_test.tolist() == [1, 1, 5] and data.num_classes == 6
    described = describe_source("file", ["train.npz"], {"test": "test.npz"}, base_dir=tmp_path)
    assert described == Description((2,), 6)


def ground_truth(samples: int, dim: int = 3, features: int = 5, seed: int = 0):
    rng = np.random.default_rng(seed)
    dictionary = rng.normal(size=(dim, features))
    codes = rng.random((samples, features)) * (rng.random((samples, features)) < 0.3)
    return dictionary, codes, codes @ dictionary.T


def test_npz_ground_truth_becomes_extras_split_like_the_samples(tmp_path):
    dictionary, codes, x = ground_truth(10)
    np.savez(tmp_path / "acts.npz", x=x, dictionary=dictionary, codes=codes.astype(np.float16))
    data = load_data("file", ["acts.npz"], base_dir=tmp_path)
    assert sorted(data.extras) == ["codes_test", "dictionary"]
    assert data.extras["dictionary"].dtype == torch.float32 and data.extras["codes_test"].dtype == torch.float32
    torch.testing.assert_close(data.extras["dictionary"], torch.from_numpy(dictionary).float())
    torch.testing.assert_close(data.extras["codes_test"], torch.from_numpy(codes[[0, 5]].astype(np.float16)).float())
    torch.testing.assert_close(data.x_test, data.extras["codes_test"] @ data.extras["dictionary"].T, atol=2e-3, rtol=0)


def test_npz_ground_truth_with_its_own_test_split_or_a_test_file(tmp_path):
    dictionary, codes, x = ground_truth(12)
    np.savez(tmp_path / "own.npz", x=x[:8], x_test=x[8:], codes=codes[:8], codes_test=codes[8:], dictionary=dictionary)
    own = load_data("file", ["own.npz"], base_dir=tmp_path)
    torch.testing.assert_close(own.extras["codes_test"], torch.from_numpy(codes[8:]).float())
    np.savez(tmp_path / "train.npz", x=x[:8], codes=codes[:8], dictionary=dictionary)
    np.savez(tmp_path / "test.npz", x=x[8:], codes=codes[8:])
    separate = load_data("file", ["train.npz"], {"test": "test.npz"}, base_dir=tmp_path)
    torch.testing.assert_close(separate.extras["codes_test"], torch.from_numpy(codes[8:]).float())
    torch.testing.assert_close(separate.extras["dictionary"], own.extras["dictionary"])
    # a dictionary alone is ground truth too (for the directions' recovery)
    np.savez(tmp_path / "directions.npz", x=x, dictionary=dictionary)
    assert sorted(load_data("file", ["directions.npz"], base_dir=tmp_path).extras) == ["dictionary"]


@pytest.mark.parametrize("case, culprit, phrase", [
    ("codes without dictionary", "d.npz['codes']", "add array 'dictionary'"),
    ("codes for training only", "d.npz['codes']", "but d.npz['x_test'] has none"),
    ("codes for the test file only", "t.npz['codes']", "but d.npz['x'] has none"),
    ("dictionary rows", "d.npz['dictionary']", "dim = 3, the size of a sample, got shape (4, 5)"),
    ("codes columns", "d.npz['codes']", "(samples, features) = (10, 5) like d.npz['x'] and the dictionary, got shape (10, 6)"),
    ("codes rows", "d.npz['codes_test']", "= (2, 5) like d.npz['x_test']"),
])
def test_npz_ground_truth_mistakes_are_one_line_errors_even_from_headers(tmp_path, case, culprit, phrase):
    dictionary, codes, x = ground_truth(10)
    arrays = {
        "codes without dictionary": {"x": x, "codes": codes},
        "codes for training only": {"x": x, "x_test": x[:2], "codes": codes, "dictionary": dictionary},
        "codes for the test file only": {"x": x, "dictionary": dictionary},
        "dictionary rows": {"x": x, "dictionary": np.zeros((4, 5))},
        "codes columns": {"x": x, "codes": np.zeros((10, 6)), "dictionary": dictionary},
        "codes rows": {"x": x, "x_test": x[:2], "codes": codes, "codes_test": codes[:3], "dictionary": dictionary},
    }[case]
    np.savez(tmp_path / "d.npz", **arrays)
    np.savez(tmp_path / "t.npz", x=x[:2], codes=codes[:2])
    kwargs = {"path": "d.npz", "test": "t.npz"} if case == "codes for the test file only" else {"path": "d.npz"}
    for call in (load_data, describe_source):
        with pytest.raises(DataError) as excinfo:
            call("file", kwargs=kwargs, base_dir=tmp_path)
        text = error_text(excinfo)
        assert culprit in text and phrase in text


def test_npy_with_npy_labels_and_a_test_file(tmp_path):
    np.save(tmp_path / "x.npy", np.linspace(-1, 1, 20, dtype=np.float32).reshape(5, 4))
    np.save(tmp_path / "y.npy", np.array([0, 1, 0, 1, 1]))
    np.save(tmp_path / "xt.npy", np.zeros((2, 4)))
    np.save(tmp_path / "yt.npy", np.array([3.0, 0.0]))  # whole-valued floats are accepted
    kwargs = {"labels": "y.npy", "test": "xt.npy", "test_labels": "yt.npy"}
    data = load_data("file", ["x.npy"], kwargs, base_dir=tmp_path)
    assert data.x_train.shape == (5, 4) and data.x_train.min() == -1.0
    assert data.y_train.tolist() == [0, 1, 0, 1, 1] and data.y_test.tolist() == [3, 0]
    assert data.y_test.dtype == torch.int64 and data.num_classes == 4


@pytest.mark.parametrize("code", sorted(IDX_TYPES))
@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip_for_every_element_type(tmp_path, code, gz):
    x = np.arange(15 * 2 * 2).reshape(15, 2, 2) % 100
    labels = np.arange(15) % 3
    suffix = ".gz" if gz else ""
    write_idx(tmp_path / f"images-idx3-ubyte{suffix}", x, code, gz=gz)
    write_idx(tmp_path / f"labels-idx1-ubyte{suffix}", labels, 0x08, gz=gz)
    kwargs = {"labels": f"labels-idx1-ubyte{suffix}"}
    data = load_data("file", [f"images-idx3-ubyte{suffix}"], kwargs, base_dir=tmp_path)
    expected = x / 255 if code == 0x08 else x
    index = np.arange(15)
    assert torch.allclose(data.x_test, torch.from_numpy(expected[index % 5 == 0]).float())
    assert torch.allclose(data.x_train, torch.from_numpy(expected[index % 5 != 0]).float())
    assert data.y_train.tolist() == labels[index % 5 != 0].tolist() and data.num_classes == 3


def test_npy_samples_with_idx_labels(tmp_path):
    np.save(tmp_path / "x.npy", np.ones((4, 3)))
    write_idx(tmp_path / "labels.idx", np.array([1, 0, 1, 1]), 0x08)
    data = load_data("file", ["x.npy", "labels.idx"], base_dir=tmp_path)
    assert data.y_train.tolist() == [0, 1, 1] and data.y_test.tolist() == [1]


def test_describe_reads_headers_only(tmp_path):
    # gzipped, so its length is unknown until decompressed: only loading finds the data missing
    header = struct.pack(">BBBB", 0, 0, 0x08, 3) + struct.pack(">3I", 1_000_000, 28, 28)
    (tmp_path / "big-idx3-ubyte.gz").write_bytes(gzip.compress(header + bytes(100)))
    assert describe_source("file", ["big-idx3-ubyte.gz"], base_dir=tmp_path) == Description((28, 28), None)
    with pytest.raises(DataError) as excinfo:
        load_data("file", ["big-idx3-ubyte.gz"], base_dir=tmp_path)
    assert "big-idx3-ubyte.gz" in error_text(excinfo) and "truncated" in error_text(excinfo)


def test_describe_finds_a_truncated_file_from_its_length(tmp_path):
    header = struct.pack(">BBBB", 0, 0, 0x08, 3) + struct.pack(">3I", 1_000_000, 28, 28)
    (tmp_path / "big-idx3-ubyte").write_bytes(header + bytes(100))  # data is missing
    with pytest.raises(DataError) as excinfo:
        describe_source("file", ["big-idx3-ubyte"], base_dir=tmp_path)
    expected = "needs 784000016 bytes, but the file has 116"
    assert error_text(excinfo).startswith("big-idx3-ubyte: truncated") and expected in error_text(excinfo)


def make_error_case(tmp_path, case: str) -> tuple[dict, str, str]:
    """Write files with one mistake; return the kwargs, the file to name and a phrase to say."""
    good_x = np.zeros((5, 3))
    if case == "missing":
        return {"path": "nowhere.npz"}, "nowhere.npz", "not found"
    if case == "corrupt npz":
        (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 not really a zip archive")
        return {"path": "bad.npz"}, "bad.npz", "npz"
    if case == "bad magic":
        (tmp_path / "bad-idx3-ubyte").write_bytes(b"\x12\x34\x56\x78rest")
        return {"path": "bad-idx3-ubyte"}, "bad-idx3-ubyte", "magic"
    if case == "bad idx type":
        (tmp_path / "bad.idx").write_bytes(b"\x00\x00\x07\x01\x00\x00\x00\x01\x00")
        return {"path": "bad.idx"}, "bad.idx", "magic"
    if case == "missing key":
        np.savez(tmp_path / "d.npz", images=good_x, labels=np.zeros(5))
        return {"path": "d.npz"}, "d.npz", "'images', 'labels'"
    if case == "nan":
        bad = good_x.copy()
        bad[1, 2] = bad[3, 1] = np.nan
        bad[2, 2] = np.inf
        np.save(tmp_path / "nan.npy", bad)
        return {"path": "nan.npy"}, "nan.npy", "2 NaN and 1 infinite values (as float32), the first at index [1, 2]"
    if case == "overflow":  # finite in float64, infinite once converted to float32
        big = good_x.copy()
        big[4, 0] = 1e300
        np.save(tmp_path / "big.npy", big)
        return {"path": "big.npy"}, "big.npy", "0 NaN and 1 infinite values (as float32), the first at index [4, 0]"
    if case == "nan in npz test split":
        test = np.ones((2, 3))
        test[1, 0] = np.nan
        np.savez(tmp_path / "d.npz", x=good_x, x_test=test)
        return {"path": "d.npz"}, "d.npz['x_test']", "1 NaN and 0 infinite values (as float32), the first at index [1, 0]"
    if case == "truncated npy":
        np.save(tmp_path / "t.npy", good_x)
        data = (tmp_path / "t.npy").read_bytes()
        (tmp_path / "t.npy").write_bytes(data[:-12])  # 5 x 3 float64: 120 data bytes, 108 left
        phrase = f"truncated: its header declares shape (5, 3) of float64, which needs {len(data)} bytes"
        return {"path": "t.npy"}, "t.npy", f"{phrase}, but the file has {len(data) - 12}"
    if case == "truncated npy header":
        np.save(tmp_path / "t.npy", good_x)
        (tmp_path / "t.npy").write_bytes((tmp_path / "t.npy").read_bytes()[:20])
        return {"path": "t.npy"}, "t.npy", "cannot read npy data"
    if case == "truncated npz member":
        np.save(tmp_path / "member.npy", good_x)
        data = (tmp_path / "member.npy").read_bytes()
        with zipfile.ZipFile(tmp_path / "d.npz", "w") as archive:
            archive.writestr("x.npy", data[:-8])
        return {"path": "d.npz"}, "d.npz['x']", f"needs {len(data)} bytes, but the member has {len(data) - 8}"
    if case == "truncated idx":
        write_idx(tmp_path / "t.idx", np.zeros((5, 3)), 0x08)
        (tmp_path / "t.idx").write_bytes((tmp_path / "t.idx").read_bytes()[:-4])  # 12 + 15 bytes, 23 left
        return {"path": "t.idx"}, "t.idx", "shape (5, 3) of uint8, which needs 27 bytes, but the file has 23"
    if case == "text named npy":
        (tmp_path / "x.npy").write_text("0.5, 1.0, 2.0\n3.0, 4.0, 5.0\n")
        return {"path": "x.npy"}, "x.npy", "this is a text file (it starts with '0.5, 1.0, 2.0\\n3.'); expected an .npz, .npy"
    if case == "text named npz":
        (tmp_path / "d.npz").write_text("x y\n1 2\n")
        return {"path": "d.npz"}, "d.npz", "this is a text file"
    if case == "binary npz that is no zip":
        (tmp_path / "d.npz").write_bytes(bytes(range(200, 256)))
        return {"path": "d.npz"}, "d.npz", "unrecognised format (bad magic number 0xc8c9cacb); expected an .npz"
    if case == "missing labels file":
        np.save(tmp_path / "x.npy", good_x)
        return {"path": "x.npy", "labels": "y.npy"}, "y.npy", "file not found"
    np.save(tmp_path / "x.npy", good_x)
    labels = {
        "fractional labels": np.array([0, 1.5, 2, 0, 1]),
        "negative labels": np.array([0, -1, 2, 0, 1]),
        "2-D labels": np.zeros((5, 2), dtype=np.int64),
        "label count": np.zeros(4, dtype=np.int64),
        "string labels": np.array(["a", "b", "c", "d", "e"]),
    }
    if case in labels:
        np.save(tmp_path / "y.npy", labels[case])
        phrase = {"fractional labels": "whole numbers", "negative labels": "negative",
                  "2-D labels": "1-D", "label count": "4 labels", "string labels": "integer"}[case]
        return {"path": "x.npy", "labels": "y.npy"}, "y.npy", phrase
    if case == "labels for npz":
        np.savez(tmp_path / "d.npz", x=good_x)
        return {"path": "d.npz", "labels": "y.npy"}, "d.npz", "array 'y'"
    if case == "two test splits":
        np.savez(tmp_path / "d.npz", x=good_x, x_test=good_x)
        np.savez(tmp_path / "t.npz", x=good_x)
        return {"path": "d.npz", "test": "t.npz"}, "d.npz", "'x_test'"
    if case == "test format":
        write_idx(tmp_path / "t.idx", np.zeros((2, 3)), 0x08)
        return {"path": "x.npy", "test": "t.idx"}, "t.idx", "one format"
    if case == "test labels alone":
        np.save(tmp_path / "y.npy", np.zeros(5, dtype=np.int64))
        return {"path": "x.npy", "test_labels": "y.npy"}, "x.npy", "test="
    if case == "one sample":
        np.save(tmp_path / "one.npy", np.zeros((1, 3)))
        return {"path": "one.npy"}, "one.npy", "at least 2 samples"
    if case == "test shape":
        np.save(tmp_path / "t.npy", np.zeros((2, 4)))
        return {"path": "x.npy", "test": "t.npy"}, "t.npy", "(4,)"
    if case == "unlabelled test":
        np.save(tmp_path / "y.npy", np.zeros(5, dtype=np.int64))
        np.save(tmp_path / "t.npy", np.zeros((2, 3)))
        return {"path": "x.npy", "labels": "y.npy", "test": "t.npy"}, "t.npy", "labels"
    raise AssertionError(case)


ERROR_CASES = [
    "missing", "corrupt npz", "bad magic", "bad idx type", "missing key", "nan",
    "overflow", "nan in npz test split", "truncated npy", "truncated npy header",
    "truncated npz member", "truncated idx", "text named npy", "text named npz",
    "binary npz that is no zip", "missing labels file",
    "fractional labels", "negative labels", "2-D labels", "label count", "string labels",
    "labels for npz", "two test splits", "test format", "test labels alone",
    "one sample", "test shape", "unlabelled test",
]
HEADER_CASES = [
    "missing", "bad magic", "missing key", "2-D labels", "label count", "one sample",
    "test shape", "negative labels", "truncated npy", "truncated npz member", "truncated idx",
    "text named npy", "binary npz that is no zip", "missing labels file",
]


@pytest.mark.parametrize("case", ERROR_CASES)
def test_file_mistakes_raise_one_line_errors_naming_the_file(tmp_path, case):
    kwargs, culprit, phrase = make_error_case(tmp_path, case)
    with pytest.raises(DataError) as excinfo:
        load_data("file", kwargs=kwargs, base_dir=tmp_path)
    text = error_text(excinfo)
    assert culprit in text and phrase in text


@pytest.mark.parametrize("case", HEADER_CASES)
def test_describe_reports_header_level_mistakes_too(tmp_path, case):
    kwargs, culprit, _ = make_error_case(tmp_path, case)
    with pytest.raises(DataError) as excinfo:
        describe_source("file", kwargs=kwargs, base_dir=tmp_path)
    assert culprit in error_text(excinfo)


# --------------------------------------------------------------------------- describe_source


def test_describe_agrees_with_load_for_every_source(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((7, 2, 5)), y=np.array([0, 1, 2, 3, 4, 5, 6]))
    np.save(tmp_path / "x.npy", np.zeros((6, 9), dtype=np.uint8))
    calls = [
        ("mnist", (), {"count": 10}),
        ("patches", (6,), {"count": 200}),
        ("synthetic", (), {"dim": 7, "count": 50}),
        ("file", ("d.npz",), {}),
        ("file", ("x.npy",), {}),
    ]
    for name, args, kwargs in calls:
        data = load_data(name, args, kwargs, base_dir=tmp_path)
        described = describe_source(name, args, kwargs, base_dir=tmp_path)
        assert described == data.description, name
    assert describe_source("file", ["d.npz"], base_dir=tmp_path) == Description((2, 5), 7)


# --------------------------------------------------------------------------- arguments


def test_registry_holds_the_seven_sources():
    assert set(SOURCES) == {"mnist", "patches", "synthetic", "features", "file", "shards", "stacked"}


def test_unknown_source_lists_sources_and_suggests_the_closest():
    with pytest.raises(DataError) as excinfo:
        load_data("mnsit")
    text = error_text(excinfo)
    assert "did you mean 'mnist'" in text and all(name in text for name in SOURCES)


@pytest.mark.parametrize(
    ("name", "args", "kwargs", "phrases"),
    [
        ("patches", (), {"sizee": 8}, ["'sizee'", "did you mean 'size'", "whiten"]),
        ("patches", (), {"size": "8"}, ["'size'", "integer", "[2, 64]"]),
        ("patches", (), {"size": 1}, ["'size'", "[2, 64]"]),
        ("patches", (), {"whiten": "pca"}, ["'whiten'", "'zca'", "'none'"]),
        ("patches", (), {"center": 1}, ["'center'", "true or false"]),
        ("patches", (), {"test": 1.0}, ["'test'", "[0, 1)"]),
        ("patches", (), {"count": 10, "test": 0.9}, ["'test'", "at least 2"]),
        ("patches", (), {"eps": 0}, ["'eps'", "(0, 1]"]),
        ("synthetic", (), {"noise": -0.1}, ["'noise'"]),
        ("synthetic", (), {"nonneg": "yes"}, ["'nonneg'"]),
        ("mnist", (), {"count": 9000}, ["'count'", "[1, 8000]"]),
        ("mnist", (5, 6), {}, ["at most 1 positional", "count"]),
        ("mnist", (5,), {"count": 6}, ["'count'", "twice"]),
        ("file", (), {}, ["needs argument 'path'"]),
        ("file", (), {"path": 3}, ["'path'", "file path"]),
        ("file", (), {"path": "x.npy", "base_dir": "/"}, ["'base_dir'"]),
    ],
)
def test_bad_arguments_name_the_source_and_the_argument(name, args, kwargs, phrases):
    for call in (load_data, describe_source):
        with pytest.raises(DataError) as excinfo:
            call(name, args, kwargs)
        text = error_text(excinfo)
        assert f"'{name}'" in text
        for phrase in phrases:
            assert phrase in text


def test_every_source_documents_every_argument():
    for name, source in SOURCES.items():
        for parameter in inspect.signature(source.load).parameters:
            assert f"{parameter}:" in source.doc, (name, parameter)


# --------------------------------------------------------------------------- data against the spec

# No data line: every test names its file with data=... or --data, as a user replacing the data would.
LABELLED_SPEC = """
input x[6]
label y : 10 classes
latent z[4]
param D[6, 4]
param C[10, 4]
energy
  recon : 0.5 * sqerr(x, D @ z)
  class : xent(C @ z, y)
infer z by fista(steps = 5)
"""


def spec_file(tmp_path) -> str:
    path = tmp_path / "labelled.energy"
    path.write_text(LABELLED_SPEC)
    return str(path)


def check_stderr(capsys, spec: str, data: str) -> str:
    """``energydsl check SPEC --data DATA``: checked to exit 2; its stderr."""
    assert main(["check", spec, "--data", data]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_a_sample_shape_that_differs_from_the_spec_names_the_file(tmp_path, capsys):
    np.savez(tmp_path / "five.npz", x=np.zeros((20, 5)), y=np.arange(20) % 10)
    data = f'file("{tmp_path / "five.npz"}")'
    expected = (f"input 'x' has 6 values per sample, but the data file('{tmp_path / 'five.npz'}') "
                "gives samples of shape [5]")  # fmt: skip
    with pytest.raises(energydsl.SpecError) as excinfo:
        energydsl.load(LABELLED_SPEC, data=data)
    assert expected in error_text(excinfo)
    lines = check_stderr(capsys, spec_file(tmp_path), data).splitlines()
    assert lines[0].startswith(f"{tmp_path / 'labelled.energy'}:2:9: ") and expected in lines[0]
    assert lines[1:] == ["  input x[6]", "          ^"]


def test_labels_beyond_the_declared_classes_name_the_file(tmp_path, capsys):
    labels = np.arange(20) % 10
    labels[7] = 12
    np.save(tmp_path / "x.npy", np.zeros((20, 6)))
    np.save(tmp_path / "y.npy", labels)
    data = f'file("{tmp_path / "x.npy"}", labels = "{tmp_path / "y.npy"}")'
    expected = (f"10 classes declared, but the data file('{tmp_path / 'x.npy'}', labels='{tmp_path / 'y.npy'}') "
                "has labels up to 12 (class indices must be below 10)")  # fmt: skip
    with pytest.raises(energydsl.SpecError) as excinfo:
        energydsl.load(LABELLED_SPEC, data=data)
    assert expected in error_text(excinfo)
    lines = check_stderr(capsys, spec_file(tmp_path), data).splitlines()
    assert lines[0].startswith(f"{tmp_path / 'labelled.energy'}:3:11: ") and expected in lines[0]


def test_labels_beyond_the_classes_in_the_test_split_count_too(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((20, 6)), y=np.arange(20) % 10,
             x_test=np.zeros((4, 6)), y_test=np.array([0, 1, 10, 2]))  # fmt: skip
    with pytest.raises(energydsl.SpecError) as excinfo:
        energydsl.load(LABELLED_SPEC, data=f'file("{tmp_path / "d.npz"}")')
    assert "d.npz') has labels up to 10 (class indices must be below 10)" in error_text(excinfo)


def test_a_bad_file_given_by_data_is_a_data_error_without_a_spec_location(tmp_path, capsys):
    # The file comes from --data, not from the spec's text: pointing at a spec line would mislead.
    (tmp_path / "x.npy").write_text("1 2 3 4 5 6\n")
    data = f'file("{tmp_path / "x.npy"}")'
    with pytest.raises(DataError) as excinfo:
        energydsl.load(LABELLED_SPEC, data=data)
    assert error_text(excinfo).startswith(f"{tmp_path / 'x.npy'}: this is a text file")
    assert check_stderr(capsys, spec_file(tmp_path), data) == str(excinfo.value) + "\n"
    missing = f'file("{tmp_path / "nowhere.npz"}")'
    assert check_stderr(capsys, spec_file(tmp_path), missing) == f"file not found: {tmp_path / 'nowhere.npz'}\n"


def test_an_unreadable_file_is_a_data_error():
    """A path that opens but cannot be read (Linux: /proc/self/mem) is a clear error, not an OSError."""
    with pytest.raises(DataError, match=r"^/proc/self/mem: cannot read it \("):
        load_data("file", ("/proc/self/mem",))


def test_a_flag_is_written_as_true_or_false_and_survives_the_run_spec():
    """``nonneg = true`` reaches the source as a boolean, and a run's resolved spec writes it back the
    same way, so reopening the run reads the same data."""
    source = """
model flags
data synthetic(dim = 6, atoms = 8, count = 100, k = 2, nonneg = true)
input x
latent z[8]
param W[6, 8] init samples(x)
energy
  recon : 0.5 * sqerr(x, W @ z)
"""
    model = energydsl.load(source)
    assert model.program.data.text() == "synthetic(dim=6, atoms=8, count=100, k=2, nonneg=true)"
    assert bool((model.dataset.extras["codes_train"] >= 0).all())
    negative = energydsl.load(source.replace("nonneg = true", "nonneg = false"))
    assert bool((negative.dataset.extras["codes_train"] < 0).any())
