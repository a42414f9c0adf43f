"""The orientation maps a trained model learned, and their pinwheels (energydsl.ops.orientation).

A model has orientation maps when its filters are image patches laid out on a 2-D map:

- a decoder whose columns are patches (the input an image ``[c, h, w]``, ``[h, w]``, or a square
  number of values) and a map (``graph M = grid(r, c)`` or ``torus(r, c)``) with one node per
  column: one map, named after the structure (``M``), periodic on a torus;
- a locally connected decoder ``local_t(D, z)``, ``D[maps, H', W', c, kh, kw]``: each of its maps
  is an H' × W' grid of filters, one per position (not periodic), named after the kernel (``D``).

Its figures, in ``summary.json`` and the report (``<name>`` as above; the maps of one kernel pooled):

- ``<name>.pinwheels``: plaquettes around which the orientation winds by ±180° (every plaquette
  counts, however unselective its corners);
- ``<name>.pinwheel_charge``: their total charge, +½ each positive one, −½ each negative one;
- ``<name>.orientation_period``: Λ, the mean orientation period in units of the map (the
  maps' mean, for a kernel);
- ``<name>.pinwheel_density``: pinwheels per Λ² (V1 measures about π); this and Λ are left out
  for a map of one orientation (no period);
- ``<name>.orientation_difference_deg``: the mean |Δθ| between neighbours, in degrees (45 for a
  random map);
- ``<name>.orientation_smoothness``: 1 − that mean over the mean |Δθ| of all pairs (0 random, 1 constant);
- ``<name>.orientation_selectivity``: the mean selectivity of the filters (0 unoriented, 1 a grating).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from energydsl.ops.orientation import Pinwheels, filter_orientations, pinwheels


@dataclass(frozen=True)
class OrientationMap:
    """One map of filter orientations: θ and selectivity ``(rows, cols)``, and what was measured."""

    title: str
    theta: np.ndarray
    selectivity: np.ndarray
    periodic: bool
    measured: Pinwheels


def orientation_maps(model) -> dict[str, list[OrientationMap]]:
    """The model's orientation maps by name (module docstring); empty when it has none."""
    program = model.program
    decoder, kernel = program.roles.decoder, program.roles.kernel_decoder
    maps: dict[str, list[OrientationMap]] = {}
    patch = _patch_shape(tuple(program.reconstructed.shape))
    if decoder is not None and patch is not None:
        columns = model.params[decoder].detach().cpu().numpy()
        for name, structure in program.structures.items():
            if structure.shape is not None and structure.size == columns.shape[1]:
                filters = columns.T.reshape(-1, *patch)
                maps[name] = [_measure(f"{structure.kind} {name}", filters, structure.shape, structure.kind == "torus")]
    if kernel is not None and model.params[kernel].dim() == 6:
        weights = model.params[kernel].detach().cpu().numpy()  # [maps, H', W', c, kh, kw]
        positions = tuple(weights.shape[1:3])
        maps[kernel] = [_measure(f"{kernel}, map {m}", weights[m].reshape(-1, *weights.shape[3:]), positions, False)
                        for m in range(weights.shape[0])]  # fmt: skip
    return maps


def orientation_metrics(maps: dict[str, list[OrientationMap]]) -> dict[str, float]:
    """The figures of each named family of maps (module docstring), rounded for the summary."""
    metrics: dict[str, float] = {}
    for name, family in maps.items():
        measured = [m.measured for m in family]
        count = sum(p.count for p in measured)
        area = sum(p.area for p in measured)
        periods = [p.period for p in measured if math.isfinite(p.period)]
        period = float(np.mean(periods)) if periods else math.inf
        density = count * period**2 / area if area and math.isfinite(period) else math.nan
        neighbours = float(np.mean([p.neighbour_difference for p in measured]))
        pairs = float(np.mean([p.pair_difference for p in measured]))
        figures = {
            "pinwheels": count,
            "pinwheel_charge": sum(p.charge for p in measured),
            "orientation_period": period,
            "pinwheel_density": density,
            "orientation_difference_deg": math.degrees(neighbours),
            "orientation_smoothness": 1 - neighbours / pairs if pairs > 0 else 1.0,
            "orientation_selectivity": float(np.mean([m.selectivity.mean() for m in family])),
        }
        # a constant map has no period, so no density: left out rather than written as NaN
        metrics.update({f"{name}.{key}": round(value, 6) if isinstance(value, float) else value
                        for key, value in figures.items() if math.isfinite(value)})  # fmt: skip
    return metrics


def _measure(title: str, filters, shape: tuple[int, int], periodic: bool) -> OrientationMap:
    theta, selectivity = filter_orientations(filters)
    theta, selectivity = theta.reshape(shape), selectivity.reshape(shape)
    return OrientationMap(title, theta, selectivity, periodic, pinwheels(theta, periodic))


def _patch_shape(shape: tuple[int, ...]) -> tuple[int, int, int] | None:
    """How one decoder column reads as an image ``(c, h, w)``: from ``[c, h, w]``, ``[h, w]`` or a
    square number of values; None when it does not."""
    if len(shape) == 3:
        patch = shape
    elif len(shape) == 2:
        patch = (1, *shape)
    else:
        side = math.isqrt(math.prod(shape))
        patch = (1, side, side) if side * side == math.prod(shape) else None
    return patch if patch is not None and min(patch[1:]) >= 2 else None
