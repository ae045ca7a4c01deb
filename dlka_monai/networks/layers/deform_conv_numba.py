# Copyright (c) dlka_monai contributors. Licensed under the Apache License, Version 2.0.
"""numba CPU kernels of the 3D deformable convolution (D3D semantics, no mask, groups=1).

The CPU path of :func:`~dlka_monai.networks.layers.deform_conv_fast.deform_conv3d_fast` when numba is
installed. The loop over images and chunks of output voxels is
:class:`~dlka_monai.networks.layers.deform_conv_fast._ColumnsDeformConv3dFn`, shared with the Triton
kernels; this module provides its three kernels:

* forward: one kernel computes, for each output voxel and kernel point, the 8 corner rows and
  trilinear weights once (in registers) and blends all channels of the zero-padded channels-last input
  into the columns ``[n, K * C_in]``; one GEMM with the weight follows;
* backward: ``grad_cols = grad_out @ weight`` (GEMM); one kernel then gets the offset gradient from
  the 8 corner dot products with ``grad_cols`` (and rebuilds the columns in the same pass when the
  weight gradient needs them: ``grad_weight += grad_out^T @ cols``, a GEMM); another scatters the
  input gradient, partitioned over channel blocks so that no two threads write the same element.

Sampling follows the pure-PyTorch fast path's rule (the same clamping into the one-voxel zero padding,
the positions computed in the offsets' precision; the trilinear weights are formed in float64 and
rounded to the input's dtype). The kernels read and write the tensors' memory through
zero-copy NumPy views; the only copies are the padded channels-last input table and its gradient.
numba compiles them on first use per dtype and caches the machine code (``cache=True``).
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch
from numba import njit, prange

from dlka_monai.networks.layers.deform_conv_fast import _ColumnsDeformConv3dFn

__all__ = ["deform_conv3d_numba"]

# reassociation lets the compiler vectorise the channel loops and their dot products (no nnan/ninf:
# NaN and inf propagate as in the reference)
_FASTMATH = {"reassoc", "contract"}


@njit(inline="always")
def _cell(pos, size):
    """Clamped floor (padded index, ``0 .. size``), fraction and ``inside`` flag of one coordinate."""
    f = math.floor(pos)
    inside = pos >= -1 and pos < size
    f = min(max(f, -1.0), size - 1.0)
    frac = min(max(pos - f, 0.0), 1.0)
    return int(f) + 1, frac, inside


@njit(inline="always")
def _base(n, oz, oy, ox, out_hw, out_w):
    """Regular-grid position (z, y, x) of output voxel ``n`` before the kernel offsets."""
    return oz[n // out_hw], oy[(n // out_w) % (out_hw // out_w)], ox[n % out_w]


@njit(inline="always")
def _corners(off, b, k, n, pz, py, px, kz, ky, kx, size, pads, wbuf):
    """Table row of corner 0 of the sampling cell of output voxel ``n`` (grid position ``pz, py, px``),
    kernel point ``k``; fills ``wbuf`` (8 trilinear weights, table dtype, corner ``4 dz + 2 dy + dx``)
    and returns the per-axis fractions and ``inside`` flags."""
    # exact integer base + offset, in the offsets' precision, as the reference computes it
    cz, fz, inz = _cell(pz + kz[k] + off[b, 3 * k, n], size[0])
    cy, fy, iny = _cell(py + ky[k] + off[b, 3 * k + 1, n], size[1])
    cx, fx, inx = _cell(px + kx[k] + off[b, 3 * k + 2, n], size[2])
    row = (cz * pads[1] + cy) * pads[2] + cx
    gz, gy, gx = 1.0 - fz, 1.0 - fy, 1.0 - fx
    wbuf[0] = gz * gy * gx
    wbuf[1] = gz * gy * fx
    wbuf[2] = gz * fy * gx
    wbuf[3] = gz * fy * fx
    wbuf[4] = fz * gy * gx
    wbuf[5] = fz * gy * fx
    wbuf[6] = fz * fy * gx
    wbuf[7] = fz * fy * fx
    return row, fz, fy, fx, inz, iny, inx


@njit(parallel=True, cache=True, fastmath=_FASTMATH)
def _forward_cols(table, off, b, start, cols, oz, oy, ox, kz, ky, kx, out_hw, out_w, size, pads):
    """``cols[i, k * C:(k + 1) * C]`` = trilinear sample of kernel point ``k`` of voxel ``start + i``."""
    n_chunk, n_points = cols.shape[0], cols.shape[1]
    ch = table.shape[1]
    sz, sy = pads[1] * pads[2], pads[2]
    for i in prange(n_chunk):
        w = np.empty(8, table.dtype)
        pz, py, px = _base(start + i, oz, oy, ox, out_hw, out_w)
        for k in range(n_points):
            r, _, _, _, _, _, _ = _corners(off, b, k, start + i, pz, py, px, kz, ky, kx, size, pads, w)
            # scalars of the table's dtype: the compiler keeps them in registers and vectorises over c
            w0, w1, w2, w3, w4, w5, w6, w7 = w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]
            t0, t1, t2, t3 = table[r], table[r + 1], table[r + sy], table[r + sy + 1]
            t4, t5, t6, t7 = table[r + sz], table[r + sz + 1], table[r + sz + sy], table[r + sz + sy + 1]
            col = cols[i, k]
            for c in range(ch):
                col[c] = w0 * t0[c] + w1 * t1[c] + w2 * t2[c] + w3 * t3[c] + w4 * t4[c] + w5 * t5[c] + w6 * t6[c] + w7 * t7[c]


@njit(parallel=True, cache=True, fastmath=_FASTMATH)
def _offset_grad(table, off, b, start, grad_cols, grad_off, cols, need_cols, oz, oy, ox, kz, ky, kx, out_hw, out_w, size, pads):
    """``grad_off[b, 3k + a, start + i]`` from the dot products of ``grad_cols`` with the 8 corner values
    (derivatives of the trilinear weights, zero where the coordinate leaves ``[-1, size)``); also
    refills ``cols`` as :func:`_forward_cols` does when ``need_cols``."""
    n_chunk, n_points = grad_cols.shape[0], grad_cols.shape[1]
    ch = table.shape[1]
    sz, sy = pads[1] * pads[2], pads[2]
    for i in prange(n_chunk):
        w = np.empty(8, table.dtype)
        pz, py, px = _base(start + i, oz, oy, ox, out_hw, out_w)
        for k in range(n_points):
            r, fz, fy, fx, inz, iny, inx = _corners(off, b, k, start + i, pz, py, px, kz, ky, kx, size, pads, w)
            w0, w1, w2, w3, w4, w5, w6, w7 = w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]
            t0, t1, t2, t3 = table[r], table[r + 1], table[r + sy], table[r + sy + 1]
            t4, t5, t6, t7 = table[r + sz], table[r + sz + 1], table[r + sz + sy], table[r + sz + sy + 1]
            gcol = grad_cols[i, k]
            col = cols[i, k]
            # scalar accumulators (in registers), zeroed in the table's dtype
            d0 = d1 = d2 = d3 = d4 = d5 = d6 = d7 = w0 - w0
            for c in range(ch):
                g = gcol[c]
                d0 += g * t0[c]
                d1 += g * t1[c]
                d2 += g * t2[c]
                d3 += g * t3[c]
                d4 += g * t4[c]
                d5 += g * t5[c]
                d6 += g * t6[c]
                d7 += g * t7[c]
            if need_cols:
                for c in range(ch):
                    col[c] = w0 * t0[c] + w1 * t1[c] + w2 * t2[c] + w3 * t3[c] + w4 * t4[c] + w5 * t5[c] + w6 * t6[c] + w7 * t7[c]
            gz, gy, gx = 1.0 - fz, 1.0 - fy, 1.0 - fx
            # corner j = 4 * dz + 2 * dy + dx
            dz = gy * (gx * (d4 - d0) + fx * (d5 - d1)) + fy * (gx * (d6 - d2) + fx * (d7 - d3))
            dy = gz * (gx * (d2 - d0) + fx * (d3 - d1)) + fz * (gx * (d6 - d4) + fx * (d7 - d5))
            dx = gz * (gy * (d1 - d0) + fy * (d3 - d2)) + fz * (gy * (d5 - d4) + fy * (d7 - d6))
            n = start + i
            grad_off[b, 3 * k, n] = dz if inz else 0.0
            grad_off[b, 3 * k + 1, n] = dy if iny else 0.0
            grad_off[b, 3 * k + 2, n] = dx if inx else 0.0


@njit(parallel=True, cache=True, fastmath=_FASTMATH)
def _input_grad(off, b, start, grad_cols, grad_table, n_blocks, oz, oy, ox, kz, ky, kx, out_hw, out_w, size, pads):
    """``grad_table[corner rows] += weight * grad_cols``; thread ``j`` owns channel block ``j``, so the
    scatter is race-free (each block recomputes the sampling cells, which is cheap next to the scatter)."""
    n_chunk, n_points = grad_cols.shape[0], grad_cols.shape[1]
    ch = grad_table.shape[1]
    sz, sy = pads[1] * pads[2], pads[2]
    per_block = -(-ch // n_blocks)
    for blk in prange(n_blocks):
        c0 = blk * per_block
        c1 = min(ch, c0 + per_block)
        w = np.empty(8, grad_table.dtype)
        for i in range(n_chunk):
            pz, py, px = _base(start + i, oz, oy, ox, out_hw, out_w)
            for k in range(n_points):
                r, _, _, _, _, _, _ = _corners(off, b, k, start + i, pz, py, px, kz, ky, kx, size, pads, w)
                src = grad_cols[i, k, c0:c1]
                for j in range(8):
                    wj = w[j]
                    if wj != 0:
                        dst = grad_table[r + (j >> 2) * sz + ((j >> 1) & 1) * sy + (j & 1), c0:c1]
                        # loop bound from the view's own shape: the compiler vectorises this form
                        for c in range(src.shape[0]):
                            dst[c] += wj * src[c]


class _Geometry:
    """Per-call constants of the kernels: base coordinates per output index and kernel point (in the
    positions' dtype, exact integers), sizes and padded sizes."""

    def __init__(self, size, out_size, kernel, stride, padding, dilation, pos_dtype):
        np_dtype = torch.empty(0, dtype=pos_dtype).numpy().dtype
        self.o = [((np.arange(out_size[a]) * stride[a]) - padding[a]).astype(np_dtype) for a in range(3)]
        ki = np.arange(math.prod(kernel))
        k_axes = [ki // (kernel[1] * kernel[2]), (ki // kernel[2]) % kernel[1], ki % kernel[2]]
        self.k = [(k_axes[a] * dilation[a]).astype(np_dtype) for a in range(3)]
        self.out_hw = out_size[1] * out_size[2]
        self.out_w = out_size[2]
        self.size = np.asarray(size, dtype=np.int64)
        self.pads = np.asarray([s + 2 for s in size], dtype=np.int64)

    def args(self):
        return (*self.o, *self.k, self.out_hw, self.out_w, self.size, self.pads)


def _set_threads() -> None:
    """numba's kernels use torch's thread count."""
    n = torch.get_num_threads()
    numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))
    # the first call starts numba's thread pool, which with its OpenMP layer resets OpenMP's count (torch's)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


class _NumbaKernels:
    """This module's kernels for one call of :class:`_ColumnsDeformConv3dFn` (the tensors as NumPy views)."""

    def __init__(self, off, in_ch, size, out_size, kernel, stride, padding, dilation):
        self.off = off.numpy()
        self.geo = _Geometry(size, out_size, kernel, stride, padding, dilation, off.dtype).args()
        self.n_points, self.in_ch = math.prod(kernel), in_ch
        _set_threads()
        self.n_blocks = min(in_ch, numba.get_num_threads())

    def _cols(self, t: torch.Tensor) -> np.ndarray:
        return t.view(t.shape[0], self.n_points, self.in_ch).numpy()

    def forward_cols(self, b, table, start, cols):
        _forward_cols(table.numpy(), self.off, b, start, self._cols(cols), *self.geo)

    def offset_grad(self, b, table, start, grad_cols, grad_off, cols, need_cols):
        _offset_grad(table.numpy(), self.off, b, start, self._cols(grad_cols), grad_off.numpy(), self._cols(cols), need_cols, *self.geo)

    def input_grad(self, b, start, grad_cols, grad_table):
        _input_grad(self.off, b, start, self._cols(grad_cols), grad_table.numpy(), self.n_blocks, *self.geo)


class _DeformConv3dNumbaFn(_ColumnsDeformConv3dFn):
    """:class:`_ColumnsDeformConv3dFn` with the numba kernels (its name marks the path in the graph)."""


def deform_conv3d_numba(input, offset, weight, bias, stride, padding, dilation) -> torch.Tensor:
    """:func:`~dlka_monai.networks.layers.deform_conv.deform_conv3d` with ``groups=1`` on contiguous
    float32/float64 CPU tensors of one dtype, computed by the numba kernels of this module.

    Args:
        input: ``[B, C_in, D, H, W]``.
        offset: ``[B, 3 * kd * kh * kw, D', H', W']`` in voxels, (d, h, w) per kernel point.
        weight: ``[C_out, C_in, kd, kh, kw]``.
        bias: ``[C_out]`` or None.
        stride, padding, dilation: 3 ints each.

    Returns:
        ``[B, C_out, D', H', W']``.
    """
    return _DeformConv3dNumbaFn.apply(_NumbaKernels, input, offset, weight, bias, stride, padding, dilation)
