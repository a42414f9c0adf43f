"""The ``shards`` source: formats, files, errors, the epoch's order, reading ahead, and resuming in the stream."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import safetensors
import safetensors.numpy
import safetensors.torch
import torch

import energydsl
from energydsl.cli import main
from energydsl.data import DataError, describe_source, load_data
from energydsl.data.streamed import StreamedSamples, StreamOrder, read_ahead
from energydsl.runs import checkpoint
from energydsl.training.loop import initial_state
from energydsl.training.loop import train as train_loop

WIDTH = 6


def activations(rows: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, WIDTH)).astype(np.float32)


def one_line(excinfo: pytest.ExceptionInfo) -> str:
    text = str(excinfo.value)
    assert text and "\n" not in text
    return text


def index_split(x: np.ndarray, every: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """The reference split: rows i % every == 0 held out."""
    held = np.arange(len(x)) % every == 0
    return x[~held], x[held]


def everything(data) -> torch.Tensor:
    return data.x_train[torch.arange(len(data.x_train))]


# --------------------------------------------------------------------------- formats and files


@pytest.mark.parametrize("storage", ["npy-float32", "npy-float16", "npy-float64", "safetensors-F32",
                                     "safetensors-F16", "safetensors-BF16"])  # fmt: skip
def test_every_storage_reads_as_the_float32_of_its_values(tmp_path, storage):
    x = activations(103)
    fmt, kind = storage.split("-")
    if fmt == "npy":
        np.save(tmp_path / "acts.npy", x.astype(kind))
        expected = x.astype(kind).astype(np.float32)
    else:
        dtype = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}[kind]
        stored = torch.from_numpy(x).to(dtype)
        safetensors.torch.save_file({"acts": stored}, tmp_path / "acts.safetensors")
        expected = stored.float().numpy()
    data = load_data("shards", (f"acts.{fmt}",), base_dir=tmp_path)
    train, test = index_split(expected)
    assert data.x_train.dtype == torch.float32 and data.x_test.dtype == torch.float32
    assert torch.equal(everything(data), torch.from_numpy(train))
    assert torch.equal(data.x_test, torch.from_numpy(test))
    assert data.sample_shape == (WIDTH,) and data.num_classes is None and data.y_train is None


def test_a_named_tensor_of_a_safetensors_file(tmp_path):
    x = activations(20)
    safetensors.numpy.save_file({"resid": x, "other": x[:, :2].copy()}, tmp_path / "a.safetensors")
    data = load_data("shards", ("a.safetensors",), {"x": "resid"}, base_dir=tmp_path)
    assert torch.equal(data.x_test, torch.from_numpy(index_split(x)[1]))


def test_a_directory_and_a_glob_are_one_array_in_the_natural_order_of_names(tmp_path):
    x = activations(250)
    (tmp_path / "acts").mkdir()
    for number, part in zip([2, 10, 100], np.split(x, [90, 180])):  # shard_10 sorts after shard_2
        np.save(tmp_path / "acts" / f"shard_{number}.npy", part)
    (tmp_path / "acts" / "notes.txt").write_text("not a shard")
    train, test = index_split(x)
    for path in ("acts", "acts/", "acts/shard_*.npy", "**/shard_*.npy"):
        data = load_data("shards", (path,), base_dir=tmp_path)
        assert torch.equal(everything(data), torch.from_numpy(train)), path
        assert torch.equal(data.x_test, torch.from_numpy(test)), path
    by_shard = load_data("shards", ("acts",), {"split": "shard"}, base_dir=tmp_path)
    assert torch.equal(everything(by_shard), torch.from_numpy(x[:180]))
    assert torch.equal(by_shard.x_test, torch.from_numpy(x[180:]))


def test_the_held_out_samples_are_bounded_and_evenly_spread(tmp_path):
    x = activations(1000)
    np.save(tmp_path / "a.npy", x)
    data = load_data("shards", ("a.npy",), {"test_samples": 40, "test_every": 10}, base_dir=tmp_path)
    held_out = x[::10]  # 100 samples, of which 40 are read: every 2.5th
    assert torch.equal(data.x_test, torch.from_numpy(held_out[np.arange(40) * 100 // 40]))
    assert len(data.x_train) == 900


def test_describe_reads_headers_only(tmp_path):
    np.save(tmp_path / "a.npy", activations(30))
    assert tuple(describe_source("shards", ("a.npy",), base_dir=tmp_path)) == ((WIDTH,), None, None)


def bad_files(tmp_path):
    """Name → (setup, arguments, phrases the one-line error must hold)."""
    np.save(tmp_path / "good.npy", activations(20))

    def save(name, array):
        return lambda: np.save(tmp_path / name, array)

    def mixed(other):
        def make():
            (tmp_path / "mix").mkdir()
            np.save(tmp_path / "mix" / "a.npy", activations(20))
            np.save(tmp_path / "mix" / "b.npy", other)
        return make

    def truncated():
        np.save(tmp_path / "cut.npy", activations(20))
        data = (tmp_path / "cut.npy").read_bytes()
        (tmp_path / "cut.npy").write_bytes(data[:-10])

    return {
        "empty glob": (lambda: None, ("none_*.npy",), ["no file matches none_*.npy"]),
        "missing file": (lambda: None, ("absent.npy",), ["file not found: absent.npy"]),
        "empty directory": (lambda: (tmp_path / "empty").mkdir(), ("empty",), ["empty", "no .npy or .safetensors"]),
        "bad header": (lambda: (tmp_path / "junk.npy").write_bytes(b"\x93NUMPY\x01\x00garbage"), ("junk.npy",),
                       ["junk.npy", "not a valid .npy file"]),
        "not a shard": (lambda: (tmp_path / "t.npy").write_text("1,2,3\n"), ("t.npy",), ["t.npy", "not an .npy"]),
        "1-D": (save("flat.npy", np.zeros(10, np.float32)), ("flat.npy",), ["flat.npy", "2-D", "(10,)"]),
        "3-D": (save("cube.npy", np.zeros((4, 2, 3), np.float32)), ("cube.npy",), ["cube.npy", "(4, 2, 3)"]),
        "integers": (save("int.npy", np.zeros((4, 3), np.int32)), ("int.npy",), ["int.npy", "int32"]),
        "width": (mixed(activations(20)[:, :4].copy()), ("mix",), ["b.npy", "4 values of float32", "a.npy"]),
        "dtype": (mixed(activations(20).astype(np.float16)), ("mix",), ["b.npy", "float16", "float32"]),
        "truncated": (truncated, ("cut.npy",), ["cut.npy", "truncated"]),
        "one shard": (lambda: None, ("good.npy",), ["split = \"shard\"", "one file"]),
        "too few": (save("two.npy", activations(2)), ("two.npy",), ["two.npy", "1 to train"]),
    }


BAD_CASES = ["empty glob", "missing file", "empty directory", "bad header", "not a shard", "1-D", "3-D", "integers",
             "width", "dtype", "truncated", "one shard", "too few"]  # fmt: skip


@pytest.mark.parametrize("case", BAD_CASES)
def test_a_bad_file_is_a_one_line_error(tmp_path, case):
    setup, args, phrases = bad_files(tmp_path)[case]
    setup()
    kwargs = {"split": "shard"} if case == "one shard" else {}
    with pytest.raises(DataError) as excinfo:
        describe_source("shards", args, kwargs, base_dir=tmp_path)  # energydsl check finds it, before loading
    text = one_line(excinfo)
    assert all(phrase in text for phrase in phrases), text


def test_safetensors_tensor_choice_errors(tmp_path):
    safetensors.numpy.save_file({"a": activations(5), "b": activations(5)}, tmp_path / "two.safetensors")
    with pytest.raises(DataError) as excinfo:
        load_data("shards", ("two.safetensors",), base_dir=tmp_path)
    assert "holds 2 tensors (a, b); name the samples with x = " in one_line(excinfo)
    with pytest.raises(DataError) as excinfo:
        load_data("shards", ("two.safetensors",), {"x": "c"}, base_dir=tmp_path)
    assert "has no tensor 'c' (its tensors: a, b)" in one_line(excinfo)


def test_a_non_finite_sample_is_reported_when_read(tmp_path):
    x = activations(40)
    x[17, 2] = np.nan  # a training sample (17 % 5 != 0)
    np.save(tmp_path / "a.npy", x)
    data = load_data("shards", ("a.npy",), base_dir=tmp_path)
    with pytest.raises(DataError) as excinfo:
        everything(data)
    assert one_line(excinfo) == "a.npy: sample 17 holds NaN or infinite values; expected finite numbers"


# --------------------------------------------------------------------------- the order


def test_an_epoch_visits_every_sample_once_reading_from_a_few_blocks_at_a_time():
    order = StreamOrder(seed=7, samples=1003, block=16, window=3)
    batches = order.batches(50)
    positions = torch.cat(list(batches))
    assert len(batches) == 21 and torch.equal(positions.sort().values, torch.arange(1003))
    for batch in batches:
        assert len(set((batch // 16).tolist())) <= 2 * 3  # at most two windows of 3 blocks
    assert not torch.equal(positions, torch.arange(1003))  # shuffled
    again = StreamOrder(**order.as_dict()).batches(50)
    assert all(torch.equal(a, b) for a, b in zip(batches, again))  # a pure function of its seed
    assert not torch.equal(torch.cat(list(StreamOrder(8, 1003, 16, 3).batches(50))), positions)


def test_the_order_is_drawn_from_the_loop_generator(tmp_path):
    np.save(tmp_path / "a.npy", activations(100))
    x = load_data("shards", ("a.npy",), {"block": 8, "window": 2}, base_dir=tmp_path).x_train
    first = x.order(torch.Generator().manual_seed(0))
    assert first == x.order(torch.Generator().manual_seed(0)) != x.order(torch.Generator().manual_seed(1))
    assert (first.samples, first.block, first.window) == (80, 8, 2)


def test_read_ahead_gives_every_batch_in_order_and_raises_where_a_read_fails():
    reads = []

    def read(positions):
        reads.append(positions.tolist())
        if positions[0] == 6:
            raise DataError("acts.npy: cannot read it")
        return np.repeat(positions[:, None], 2, axis=1).astype(np.float32)

    samples = StreamedSamples("test", 10, (2,), read)
    batches = [torch.tensor([i, i + 1]) for i in range(0, 10, 2)]
    stream = read_ahead(samples, batches, depth=2)
    for expected in batches[:3]:
        item, rows = next(stream)
        assert item is expected and torch.equal(rows[:, 0], expected.float())
    with pytest.raises(DataError, match="cannot read it"):
        next(stream)
    assert len(reads) <= 5


# --------------------------------------------------------------------------- training

SAE = """
model sae
data shards("acts.npy", block = 16, window = 2)
input x[6]
latent z[12] >= 0
param D[6, 12] init samples(x) constrain col_norm <= 1
param E[12, 6] init 0.01 * D.T
param b[12] init -1
param c[6] init mean(x)
encoder z = relu(E @ (x - c) + b)
energy
  recon  : 0.5 * sqerr(x, D @ z + c)
  sparse : 0.01 * l1(z)
infer z by encoder
train
  optimizer adam(lr = 1e-2)
  batch 20
  epochs 3
  dead after 40 samples
  resample dead every 5 steps
"""


@pytest.fixture
def sae_spec(tmp_path):
    np.save(tmp_path / "acts.npy", activations(300))  # 240 training samples: 12 batches an epoch
    spec = tmp_path / "sae.energy"
    spec.write_text(SAE)
    return spec


def test_initialisers_read_the_samples_the_file_source_gives(sae_spec, monkeypatch):
    streamed = energydsl.load(sae_spec)
    monkeypatch.chdir(sae_spec.parent)  # a path in data= starts from the working directory
    whole = energydsl.load(sae_spec, data='file("acts.npy")')
    assert torch.equal(streamed.params["c"], whole.params["c"])  # mean(x) of the same training samples
    assert torch.equal(streamed.params["D"], whole.params["D"])  # samples(x): the same draws


def test_a_resumed_run_continues_at_the_same_place_of_the_stream_bitwise(sae_spec, tmp_path):
    """Killed after step 17 (last checkpoint at step 14, mid-epoch; resampling on), resumed."""
    reference = energydsl.load(sae_spec)
    train_loop(reference, reference.dataset)

    class Killed(Exception):
        pass

    steps = []

    def die_after_step_17(done, total, energy):
        steps.append(done)
        if len(steps) == 17:
            raise Killed

    out = tmp_path / "run"
    out.mkdir()
    model = energydsl.load(sae_spec)
    with pytest.raises(Killed):
        train_loop(model, model.dataset, checkpoint_every=7, on_step=die_after_step_17,
                   on_checkpoint=lambda state: checkpoint.save_state(out, model, state, SAE))  # fmt: skip
    with safetensors.safe_open(str(out / checkpoint.CHECKPOINT_FILE), framework="pt") as handle:
        assert "order" not in handle.keys()  # a seed, not the order
        assert set(json.loads(handle.metadata()["state"])["stream_order"]) == {"seed", "samples", "block", "window"}
    resumed = energydsl.load(sae_spec)
    state = initial_state(resumed)
    checkpoint.load_state(out, resumed, state, SAE)
    assert (state.step, state.epoch, state.batch) == (14, 1, 2)
    train_loop(resumed, resumed.dataset, state=state)
    for name, p in reference.params.items():
        assert torch.equal(resumed.params[name], p), name
    for name, t in reference.state.items():
        assert torch.equal(resumed.state[name], t), name
    assert (reference.params["b"] > -0.5).any()  # resampling restarted units


@pytest.fixture
def two_shards(tmp_path, monkeypatch):
    """Two shards in tmp_path/dir, and the working directory tmp_path, where --data's paths start."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dir").mkdir()
    np.save(tmp_path / "dir" / "part_0.npy", activations(300, seed=1))
    np.save(tmp_path / "dir" / "part_1.npy", activations(200, seed=2))
    return 'shards("dir/", split = "shard")'


def test_the_cli_checks_a_spec_on_shards_and_a_bad_glob_is_one_line(sae_spec, two_shards, tmp_path, capsys):
    assert main(["check", str(sae_spec), "--data", two_shards]) == 0
    assert "shards('dir/', split='shard')" in capsys.readouterr().out
    assert main(["check", str(sae_spec), "--data", 'shards("nothing/*.npy")']) == 2
    assert capsys.readouterr().err == f"data source 'shards': no file matches nothing/*.npy (looked for " \
                                      f"{tmp_path / 'nothing/*.npy'})\n"  # fmt: skip
    assert main(["run", str(sae_spec), "--data", 'shards("nothing/*.npy")', "--out", str(tmp_path / "r")]) == 2
    assert capsys.readouterr().err.count("\n") == 1 and not (tmp_path / "r").exists()


def test_the_cli_runs_a_spec_on_shards(sae_spec, two_shards, tmp_path):
    sae_spec.write_text(SAE.replace("epochs 3", "epochs 1"))
    out = tmp_path / "run"
    assert main(["run", str(sae_spec), "--data", two_shards, "--out", str(out), "--quiet"]) == 0
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
    assert f'shards("{(tmp_path / "dir").as_posix()}", split = "shard")' in (out / "spec.energy").read_text()


# --------------------------------------------------------------------------- memory

RSS_SPEC = """
model stream_rss
data shards("acts.npy", test_samples = 2048)
input x[256]
latent z[64] >= 0
param D[256, 64] constrain col_norm == 1
param E[64, 256] init 0.1 * D.T
param b[64] init zeros
encoder z = topk(relu(E @ x + b), 4)
energy
  recon : sqerr(x, D @ z)
infer z by encoder
train
  optimizer adam(lr = 1e-3)
  batch 2048
  epochs 1
"""


def write_activations(path, megabytes: int) -> int:
    """An .npy of ``megabytes`` MB of float32 rows of 256, written a chunk at a time; returns its size."""
    rows = megabytes * 10**6 // (256 * 4)
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, 256))
    rng = np.random.default_rng(0)
    for start in range(0, rows, 65536):
        array[start : start + 65536] = rng.standard_normal((min(65536, rows - start), 256), dtype=np.float32)
    array.flush()
    del array
    return path.stat().st_size


def peak_rss_of_a_run(folder) -> int:
    """The peak resident memory (bytes) of ``energydsl run`` in a fresh process, under a 512 MiB budget.

    Read from the child's own high-water mark, VmHWM, polled until it exits: its ru_maxrss would
    count the parent's peak too (a child that execs keeps the larger of the two)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ENERGYDSL_MEMORY_LIMIT": "512M"}
    command = [sys.executable, "-m", "energydsl.cli", "run", str(folder / "spec.energy"), "--quiet",
               "--out", str(folder / "run")]  # fmt: skip
    child = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0
    while child.poll() is None:
        peak = max(peak, high_water_mark(child.pid))
        time.sleep(0.01)
    assert child.returncode == 0, child.stderr.read().decode()[-2000:]
    return peak


def high_water_mark(pid: int) -> int:
    """VmHWM of a running process, in bytes (0 once it has gone)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return 0


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_the_set(tmp_path):
    """The same run on 30 MB and on 300 MB of activations: the peak resident memory differs by far less
    than the files do (a set loaded whole would add its size twice over)."""
    sizes, peaks = [], []
    for megabytes in (30, 300):
        folder = tmp_path / f"mb{megabytes}"
        folder.mkdir()
        (folder / "spec.energy").write_text(RSS_SPEC)
        sizes.append(write_activations(folder / "acts.npy", megabytes))
        peaks.append(peak_rss_of_a_run(folder))
    growth, data = peaks[1] - peaks[0], sizes[1] - sizes[0]
    assert growth < 0.1 * data, f"peak resident memory {peaks[0]:,} B then {peaks[1]:,} B for files {sizes} B"


def test_a_bad_sample_met_in_training_stops_the_run_in_one_line(sae_spec, tmp_path, capsys):
    x = activations(300)
    x[101, 0] = np.inf  # a training sample (101 % 5 != 0), read by the background thread
    np.save(tmp_path / "acts.npy", x)
    sae_spec.write_text(SAE.replace("init samples(x)", "init normal(0.1)").replace("init mean(x)", "init zeros"))
    assert main(["run", str(sae_spec), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err == "acts.npy: sample 101 holds NaN or infinite values; expected finite numbers\n"


def test_stacking_on_a_streamed_run_is_refused_in_one_line(sae_spec, tmp_path, monkeypatch):
    sae_spec.write_text(SAE.replace("epochs 3", "epochs 1"))
    energydsl.train(energydsl.load(sae_spec), out=tmp_path / "layer1")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError) as excinfo:
        load_data("stacked", ("layer1",), {"pooling": 1})
    assert one_line(excinfo).startswith("data source 'stacked': run 'layer1' streams its samples from disk")


# --------------------------------------------------------------------------- pairs

TRANSCODER = """
model shard_transcoder
data shards("x.npy", target = "y.npy")
input x[d]
target y[e]
latent z[16] >= 0
param D[e, 16] constrain col_norm == 1
param E[16, d] init normal(0.3)
param b[16] init zeros
encoder z = topk(relu(E @ x + b), 6)
energy
  recon : sqerr(y, D @ z)
infer z by encoder
train
  optimizer adam(lr = 1e-2)
  batch 50
  epochs 10
"""


def test_target_shards_pair_each_sample_with_its_target_row(tmp_path):
    x, y = activations(103), activations(103, seed=1)[:, :4]
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    data = load_data("shards", ("x.npy",), {"target": "y.npy"}, base_dir=tmp_path)
    assert tuple(describe_source("shards", ("x.npy",), {"target": "y.npy"}, base_dir=tmp_path)) == ((WIDTH,), None, (4,))
    positions = torch.tensor([7, 0, 50, 81])
    x_train, _ = index_split(x)
    y_train, y_test = index_split(y)
    np.testing.assert_array_equal(data.x_train[positions].numpy(), x_train[positions.numpy()])
    np.testing.assert_array_equal(data.target_train[positions].numpy(), y_train[positions.numpy()])
    np.testing.assert_array_equal(data.target_test.numpy(), y_test)


def test_targets_of_another_length_are_refused_in_one_line(tmp_path):
    np.save(tmp_path / "x.npy", activations(103))
    np.save(tmp_path / "y.npy", activations(90))
    with pytest.raises(DataError) as excinfo:
        load_data("shards", ("x.npy",), {"target": "y.npy"}, base_dir=tmp_path)
    assert "90 rows" in one_line(excinfo) and "103" in one_line(excinfo)


def test_a_transcoder_trains_on_target_shards(tmp_path):
    x = activations(400)
    y = (x @ np.random.default_rng(2).standard_normal((WIDTH, 3))).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    (tmp_path / "t.energy").write_text(TRANSCODER)
    out = tmp_path / "run"
    assert main(["run", str(tmp_path / "t.energy"), "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["fvu"] < 0.1  # of y, held out: the map from the samples to their targets is learned
    reloaded = energydsl.load_run(out)
    assert reloaded.program.target.shape == (3,)


def test_data_given_on_the_command_line_is_found_from_the_working_directory(tmp_path, monkeypatch):
    """A data line's paths start from the spec's folder; --data's, from where the command is typed."""
    (tmp_path / "specs").mkdir()
    (tmp_path / "work").mkdir()
    spec = tmp_path / "specs" / "sae.energy"
    spec.write_text(SAE.replace("epochs 3", "epochs 1"))
    np.save(tmp_path / "work" / "mine.npy", activations(300))
    monkeypatch.chdir(tmp_path / "work")
    out = tmp_path / "run"
    assert main(["run", str(spec), "--data", 'shards("mine.npy")', "--out", str(out), "--quiet"]) == 0
    assert f'shards("{(tmp_path / "work" / "mine.npy").as_posix()}")' in (out / "spec.energy").read_text()
    monkeypatch.chdir(tmp_path)  # the saved spec names the file absolutely: the run reopens from anywhere
    assert main(["eval", str(out)]) == 0
