"""The ``file`` source: samples (and optional labels or targets) from the user's own .npz, .npy or IDX files."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from energydsl.data.base import Args, DataError, Dataset, Source, modulo_split
from energydsl.data.formats import READ_ERRORS, ArrayRef, file_kind


def _looks_like_text(head: bytes) -> bool:
    """Whether a file's first bytes are printable ASCII (CSV, whitespace-separated numbers...)."""
    return all(32 <= byte < 127 or byte in b"\t\n\r" for byte in head)


@dataclass(frozen=True)
class _Split:
    """Where one split's samples, (optional) labels, (optional) true codes and (optional) targets live."""

    x: ArrayRef
    y: ArrayRef | None
    codes: ArrayRef | None = None  # the ground truth of an .npz: one code per sample
    target: ArrayRef | None = None  # paired data: one target per sample (a transcoder's)


@dataclass(frozen=True)
class _Targets:
    """Where the ``file`` source finds targets: an .npz's array name, or .npy/IDX files."""

    array: str | None = None  # target=: the array of an .npz (its test split: <array>_test)
    file: str | os.PathLike | None = None  # target_file=: the targets of `path`
    test_file: str | os.PathLike | None = None  # test_target_file=: the targets of `test`


@dataclass(frozen=True)
class _Plan:
    """Where the ``file`` source's arrays are: its splits and the true dictionary, if any."""

    train: _Split
    test: _Split | None
    dictionary: ArrayRef | None = None


def _locate(path: str | os.PathLike, base_dir: Path | None) -> tuple[Path, str]:
    """Resolve a user path against ``base_dir`` and detect its format from its first bytes."""
    resolved = Path(base_dir or ".") / Path(path)
    if not resolved.is_file():
        where = "" if str(resolved) == str(path) else f" (looked for {resolved})"
        what = "not a regular file" if resolved.exists() else "file not found"
        raise DataError(f"{what}: {path}{where}")
    try:
        with open(resolved, "rb") as stream:
            head = stream.read(64)
    except OSError as error:
        raise DataError(f"{path}: cannot read it ({error.strerror or error})") from None
    kind = file_kind(head)
    if kind is not None:
        return resolved, kind
    if not head:
        raise DataError(f"{path}: the file is empty")
    if _looks_like_text(head):
        raise DataError(
            f"{path}: this is a text file (it starts with {head[:16].decode('ascii')!r}); "
            "expected an .npz, .npy or IDX file (convert text with numpy.loadtxt and numpy.save)"
        )
    raise DataError(
        f"{path}: unrecognised format (bad magic number 0x{head[:4].hex()}); "
        "expected an .npz, .npy or IDX file (IDX optionally gzipped)"
    )


def _npz_splits(path: Path, display: str, x: str, y: str, target: str | None = None) -> _Plan:
    """An .npz's arrays: ``x`` with optional ``y``, ``codes`` and ``target`` (which must be there when
    named), ``<x>_test`` / ``<y>_test`` / ``codes_test`` / ``<target>_test`` if present, and the
    optional ``dictionary``."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            keys = set(archive.files)
    except READ_ERRORS as exc:
        raise DataError(f"{display}: not a valid .npz file ({exc})") from exc
    for name in (x, target):
        if name is not None and name not in keys:
            present = ", ".join(f"'{key}'" for key in sorted(keys)) or "none"
            raise DataError(f"{display}: no array '{name}' (arrays present: {present})")

    def member(key: str | None) -> ArrayRef | None:
        return ArrayRef(path, "npz", f"{display}['{key}']", key) if key in keys else None

    def split(suffix: str) -> _Split:
        codes = "codes" + suffix
        return _Split(member(x + suffix), member(y + suffix), member(codes),
                      member(target + suffix) if target is not None else None)  # fmt: skip

    own_test = split("_test") if f"{x}_test" in keys else None
    return _Plan(split(""), own_test, member("dictionary"))


def _plan_file(path, labels, test, test_labels, x, y, targets: _Targets, base_dir) -> _Plan:
    """Find the arrays of the ``file`` source: its training split, its test split, if any, and
    the true dictionary, if any."""
    _check_file(path, labels, test, test_labels, x, y, targets.array, targets.file, targets.test_file)
    resolved, kind = _locate(path, base_dir)
    test_path = None
    if test is not None:
        test_path, test_kind = _locate(test, base_dir)
        if test_kind != kind:
            raise DataError(
                f"test file {test} is {test_kind} but {path} is {kind}; use one format"
            )
    if kind == "npz":
        if labels is not None or test_labels is not None:
            raise DataError(
                f"{path}: labels= and test_labels= are for .npy and IDX files; "
                f"an .npz keeps its labels as array '{y}'"
            )
        if targets.file is not None or targets.test_file is not None:
            raise DataError(f"{path}: target_file= and test_target_file= are for .npy and IDX files; "
                            "an .npz keeps its targets as an array, named by target=")  # fmt: skip
        plan = _npz_splits(resolved, str(path), x, y, targets.array)
        if test_path is not None:
            if plan.test is not None:
                raise DataError(
                    f"{path}: has its own '{x}_test' array, so drop test={str(test)!r}"
                )
            plan = _Plan(plan.train, _npz_splits(test_path, str(test), x, y, targets.array).train, plan.dictionary)
    else:
        if test_labels is not None and test is None:
            raise DataError(f"{path}: test_labels={str(test_labels)!r} needs a test= file")
        _check_target_files(path, test, targets)
        train = _Split(ArrayRef(resolved, kind, str(path)), _label_ref(labels, base_dir),
                       target=_array_ref(targets.file, "target", base_dir))  # fmt: skip
        test_split = None
        if test_path is not None:
            test_x = ArrayRef(test_path, kind, str(test))
            test_split = _Split(test_x, _label_ref(test_labels, base_dir),
                                target=_array_ref(targets.test_file, "target", base_dir))  # fmt: skip
        plan = _Plan(train, test_split)
    _check_both_labelled(plan.train, plan.test)
    _check_both_targeted(plan.train, plan.test)
    _check_both_coded(plan)
    return plan


def _check_target_files(path, test, targets: _Targets) -> None:
    """.npy and IDX samples take their targets from files: one for ``path``, one for ``test``."""
    if targets.array is not None:
        raise DataError(f"{path}: target={targets.array!r} names an array of an .npz; the targets of "
                        ".npy and IDX samples come from target_file= (and test_target_file=)")  # fmt: skip
    if targets.test_file is not None and test is None:
        raise DataError(f"{path}: test_target_file={str(targets.test_file)!r} needs a test= file")
    if targets.test_file is not None and targets.file is None:
        raise DataError(f"{path}: test_target_file= needs target_file=, the targets of the training file")
    if targets.file is not None and test is not None and targets.test_file is None:
        raise DataError(f"{path}: target_file= gives the targets of {path}, but the test file {test} has none; "
                        "add test_target_file=")  # fmt: skip


def _check_both_targeted(train: _Split, test: _Split | None) -> None:
    """Targets come with both splits or with neither (an .npz's own test split: '<target>_test')."""
    if test is not None and (train.target is None) != (test.target is None):
        targeted, untargeted = (train, test) if test.target is None else (test, train)
        raise DataError(f"{targeted.target.name} gives the targets of {targeted.x.name} but {untargeted.x.name} "
                        "has none; give targets for both splits or neither")  # fmt: skip


def _check_both_labelled(train: _Split, test: _Split | None) -> None:
    """Labels must come with both splits or with neither."""
    if test is not None and (train.y is None) != (test.y is None):
        labelled, unlabelled = (train, test) if test.y is None else (test, train)
        raise DataError(
            f"{labelled.x.name} has labels but {unlabelled.x.name} has none; "
            "label both splits or neither"
        )


def _check_both_coded(plan: _Plan) -> None:
    """True codes come with both splits or with neither, and with the dictionary."""
    train, test = plan.train, plan.test
    if test is not None and (train.codes is None) != (test.codes is None):
        coded, uncoded = (train, test) if test.codes is None else (test, train)
        raise DataError(
            f"{coded.codes.name} gives the true codes of {coded.x.name} but {uncoded.x.name} has none; "
            "give codes for both splits ('codes' and 'codes_test', or the test file's 'codes') or neither"
        )
    if train.codes is not None and plan.dictionary is None:
        raise DataError(f"{train.codes.name}: true codes need the true dictionary too: "
                        "add array 'dictionary' (dim × features)")  # fmt: skip


def _label_ref(labels: str | os.PathLike | None, base_dir: Path | None) -> ArrayRef | None:
    """The labels file named by ``labels`` (an .npy or IDX file), if any."""
    return _array_ref(labels, "labels", base_dir)


def _array_ref(path: str | os.PathLike | None, what: str, base_dir: Path | None) -> ArrayRef | None:
    """The .npy or IDX file of labels or targets at ``path``, if any."""
    if path is None:
        return None
    resolved, kind = _locate(path, base_dir)
    if kind == "npz":
        raise DataError(f"{path}: a {what} file must be .npy or IDX, not .npz")
    return ArrayRef(resolved, kind, str(path))


def _check_file(path, labels, test, test_labels, x, y, target=None, target_file=None, test_target_file=None) -> None:
    args = Args("file")
    args.path("path", path)
    args.path("labels", labels, optional=True)
    args.path("test", test, optional=True)
    args.path("test_labels", test_labels, optional=True)
    args.text("x", x)
    args.text("y", y)
    if target is not None:
        args.text("target", target)
    args.path("target_file", target_file, optional=True)
    args.path("test_target_file", test_target_file, optional=True)


def _checked_shape(train: _Split, test: _Split | None) -> tuple[int, ...]:
    """Check sample and label counts and shapes from the headers; return the sample shape."""
    shape = train.x.shape()
    if len(shape) < 2:
        raise DataError(
            f"{train.x.name}: expected an array of shape (samples, ...), got shape {shape}"
        )
    if shape[0] < 2:
        raise DataError(f"{train.x.name}: needs at least 2 samples, found {shape[0]}")
    _check_label_shape(train, shape[0])
    if test is not None:
        test_shape = test.x.shape()
        if len(test_shape) < 2 or test_shape[1:] != shape[1:]:
            raise DataError(
                f"{test.x.name}: test sample shape {test_shape[1:]} differs from "
                f"the training sample shape {shape[1:]} of {train.x.name}"
            )
        if test_shape[0] < 1:
            raise DataError(f"{test.x.name}: the test split has no samples")
        _check_label_shape(test, test_shape[0])
    return shape[1:]


def _checked_target_shape(train: _Split, test: _Split | None) -> tuple[int, ...] | None:
    """Check the targets' counts and shapes from the headers (one per sample, the same shape in both
    splits); return the shape of one target (None: no targets)."""
    if train.target is None:
        return None
    shape = _per_sample(train.target, train.x)
    if test is not None and _per_sample(test.target, test.x) != shape:
        raise DataError(f"{test.target.name}: test target shape {test.target.shape()[1:]} differs from "
                        f"the training target shape {shape} of {train.target.name}")  # fmt: skip
    return shape


def _per_sample(target: ArrayRef, x: ArrayRef) -> tuple[int, ...]:
    shape = target.shape()
    if len(shape) < 2:
        raise DataError(f"{target.name}: expected targets of shape (samples, ...), got shape {shape}")
    if shape[0] != x.shape()[0]:
        raise DataError(f"{target.name}: {shape[0]} targets for the {x.shape()[0]} samples of {x.name}")
    return shape[1:]


def _check_truth_shape(plan: _Plan, sample_shape: tuple[int, ...]) -> None:
    """The dictionary is (dim, features), dim the size of a sample; codes are (samples, features)."""
    if plan.dictionary is None:
        return
    shape, size = plan.dictionary.shape(), math.prod(sample_shape)
    if len(shape) != 2 or shape[0] != size:
        raise DataError(f"{plan.dictionary.name}: the true dictionary must be (dim, features) with dim = "
                        f"{size}, the size of a sample, got shape {shape}")  # fmt: skip
    for split in (plan.train, plan.test):
        if split is not None and split.codes is not None:
            codes, samples = split.codes.shape(), split.x.shape()[0]
            if codes != (samples, shape[1]):
                raise DataError(f"{split.codes.name}: the true codes must be (samples, features) = "
                                f"({samples}, {shape[1]}) like {split.x.name} and the dictionary, "
                                f"got shape {codes}")  # fmt: skip


def _check_label_shape(split: _Split, samples: int) -> None:
    if split.y is None:
        return
    shape = split.y.shape()
    if len(shape) != 1:
        raise DataError(f"{split.y.name}: labels must be a 1-D array, got shape {shape}")
    if shape[0] != samples:
        raise DataError(
            f"{split.y.name}: {shape[0]} labels for the {samples} samples of {split.x.name}"
        )


def _load_samples(ref: ArrayRef, *, scale_bytes: bool = True) -> np.ndarray:
    """Samples as float32: uint8 scaled to [0, 1] (with ``scale_bytes``), other numbers kept;
    must be finite."""
    array = ref.load()
    if array.dtype == np.uint8 and scale_bytes:
        array = array.astype(np.float32) / np.float32(255)
    elif array.dtype.kind in "biuf":
        with np.errstate(over="ignore"):  # values beyond float32 become inf, reported below
            array = array.astype(np.float32)
    else:
        raise DataError(f"{ref.name}: expected numbers, got dtype {array.dtype}")
    bad = ~np.isfinite(array)
    if bad.any():
        nan, inf = int(np.isnan(array).sum()), int(np.isinf(array).sum())
        first = [int(i) for i in np.unravel_index(np.argmax(bad), bad.shape)]
        raise DataError(
            f"{ref.name}: {nan} NaN and {inf} infinite values (as float32), the first at "
            f"index {first} (sample {first[0]}); expected finite numbers"
        )
    return array


def _load_labels(ref: ArrayRef) -> np.ndarray:
    """Labels as int64 class indices: integers (or whole-valued floats), none negative."""
    array = ref.load()
    if array.dtype.kind == "f":
        fractional = int(np.sum(~np.isfinite(array) | (array != np.round(array))))
        if fractional:
            raise DataError(
                f"{ref.name}: labels must be integer class indices; {fractional} of "
                f"{array.size} values are not whole numbers"
            )
    elif array.dtype.kind not in "iu":
        raise DataError(
            f"{ref.name}: labels must be integer class indices, got dtype {array.dtype}"
        )
    labels = array.astype(np.int64)
    negative = int(np.sum(labels < 0))
    if negative:
        raise DataError(
            f"{ref.name}: labels must be class indices 0, 1, 2, ...; "
            f"found {negative} negative values (smallest {labels.min()})"
        )
    return labels


def _load_split(split: _Split) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """A split's samples, labels (None when unlabelled) and targets (None without)."""
    labels = _load_labels(split.y) if split.y is not None else None
    targets = _load_samples(split.target) if split.target is not None else None
    return _load_samples(split.x), labels, targets


def _subset(arrays: tuple[np.ndarray | None, ...], index: np.ndarray) -> tuple[np.ndarray | None, ...]:
    """The rows at ``index`` of each array (None stays None)."""
    return tuple(None if array is None else array[index] for array in arrays)


def _tensor(array: np.ndarray | None) -> torch.Tensor | None:
    return None if array is None else torch.from_numpy(np.ascontiguousarray(array))


def _num_classes(*label_arrays: np.ndarray) -> int:
    """The number of classes: the largest label plus one."""
    return max(int(labels.max()) for labels in label_arrays) + 1


def file(
    path: str | os.PathLike,
    labels: str | None = None,
    test: str | None = None,
    test_labels: str | None = None,
    x: str = "x",
    y: str = "y",
    target: str | None = None,
    target_file: str | None = None,
    test_target_file: str | None = None,
    *,
    base_dir: Path | None = None,
) -> Dataset:
    """Samples (and optional integer labels, or targets) from the user's own files.

    The format is recognised by the file's first bytes, whatever its name:

    * ``.npz``: the samples are array ``x`` and the optional labels array ``y``; arrays
      ``x_test`` / ``y_test`` in the same file, when present, are the test split.  An
      .npz may also carry ground truth for feature recovery (as the ``features`` source
      does): array ``dictionary``, ``(dim, features)`` with dim the size of a sample, and
      array ``codes``, ``(samples, features)``, the true code of each sample of ``x``, split
      like ``x`` (its test split: array ``codes_test``, or the test file's ``codes``).
      They become ``extras["dictionary"]`` and ``extras["codes_test"]`` (the test split's
      codes, dense float32); codes need the dictionary, and come with both splits or neither.
    * ``.npy``: the array is the samples; labels come from the ``labels`` file.
    * IDX (as MNIST is distributed: ``*-ubyte``, ``.idx``, optionally gzipped): the
      array is the samples; labels come from the ``labels`` file.  All IDX element
      types are read (unsigned/signed byte, short, int, float, double).

    The first axis indexes samples; the rest is kept as the sample shape (the spec
    decides whether to flatten).  uint8 data are scaled to [0, 1]; other numbers are
    converted to float32 as they are, and must be finite.  Labels are a 1-D array of
    non-negative integers, one per sample; the number of classes is the largest label
    plus one over both splits.  Without a test file (or ``x_test`` array) the test split
    is every sample whose index ``i % 5 == 0``, the training split the others.

    *Pairs* (for a transcoder, whose spec declares ``target y``): the target of each sample,
    one per sample in the same order, read like the samples (float32, uint8 scaled to [0, 1],
    finite; the first axis indexes samples, the rest is the target's shape), split like them.
    In an .npz the targets are the array that ``target`` names, beside ``x`` (its test split:
    ``<target>_test``, or the test file's ``<target>``):
    ``file("pairs.npz", x = "mlp_in", target = "mlp_out")``.  Beside .npy and IDX samples they
    are a file of their own, ``target_file``, and with a ``test`` file its targets,
    ``test_target_file``: ``file("in.npy", target_file = "out.npy")``.  Targets come with both
    splits or neither.  A spec without a ``target`` statement ignores them.

    Args:
        path: the samples file; a relative path is taken from the spec's directory.
        labels: an .npy or IDX file of labels for ``path`` (not for .npz files).
        test: a second file in the same format holding the test split.
        test_labels: an .npy or IDX file of labels for the ``test`` file (not for .npz).
        x: name of the samples array in an .npz file (its test split: ``<x>_test``).
        y: name of the labels array in an .npz file (its test split: ``<y>_test``).
        target: name of the targets array in an .npz file (its test split: ``<target>_test``);
            none: no targets.
        target_file: an .npy or IDX file of targets for ``path`` (not for .npz files).
        test_target_file: an .npy or IDX file of targets for the ``test`` file (not for .npz).
        base_dir: directory that relative paths start from; supplied by energydsl,
            not by the spec (default: the current directory).
    """
    plan = _plan_file(path, labels, test, test_labels, x, y, _Targets(target, target_file, test_target_file), base_dir)
    _check_truth_shape(plan, _checked_shape(plan.train, plan.test))
    _checked_target_shape(plan.train, plan.test)
    x_all, y_all, t_all = _load_split(plan.train)
    codes_test = None
    if plan.test is None:
        train_index, test_index = modulo_split(len(x_all))
        x_train, y_train, t_train = _subset((x_all, y_all, t_all), train_index)
        x_test, y_test, t_test = _subset((x_all, y_all, t_all), test_index)
        if plan.train.codes is not None:
            codes_test = _load_samples(plan.train.codes, scale_bytes=False)[test_index]
    else:
        (x_train, y_train, t_train), (x_test, y_test, t_test) = (x_all, y_all, t_all), _load_split(plan.test)
        if plan.test.codes is not None:
            codes_test = _load_samples(plan.test.codes, scale_bytes=False)
    extras = {}
    if plan.dictionary is not None:
        extras["dictionary"] = torch.from_numpy(_load_samples(plan.dictionary, scale_bytes=False))
    if codes_test is not None:
        extras["codes_test"] = torch.from_numpy(np.ascontiguousarray(codes_test))
    labelled = y_train is not None
    return Dataset(
        name=f"file:{path}",
        x_train=torch.from_numpy(x_train),
        x_test=torch.from_numpy(x_test),
        y_train=torch.from_numpy(y_train) if labelled else None,
        y_test=torch.from_numpy(y_test) if labelled else None,
        num_classes=_num_classes(y_train, y_test) if labelled else None,
        extras=extras,
        target_train=_tensor(t_train),
        target_test=_tensor(t_test),
    )


def _describe_file(path, labels, test, test_labels, x, y, target, target_file, test_target_file, *, base_dir):
    plan = _plan_file(path, labels, test, test_labels, x, y, _Targets(target, target_file, test_target_file), base_dir)
    shape = _checked_shape(plan.train, plan.test)
    _check_truth_shape(plan, shape)
    target_shape = _checked_target_shape(plan.train, plan.test)
    if plan.train.y is None:
        return shape, None, target_shape
    label_arrays = [_load_labels(plan.train.y)]
    if plan.test is not None:
        label_arrays.append(_load_labels(plan.test.y))
    return shape, _num_classes(*label_arrays), target_shape


def _footprint_file(batch, path, labels, test, test_labels, x, y, target, target_file, test_target_file, *,
                    base_dir) -> int:  # fmt: skip
    """The arrays at their peak while they load (see :func:`_peak_bytes`), as if all at once."""
    plan = _plan_file(path, labels, test, test_labels, x, y, _Targets(target, target_file, test_target_file), base_dir)
    total = _peak_bytes(plan.dictionary, labels=False) if plan.dictionary is not None else 0
    for split in (plan.train, plan.test) if plan.test is not None else (plan.train,):
        for ref, is_labels in ((split.x, False), (split.y, True), (split.codes, False), (split.target, False)):
            total += _peak_bytes(ref, is_labels) if ref is not None else 0
    return total


def _peak_bytes(ref: ArrayRef, labels: bool) -> int:
    """An array's bytes at the peak of its load: as stored and converted (float32 samples, int64
    labels), or converted twice over once the split copies it out; uint8 pixels, divided by 255,
    hold one more float32 copy."""
    shape, dtype = ref.header()
    loaded = 8 if labels else 4
    extra = 4 if dtype == np.uint8 and not labels else 0
    return math.prod(shape) * (max(2 * loaded, dtype.itemsize + loaded) + extra)


SOURCE = Source("file", load=file, describe=_describe_file, check=_check_file,
                paths=("path", "labels", "test", "test_labels", "target_file", "test_target_file"),
                footprint=_footprint_file)
