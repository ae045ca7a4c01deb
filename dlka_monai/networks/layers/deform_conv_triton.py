# Copyright (c) dlka_monai contributors. Licensed under the Apache License, Version 2.0.
"""Triton CUDA kernels of the 3D deformable convolution (D3D semantics, no mask, groups=1).

The CUDA path of :func:`~dlka_monai.networks.layers.deform_conv_fast.deform_conv3d_fast` when Triton
is installed; the three kernels of
:class:`~dlka_monai.networks.layers.deform_conv_fast._ColumnsDeformConv3dFn`, as
:mod:`~dlka_monai.networks.layers.deform_conv_numba` provides them on CPU.
Per image and chunk of output voxels, each program handles a block of output voxels and one kernel
point: it computes the 8 corner rows and trilinear weights once and then loops over the channels of
the zero-padded channels-last input table in blocks of ``BLOCK_C``:

* forward: one kernel blends the 8 corners into the columns ``[n, K * C_in]``; one GEMM follows;
* backward: ``grad_cols = grad_out @ weight`` (GEMM); one kernel gets the offset gradient from the 8
  corner dot products with ``grad_cols`` (and rebuilds the columns in the same pass when the weight
  gradient needs them: ``grad_weight += grad_out^T @ cols``, a GEMM); another scatters the input
  gradient into the padded gradient table with ``tl.atomic_add``.

Sampling follows the numba kernels' rule (the same clamping into the one-voxel zero padding, the
positions computed in the offsets' precision); the trilinear weights are formed in the input's dtype
(as the pure-PyTorch path does), so results agree with the reference to float rounding. Under
``TRITON_INTERPRET=1`` (set before this module is imported) the kernels also run on CPU tensors,
which is how the tests check them without a GPU.
"""

from __future__ import annotations

import contextlib
import math

import torch
import triton
import triton.language as tl

from dlka_monai.networks.layers.deform_conv_fast import _ColumnsDeformConv3dFn

__all__ = ["deform_conv3d_triton"]

# output voxels per program; channels per inner step at most _MAX_BLOCK_C (register pressure)
_BLOCK_N = 32
_MAX_BLOCK_C = 64


@triton.jit
def _cell(pos, size):
    """Padded floor index (``0 .. size``, int64), fraction (``[0, 1]``) and ``inside`` flag of one
    coordinate, as ``_cell`` of the numba kernels."""
    f = tl.floor(pos)
    inside = (pos >= -1) & (pos < size)
    f = tl.minimum(tl.maximum(f, -1.0), size - 1.0)
    frac = tl.minimum(tl.maximum(pos - f, 0.0), 1.0)
    # the integer clamp keeps NaN positions (whose float clamp is undefined) inside the table
    idx = tl.minimum(tl.maximum(f.to(tl.int64) + 1, 0), size)
    return idx, frac, inside


@triton.jit
def _sampling(off_ptr, start, n, k, n_out, out_h, out_w, kh, kw, sd, sh, sw, pd, ph, pw, dd, dh, dw, D, H, W, BLOCK_N: tl.constexpr):
    """Voxel indices (chunk-relative, int64) and mask of this program's block; table row of corner 0 of
    each sampling cell, per-axis fractions and ``inside`` flags for kernel point ``k``."""
    i = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = i < n
    v = start + i
    oz = v // (out_h * out_w)
    oy = (v // out_w) % out_h
    ox = v % out_w
    kz = k // (kh * kw)
    ky = (k // kw) % kh
    kx = k % kw
    # offsets of kernel point k: channels 3k, 3k + 1, 3k + 2 of [3K, n_out]
    o = off_ptr + 3 * k.to(tl.int64) * n_out + v
    off_z = tl.load(o, mask=mask_n, other=0.0)
    off_y = tl.load(o + n_out, mask=mask_n, other=0.0)
    off_x = tl.load(o + 2 * n_out, mask=mask_n, other=0.0)
    # exact integer base + offset, in the offsets' precision, as the reference computes it
    cz, fz, inz = _cell((oz * sd - pd + kz * dd).to(off_z.dtype) + off_z, D)
    cy, fy, iny = _cell((oy * sh - ph + ky * dh).to(off_y.dtype) + off_y, H)
    cx, fx, inx = _cell((ox * sw - pw + kx * dw).to(off_x.dtype) + off_x, W)
    row = (cz * (H + 2) + cy) * (W + 2) + cx
    return i, mask_n, row, fz, fy, fx, inz, iny, inx


@triton.jit
def _corner_rows(row, C, H, W):
    """Element offsets ``[BLOCK_N, 1]`` (int64: the table can exceed 2^31 elements) of corners 0, 2, 4
    and 6 of each cell in a channels-last table of ``C`` channels; corner ``j + 1`` is ``C`` further."""
    sy = W + 2
    sz = (H + 2) * sy
    return (row * C)[:, None], ((row + sy) * C)[:, None], ((row + sz) * C)[:, None], ((row + sz + sy) * C)[:, None]


@triton.jit
def _forward_cols_kernel(
    table_ptr, off_ptr, cols_ptr, start, n, C, n_points, n_out, out_h, out_w, kh, kw,
    sd, sh, sw, pd, ph, pw, dd, dh, dw, D, H, W,
    BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """``cols[i, k * C:(k + 1) * C]`` = trilinear sample of kernel point ``k = program_id(1)`` of voxel
    ``start + i``; ``cols``: ``[n, K * C]``, ``table``: ``[(D+2)(H+2)(W+2), C]``."""
    k = tl.program_id(1)
    i, mask_n, row, fz, fy, fx, _, _, _ = _sampling(
        off_ptr, start, n, k, n_out, out_h, out_w, kh, kw, sd, sh, sw, pd, ph, pw, dd, dh, dw, D, H, W, BLOCK_N
    )
    dtype = table_ptr.dtype.element_ty
    fz, fy, fx = fz.to(dtype), fy.to(dtype), fx.to(dtype)
    gz, gy, gx = 1 - fz, 1 - fy, 1 - fx
    # 8 weights and rows, corner 4 dz + 2 dy + dx, as [BLOCK_N, 1] columns for the channel blocks
    w0, w1, w2, w3 = (gz * gy * gx)[:, None], (gz * gy * fx)[:, None], (gz * fy * gx)[:, None], (gz * fy * fx)[:, None]
    w4, w5, w6, w7 = (fz * gy * gx)[:, None], (fz * gy * fx)[:, None], (fz * fy * gx)[:, None], (fz * fy * fx)[:, None]
    r0, ry, rz, rzy = _corner_rows(row, C, H, W)
    dst = cols_ptr + (i * n_points * C + k * C)[:, None]
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        m = mask_n[:, None] & (c < C)[None, :]
        t = table_ptr + c[None, :]
        acc = w0 * tl.load(t + r0, mask=m, other=0.0)
        acc += w1 * tl.load(t + r0 + C, mask=m, other=0.0)
        acc += w2 * tl.load(t + ry, mask=m, other=0.0)
        acc += w3 * tl.load(t + ry + C, mask=m, other=0.0)
        acc += w4 * tl.load(t + rz, mask=m, other=0.0)
        acc += w5 * tl.load(t + rz + C, mask=m, other=0.0)
        acc += w6 * tl.load(t + rzy, mask=m, other=0.0)
        acc += w7 * tl.load(t + rzy + C, mask=m, other=0.0)
        tl.store(dst + c[None, :], acc, mask=m)


@triton.jit
def _offset_grad_kernel(
    table_ptr, off_ptr, grad_cols_ptr, grad_off_ptr, cols_ptr, start, n, C, n_points, n_out, out_h, out_w, kh, kw,
    sd, sh, sw, pd, ph, pw, dd, dh, dw, D, H, W,
    NEED_COLS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """``grad_off[3k + a, start + i]`` from the dot products of ``grad_cols`` with the 8 corner values
    (derivatives of the trilinear weights, zero where the coordinate leaves ``[-1, size)``); also
    refills ``cols`` as :func:`_forward_cols_kernel` does when ``NEED_COLS``."""
    k = tl.program_id(1)
    i, mask_n, row, fz, fy, fx, inz, iny, inx = _sampling(
        off_ptr, start, n, k, n_out, out_h, out_w, kh, kw, sd, sh, sw, pd, ph, pw, dd, dh, dw, D, H, W, BLOCK_N
    )
    dtype = table_ptr.dtype.element_ty
    fz, fy, fx = fz.to(dtype), fy.to(dtype), fx.to(dtype)
    gz, gy, gx = 1 - fz, 1 - fy, 1 - fx
    r0, ry, rz, rzy = _corner_rows(row, C, H, W)
    col_off = (i * n_points * C + k * C)[:, None]
    d0 = tl.zeros([BLOCK_N], dtype)
    d1, d2, d3, d4, d5, d6, d7 = d0, d0, d0, d0, d0, d0, d0
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        m = mask_n[:, None] & (c < C)[None, :]
        t = table_ptr + c[None, :]
        t0 = tl.load(t + r0, mask=m, other=0.0)
        t1 = tl.load(t + r0 + C, mask=m, other=0.0)
        t2 = tl.load(t + ry, mask=m, other=0.0)
        t3 = tl.load(t + ry + C, mask=m, other=0.0)
        t4 = tl.load(t + rz, mask=m, other=0.0)
        t5 = tl.load(t + rz + C, mask=m, other=0.0)
        t6 = tl.load(t + rzy, mask=m, other=0.0)
        t7 = tl.load(t + rzy + C, mask=m, other=0.0)
        g = tl.load(grad_cols_ptr + col_off + c[None, :], mask=m, other=0.0)
        d0 += tl.sum(g * t0, axis=1)
        d1 += tl.sum(g * t1, axis=1)
        d2 += tl.sum(g * t2, axis=1)
        d3 += tl.sum(g * t3, axis=1)
        d4 += tl.sum(g * t4, axis=1)
        d5 += tl.sum(g * t5, axis=1)
        d6 += tl.sum(g * t6, axis=1)
        d7 += tl.sum(g * t7, axis=1)
        if NEED_COLS:
            acc = (gz * gy * gx)[:, None] * t0 + (gz * gy * fx)[:, None] * t1
            acc += (gz * fy * gx)[:, None] * t2 + (gz * fy * fx)[:, None] * t3
            acc += (fz * gy * gx)[:, None] * t4 + (fz * gy * fx)[:, None] * t5
            acc += (fz * fy * gx)[:, None] * t6 + (fz * fy * fx)[:, None] * t7
            tl.store(cols_ptr + col_off + c[None, :], acc, mask=m)
    # corner j = 4 * dz + 2 * dy + dx
    gdz = gy * (gx * (d4 - d0) + fx * (d5 - d1)) + fy * (gx * (d6 - d2) + fx * (d7 - d3))
    gdy = gz * (gx * (d2 - d0) + fx * (d3 - d1)) + fz * (gx * (d6 - d4) + fx * (d7 - d5))
    gdx = gz * (gy * (d1 - d0) + fy * (d3 - d2)) + fz * (gy * (d5 - d4) + fy * (d7 - d6))
    out_dtype = grad_off_ptr.dtype.element_ty
    o = grad_off_ptr + 3 * k.to(tl.int64) * n_out + start + i
    tl.store(o, tl.where(inz, gdz, 0.0).to(out_dtype), mask=mask_n)
    tl.store(o + n_out, tl.where(iny, gdy, 0.0).to(out_dtype), mask=mask_n)
    tl.store(o + 2 * n_out, tl.where(inx, gdx, 0.0).to(out_dtype), mask=mask_n)


@triton.jit
def _scatter_corner(dst, w, src, m):
    """``dst += w * src`` for the rows whose weight is non-zero (as the numba kernel skips them, so a
    zero weight does not turn an inf gradient into NaN)."""
    tl.atomic_add(dst, w[:, None] * src, mask=m & (w != 0)[:, None], sem="relaxed")


@triton.jit
def _input_grad_kernel(
    off_ptr, grad_cols_ptr, grad_table_ptr, start, n, C, n_points, n_out, out_h, out_w, kh, kw,
    sd, sh, sw, pd, ph, pw, dd, dh, dw, D, H, W,
    BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """``grad_table[corner rows] += weight * grad_cols`` with atomic adds (programs of different voxels
    and kernel points hit the same rows); ``grad_table``: ``[(D+2)(H+2)(W+2), C]``."""
    k = tl.program_id(1)
    i, mask_n, row, fz, fy, fx, _, _, _ = _sampling(
        off_ptr, start, n, k, n_out, out_h, out_w, kh, kw, sd, sh, sw, pd, ph, pw, dd, dh, dw, D, H, W, BLOCK_N
    )
    dtype = grad_table_ptr.dtype.element_ty
    fz, fy, fx = fz.to(dtype), fy.to(dtype), fx.to(dtype)
    gz, gy, gx = 1 - fz, 1 - fy, 1 - fx
    r0, ry, rz, rzy = _corner_rows(row, C, H, W)
    col_off = (i * n_points * C + k * C)[:, None]
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        m = mask_n[:, None] & (c < C)[None, :]
        g = tl.load(grad_cols_ptr + col_off + c[None, :], mask=m, other=0.0)
        t = grad_table_ptr + c[None, :]
        _scatter_corner(t + r0, gz * gy * gx, g, m)
        _scatter_corner(t + r0 + C, gz * gy * fx, g, m)
        _scatter_corner(t + ry, gz * fy * gx, g, m)
        _scatter_corner(t + ry + C, gz * fy * fx, g, m)
        _scatter_corner(t + rz, fz * gy * gx, g, m)
        _scatter_corner(t + rz + C, fz * gy * fx, g, m)
        _scatter_corner(t + rzy, fz * fy * gx, g, m)
        _scatter_corner(t + rzy + C, fz * fy * fx, g, m)


class _Launch:
    """Per-call launch constants: the kernels' geometry arguments, block sizes and the grid per chunk."""

    def __init__(self, in_ch, size, out_size, kernel, stride, padding, dilation):
        self.n_points = math.prod(kernel)
        self.n_out = math.prod(out_size)
        self.geo = (
            in_ch, self.n_points, self.n_out, out_size[1], out_size[2], kernel[1], kernel[2],
            *stride, *padding, *dilation, *size,
        )  # fmt: skip
        self.blocks = dict(BLOCK_N=_BLOCK_N, BLOCK_C=min(triton.next_power_of_2(in_ch), _MAX_BLOCK_C))

    def grid(self, n):
        return (triton.cdiv(n, self.blocks["BLOCK_N"]), self.n_points)


class _TritonKernels:
    """This module's kernels for one call of :class:`_ColumnsDeformConv3dFn`."""

    def __init__(self, off, in_ch, size, out_size, kernel, stride, padding, dilation):
        self.off = off
        self.lc = _Launch(in_ch, size, out_size, kernel, stride, padding, dilation)

    def forward_cols(self, b, table, start, cols):
        lc, n = self.lc, cols.shape[0]
        _forward_cols_kernel[lc.grid(n)](table, self.off[b], cols, start, n, *lc.geo, **lc.blocks)

    def backward_cols(self, b, table, start, grad_cols, grad_off, cols, grad_table):
        lc, n = self.lc, grad_cols.shape[0]
        if grad_off is not None:
            _offset_grad_kernel[lc.grid(n)](
                table, self.off[b], grad_cols, grad_off[b], grad_cols if cols is None else cols, start, n, *lc.geo,
                NEED_COLS=cols is not None, **lc.blocks,
            )  # fmt: skip
        elif cols is not None:
            self.forward_cols(b, table, start, cols)
        if grad_table is not None:
            _input_grad_kernel[lc.grid(n)](self.off[b], grad_cols, grad_table, start, n, *lc.geo, **lc.blocks)

    def reduce_input_grad(self, grad_table):
        """Nothing kept aside: the input-gradient kernel adds into ``grad_table`` atomically."""


class _DeformConv3dTritonFn(_ColumnsDeformConv3dFn):
    """:class:`_ColumnsDeformConv3dFn` with the Triton kernels (its name marks the path in the graph)."""


def deform_conv3d_triton(input, offset, weight, bias, stride, padding, dilation) -> torch.Tensor:
    """:func:`~dlka_monai.networks.layers.deform_conv.deform_conv3d` with ``groups=1`` on contiguous
    float32/float64 CUDA tensors of one dtype, computed by the Triton kernels of this module.

    Args:
        input: ``[B, C_in, D, H, W]``.
        offset: ``[B, 3 * kd * kh * kw, D', H', W']`` in voxels, (d, h, w) per kernel point.
        weight: ``[C_out, C_in, kd, kh, kw]``.
        bias: ``[C_out]`` or None.
        stride, padding, dilation: 3 ints each.

    Returns:
        ``[B, C_out, D', H', W']``.
    """
    # Triton launches on the current device (autograd's device threads set it for backward)
    with torch.cuda.device(input.device) if input.is_cuda else contextlib.nullcontext():
        return _DeformConv3dTritonFn.apply(_TritonKernels, input, offset, weight, bias, stride, padding, dilation)
