"""The log-density histogram of unit firing (firing.png) and its place in the report."""

from __future__ import annotations

import numpy as np
import torch

import energydsl
from energydsl.reporting.report import write_report
from energydsl.reporting.viz import firing_png, write_pictures

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

SPEC = """
data synthetic(dim = 6, atoms = 8, count = 200, k = 3, seed = 1)
input x[6]
latent z[5]
param D[6, 5]
param E[5, 6] init D.T
encoder z = relu(E @ x)
energy
  recon : 0.5 * sqerr(x, D @ z)
infer z by encoder
"""


def read_png(path):
    from matplotlib.image import imread

    return imread(path, format="png")


def test_firing_picture_is_a_valid_png_with_a_bin_for_silent_units(tmp_path):
    density = np.array([0.0, 0.0, 1e-3, 0.02, 0.3, 0.9])
    path = firing_png(density, tmp_path / "firing.png", dead=2)
    assert path.read_bytes().startswith(PNG_SIGNATURE)
    image = read_png(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert image[..., :3].std() > 0.05  # something is drawn
    # every unit silent, or none: still a picture
    assert firing_png(np.zeros(4), tmp_path / "silent.png").read_bytes().startswith(PNG_SIGNATURE)
    assert firing_png(np.ones(4), tmp_path / "busy.png").read_bytes().startswith(PNG_SIGNATURE)


def test_run_pictures_include_the_firing_histogram_shown_in_the_report(tmp_path):
    model = energydsl.load(SPEC)
    written = write_pictures(model, tmp_path, density=torch.tensor([0.0, 0.1, 0.2, 0.5, 1.0]))
    assert tmp_path / "firing.png" in written
    assert read_png(tmp_path / "firing.png").shape[0] > 100
    page = write_report(tmp_path, {"spec": "s", "fvu": 0.25, "units.dense": 3}, [], written, "").read_text()
    assert "firing.png</b>: Log-density histogram of unit firing" in page
    assert "<td>fvu</td><td>0.25</td>" in page and "<td>units.dense</td><td>3</td>" in page
