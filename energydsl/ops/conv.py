"""Image operators of the expression language: convolutions and locally connected maps.

An image-shaped value is ``[C, H, W]`` per sample (channels or feature maps, rows,
columns); as a tensor it is ``(B, C, H, W)``.  An image-shaped latent is stored flat,
``(B, C·H·W)`` in channel-major order, so that inference, the prox of its terms and
its pools work on vectors as they do for any latent; reading it in an expression
gives the image (:mod:`energydsl.compiler`).

Each operator is linear in its image argument and comes with its adjoint:

- ``conv(K, v)``, K ``[out, in, kh, kw]``: the cross-correlation of PyTorch's
  ``conv2d``, ``[in, H, W] → [out, H', W']``;
- ``conv_t(K, v)``, the same K: its transpose (adjoint), ``[out, H', W'] → [in, H, W]``,
  the natural decoder from code maps to an image (as ``K.T @ z`` is for a matrix);
- ``local(K, v)``, K ``[out, H', W', in, kh, kw]``: a locally connected map, one filter
  per output map *and position*, no weight sharing;
- ``local_t(K, v)``: its transpose.

This module holds the shape rules (checked when a spec compiles) and the tensor
functions; :mod:`energydsl.expr.compiler` binds them to the language.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

# name → (kernel rank, one line for the language reference)
OPERATORS = {
    "conv": (4, (
        "``conv(K, v, stride = 1, padding = 0)``: 2-D convolution (cross-correlation, as PyTorch's "
        "conv2d) of a per-sample image v [in, H, W] with a kernel K [out, in, kh, kw] → "
        "[out, (H + 2·padding − kh)/stride + 1, …]"
    )),
    "conv_t": (4, (
        "``conv_t(K, v, stride = 1, padding = 0)``: the transposed convolution, the adjoint of "
        "conv(K, ·) with the same K [maps, channels, kh, kw]: code maps v [maps, H, W] → an image "
        "[channels, (H − 1)·stride − 2·padding + kh, …]; the decoder of a convolutional model"
    )),
    "local": (6, (
        "``local(K, v, stride = 1, padding = 0)``: a locally connected map, a convolution whose "
        "filters are not shared across positions: K [out, H', W', in, kh, kw] holds one filter per "
        "output map and position; v [in, H, W] → [out, H', W']"
    )),
    "local_t": (6, (
        "``local_t(K, v, stride = 1, padding = 0)``: the adjoint of local(K, ·), with the same K "
        "[maps, H', W', channels, kh, kw]: code maps v [maps, H', W'] → an image [channels, H, W]"
    )),
}
OPTIONS = ("stride", "padding")


@dataclass(frozen=True)
class Geometry:
    """stride and padding of one operator, the same along rows and columns."""

    stride: int = 1
    padding: int = 0

    def forward_size(self, size: int, kernel: int) -> int:
        """Output rows of a convolution of ``size`` rows (may be < 1: nothing fits)."""
        return (size + 2 * self.padding - kernel) // self.stride + 1

    def transposed_size(self, size: int, kernel: int) -> int:
        """Output rows of the transposed convolution of ``size`` rows."""
        return (size - 1) * self.stride - 2 * self.padding + kernel


def output_shape(name: str, kernel: tuple[int, ...], image: tuple[int, ...], geometry: Geometry) -> tuple[int, ...]:
    """The per-sample shape of ``name(K, v)``; raises ``ValueError`` with the reason when the shapes do not fit."""
    channels, rows, cols = image
    if name in ("conv", "local"):
        out, needed = kernel[0], kernel[3 if name == "local" else 1]
        kh, kw = kernel[-2:]
        shape = (out, geometry.forward_size(rows, kh), geometry.forward_size(cols, kw))
    else:
        needed = kernel[0]
        kh, kw = kernel[-2:]
        out = kernel[3] if name == "local_t" else kernel[1]
        shape = (out, geometry.transposed_size(rows, kh), geometry.transposed_size(cols, kw))
    if channels != needed:
        side = "maps" if name.endswith("_t") else "input channels"
        raise ValueError(f"the kernel has {needed} {side}, the value [{channels}, {rows}, {cols}] has {channels}")
    if shape[1] < 1 or shape[2] < 1:
        raise ValueError(f"a {kh}x{kw} kernel does not fit a {rows}x{cols} image with padding {geometry.padding}")
    if name == "local" and tuple(kernel[1:3]) != shape[1:]:
        raise ValueError(f"the kernel has filters at {kernel[1]}x{kernel[2]} positions, but the output is "
                         f"{shape[1]}x{shape[2]}")
    if name == "local_t" and tuple(kernel[1:3]) != (rows, cols):
        raise ValueError(f"the kernel has filters at {kernel[1]}x{kernel[2]} positions, but the code maps are "
                         f"{rows}x{cols}")
    return shape


def apply(name: str, K: torch.Tensor, v: torch.Tensor, geometry: Geometry, out_shape: tuple[int, ...]) -> torch.Tensor:
    """``name(K, v)`` on a batch ``v`` of shape ``(B, C, H, W)``."""
    s, p = geometry.stride, geometry.padding
    if name == "conv":
        return F.conv2d(v, K, stride=s, padding=p)
    if name == "conv_t":
        return F.conv_transpose2d(v, K, stride=s, padding=p)
    if name == "local":
        return _local(K, v, geometry)
    return _local_t(K, v, geometry, out_shape[1:])


def _local(K: torch.Tensor, v: torch.Tensor, geometry: Geometry) -> torch.Tensor:
    out, rows, cols = K.shape[:3]
    kernel = K.shape[-2:]
    patches = F.unfold(v, kernel, stride=geometry.stride, padding=geometry.padding)  # (B, in·kh·kw, positions)
    filters = K.reshape(out, rows * cols, -1)  # (out, positions, in·kh·kw), unfold's order
    return torch.einsum("bkl,olk->bol", patches, filters).reshape(v.shape[0], out, rows, cols)


def _local_t(K: torch.Tensor, v: torch.Tensor, geometry: Geometry, size: tuple[int, int]) -> torch.Tensor:
    maps, rows, cols = K.shape[:3]
    filters = K.reshape(maps, rows * cols, -1)
    patches = torch.einsum("bol,olk->bkl", v.reshape(v.shape[0], maps, rows * cols), filters)
    return F.fold(patches, size, K.shape[-2:], stride=geometry.stride, padding=geometry.padding)


def l2_pool(z: torch.Tensor, size: int) -> torch.Tensor:
    """L2 pooling of feature maps ``(B, C, H, W)``: √(Σ z²) over non-overlapping size×size windows
    (rows and columns that do not fill a window are dropped)."""
    return (F.avg_pool2d(z * z, size) * (size * size)).sqrt()

