# Copyright (c) dlka_monai contributors. Licensed under the Apache License, Version 2.0.
"""Pure-PyTorch 3D deformable convolution (the semantics of the D3D extension used by D-LKA Net).

No compiled extension: sampling is a vectorised gather over all output voxels and kernel points,
followed by one GEMM, so it runs wherever PyTorch runs (CPU, CUDA) and is differentiable by autograd
in the input, the offsets, the weight and the bias.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch.nn.modules.utils import _triple

__all__ = ["deform_conv3d"]

# (dz, dy, dx) of the 8 corners of a trilinear cell
_CORNERS = [(dz, dy, dx) for dz in (0, 1) for dy in (0, 1) for dx in (0, 1)]


def _out_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _check_args(input, offset, weight, stride, padding, dilation, groups):
    """Validate the shapes of a deformable conv call; returns the sizes both implementations need."""
    if input.dim() != 5 or offset.dim() != 5 or weight.dim() != 5:
        raise ValueError(
            "deform_conv3d expects 5D input, offset and weight, got "
            f"{tuple(input.shape)}, {tuple(offset.shape)}, {tuple(weight.shape)}."
        )
    batch, in_ch, *size = input.shape
    out_ch, in_per_group, *kernel = weight.shape
    if in_ch != in_per_group * groups or out_ch % groups:
        raise ValueError(
            f"weight {tuple(weight.shape)} with groups={groups} does not fit {in_ch} input channels."
        )
    n_points = math.prod(kernel)
    out_size = [_out_size(*a) for a in zip(size, kernel, stride, padding, dilation)]
    if offset.shape[0] != batch or offset.shape[1] != 3 * n_points or list(offset.shape[2:]) != out_size:
        raise ValueError(
            f"offset must be [{batch}, {3 * n_points}, {', '.join(map(str, out_size))}] for input "
            f"{tuple(input.shape)} and kernel {tuple(kernel)}, got {tuple(offset.shape)}."
        )
    return batch, in_ch, size, out_ch, in_per_group, kernel, n_points, out_size


def deform_conv3d(
    input: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
) -> torch.Tensor:
    """3D deformable convolution without modulation mask.

    Kernel point ``k = (i * kh + j) * kw + l`` of output voxel ``(z, y, x)`` reads the input at
    ``(z * sd - pd + i * dd + offset[:, 3k], y * sh - ph + j * dh + offset[:, 3k + 1],
    x * sw - pw + l * dw + offset[:, 3k + 2])`` with trilinear interpolation; corners outside the
    volume contribute zero. With zero offsets this is exactly ``F.conv3d``.

    Args:
        input: ``[B, C_in, D, H, W]``.
        offset: ``[B, 3 * kd * kh * kw, D', H', W']``, one (d, h, w) triplet per kernel point in
            kernel order, in voxels; ``D', H', W'`` is the output size.
        weight: ``[C_out, C_in // groups, kd, kh, kw]``.
        bias: ``[C_out]`` or None.
        stride, padding, dilation: int or 3 ints, as in ``F.conv3d``.
        groups: channel groups, as in ``F.conv3d`` (the offsets are shared by all groups).

    Returns:
        ``[B, C_out, D', H', W']``.
    """
    stride, padding, dilation = _triple(stride), _triple(padding), _triple(dilation)
    batch, in_ch, size, out_ch, in_per_group, kernel, n_points, out_size = _check_args(
        input, offset, weight, stride, padding, dilation, groups
    )
    n_out = math.prod(out_size)
    # sampling positions are computed in at least float32: fp16 cannot hold fractional voxel indices
    pos_dtype = torch.promote_types(offset.dtype, torch.float32)
    device = input.device

    # regular grid positions per axis: [K, N] for each of (z, y, x)
    axes = []
    for ax in range(3):
        out_coord = torch.arange(out_size[ax], device=device, dtype=pos_dtype) * stride[ax] - padding[ax]
        k_coord = torch.arange(kernel[ax], device=device, dtype=pos_dtype) * dilation[ax]
        axes.append((out_coord, k_coord))
    grids = []
    for ax, (out_coord, k_coord) in enumerate(axes):
        o_shape = [1, 1, 1]
        o_shape[ax] = -1
        k_shape = [1, 1, 1]
        k_shape[ax] = -1
        o = out_coord.view(o_shape).expand(out_size).reshape(1, -1)
        k = k_coord.view(k_shape).expand(kernel).reshape(-1, 1)
        grids.append(k + o)
    base = torch.stack(grids, dim=1)  # [K, 3, N]
    pos = base.unsqueeze(0) + offset.reshape(batch, n_points, 3, n_out).to(pos_dtype)  # [B, K, 3, N]

    floor = pos.floor()
    frac = pos - floor
    floor = floor.long()
    size_t = torch.tensor(size, device=device).view(1, 1, 3, 1)

    # channels-last rows so each gather reads C contiguous values
    rows = input.permute(0, 2, 3, 4, 1).reshape(-1, in_ch)
    batch_start = (torch.arange(batch, device=device) * math.prod(size)).view(batch, 1, 1)

    cols = None
    for corner in _CORNERS:
        shift = torch.tensor(corner, device=device).view(1, 1, 3, 1)
        idx = floor + shift
        valid = ((idx >= 0) & (idx < size_t)).all(dim=2)  # [B, K, N]
        w_axes = torch.where(shift.bool(), frac, 1 - frac)
        w = w_axes.prod(dim=2) * valid  # [B, K, N]
        idx = torch.minimum(idx.clamp(min=0), size_t - 1)
        lin = (idx[:, :, 0] * size[1] + idx[:, :, 1]) * size[2] + idx[:, :, 2] + batch_start
        vals = rows.index_select(0, lin.reshape(-1)).view(batch, n_points, n_out, in_ch)
        term = vals * w.to(input.dtype).unsqueeze(-1)
        cols = term if cols is None else cols + term

    # cols [B, K, N, C] -> GEMM with weight [C_out, C_in/g, K]
    out_per_group = out_ch // groups
    cols = cols.view(batch, n_points, n_out, groups, in_per_group)
    w_mat = weight.reshape(groups, out_per_group, in_per_group, n_points)
    out = torch.einsum("bkngc,gock->bgon", cols, w_mat).reshape(batch, out_ch, *out_size)
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1, 1)
    return out
