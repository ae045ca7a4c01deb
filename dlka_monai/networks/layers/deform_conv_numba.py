# Copyright (c) dlka_monai contributors. Licensed under the Apache License, Version 2.0.
"""numba CPU kernels of the 3D deformable convolution (D3D semantics, no mask, groups=1).

The CPU path of :func:`~dlka_monai.networks.layers.deform_conv_fast.deform_conv3d_fast` when numba is
installed. The loop over images and chunks of output voxels is
:class:`~dlka_monai.networks.layers.deform_conv_fast._ColumnsDeformConv3dFn`, shared with the Triton
kernels; this module provides its two kernels:

* forward: one kernel blends, for each output voxel and kernel point, the 8 corners of its sampling cell
  over all channels of the zero-padded channels-last input into the columns ``[n, K * C_in]``; one GEMM
  with the weight follows;
* backward: ``grad_cols = grad_out @ weight`` (GEMM); one kernel then makes a single pass over the
  sampling cells that gives the offset gradient (the 8 corner dot products with ``grad_cols``), rebuilds
  the columns when the weight gradient needs them (``grad_weight += grad_out^T @ cols``, a GEMM) and
  scatters the input gradient: each thread takes a contiguous part of the voxels and scatters into a
  table of its own (the first thread into the gradient table itself), summed after the image, so no
  two threads write the same row and no cell is computed twice.

Both kernels work in blocks of ``_BLOCK`` output voxels: first the cells of every kernel point of the
block, in one branch-free loop over voxels that the compiler vectorises (one voxel at a time, that
arithmetic cost more than blending 32 channels), then voxel by voxel, so that a voxel's columns are
one contiguous row.

Sampling follows the pure-PyTorch fast path's rule (the same clamping into the one-voxel zero padding,
the positions computed in the offsets' precision; the trilinear weights are formed in float64 and
rounded to the input's dtype). The kernels read and write the tensors' memory through
zero-copy NumPy views; the only copies are the padded channels-last input table, its gradient and
the per-thread partial gradient tables (at most ``_PARTIALS_BYTES`` together; fewer parts beyond).
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

# at most this much memory for the per-thread partial input-gradient tables of the backward pass
_PARTIALS_BYTES = 256 << 20
# output voxels whose sampling cells are computed together, one vectorised loop per kernel point
_BLOCK = 64

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
def _point_cells(off, b, k, n0, nb, bz, by, bx, kz, ky, kx, size, pads, rows, wts, frac, inside):
    """Sampling cells of kernel point ``k`` for the ``nb`` output voxels from ``n0`` (regular-grid positions
    ``bz, by, bx``): table row of corner 0 into ``rows``, the 8 trilinear weights into ``wts[j]`` (corner
    ``4 dz + 2 dy + dx``, rounded to ``wts``' dtype), the per-axis fractions into ``frac[a]`` and the
    per-axis ``inside`` flags (``-1 <= p < size``, where the offset gradient is not zero) into ``inside[a]``.

    Written without branches, over voxels that are contiguous in the offsets, so that the compiler
    vectorises it: computing the cells one voxel at a time cost more than blending the channels.
    """
    for j in range(nb):
        n = n0 + j
        # exact integer base + offset, in the offsets' precision, as the reference computes it; then float64
        pz = float(bz[j] + kz[k] + off[b, 3 * k, n])
        py = float(by[j] + ky[k] + off[b, 3 * k + 1, n])
        px = float(bx[j] + kx[k] + off[b, 3 * k + 2, n])
        inside[0, j] = (pz >= -1.0) & (pz < size[0])
        inside[1, j] = (py >= -1.0) & (py < size[1])
        inside[2, j] = (px >= -1.0) & (px < size[2])
        # floors clamped into the one-voxel zero padding ("not >=" also sends NaN there: rows stay in bounds)
        fz, fy, fx = np.floor(pz), np.floor(py), np.floor(px)
        fz = -1.0 if not fz >= -1.0 else (size[0] - 1.0 if fz > size[0] - 1.0 else fz)
        fy = -1.0 if not fy >= -1.0 else (size[1] - 1.0 if fy > size[1] - 1.0 else fy)
        fx = -1.0 if not fx >= -1.0 else (size[2] - 1.0 if fx > size[2] - 1.0 else fx)
        az, ay, ax = min(max(pz - fz, 0.0), 1.0), min(max(py - fy, 0.0), 1.0), min(max(px - fx, 0.0), 1.0)
        rows[j] = ((int(fz) + 1) * pads[1] + int(fy) + 1) * pads[2] + int(fx) + 1
        frac[0, j], frac[1, j], frac[2, j] = az, ay, ax
        gz, gy, gx = 1.0 - az, 1.0 - ay, 1.0 - ax
        wts[0, j] = gz * gy * gx
        wts[1, j] = gz * gy * ax
        wts[2, j] = gz * ay * gx
        wts[3, j] = gz * ay * ax
        wts[4, j] = az * gy * gx
        wts[5, j] = az * gy * ax
        wts[6, j] = az * ay * gx
        wts[7, j] = az * ay * ax


@njit(inline="always")
def _scratch(n_points, oz, table):
    """One thread's buffers for :func:`_block_cells`: regular-grid positions ``[3, _BLOCK]`` and, per
    kernel point, the cells' rows, weights, fractions and ``inside`` flags."""
    return (
        np.empty((3, _BLOCK), oz.dtype), np.empty((n_points, _BLOCK), np.int64), np.empty((n_points, 8, _BLOCK), table.dtype),
        np.empty((n_points, 3, _BLOCK)), np.empty((n_points, 3, _BLOCK), np.bool_),
    )  # fmt: skip


@njit(inline="always")
def _block_cells(off, b, n0, nb, oz, oy, ox, kz, ky, kx, out_hw, out_w, size, pads, base, rows, wts, frac, inside):
    """Sampling cells of every kernel point of the ``nb`` output voxels from ``n0`` into the buffers of
    :func:`_scratch`: first the voxels' regular-grid positions (z, y, x), then :func:`_point_cells` per
    kernel point."""
    for j in range(nb):
        n = n0 + j
        base[0, j], base[1, j], base[2, j] = oz[n // out_hw], oy[(n // out_w) % (out_hw // out_w)], ox[n % out_w]
    for k in range(rows.shape[0]):
        _point_cells(off, b, k, n0, nb, base[0], base[1], base[2], kz, ky, kx, size, pads, rows[k], wts[k], frac[k], inside[k])


@njit(inline="always")
def _blend(table, c, r, sy, sz, w0, w1, w2, w3, w4, w5, w6, w7):
    """Channel ``c`` of the trilinear sample whose cell's corner 0 is table row ``r`` (weights of corners
    ``4 dz + 2 dy + dx``)."""
    return (
        w0 * table[r, c] + w1 * table[r + 1, c] + w2 * table[r + sy, c] + w3 * table[r + sy + 1, c]
        + w4 * table[r + sz, c] + w5 * table[r + sz + 1, c] + w6 * table[r + sz + sy, c] + w7 * table[r + sz + sy + 1, c]
    )  # fmt: skip


@njit(inline="always")
def _scatter(dst, r, w, grad_cols, i, k):
    """``dst[r] += w * grad_cols[i, k]``; a corner of zero weight (e.g. all but one at zero offsets) adds
    nothing."""
    if w != 0:
        for c in range(dst.shape[1]):
            dst[r, c] += w * grad_cols[i, k, c]


@njit(parallel=True, cache=True, fastmath=_FASTMATH)
def _forward_cols(table, off, b, start, cols, n_parts, oz, oy, ox, kz, ky, kx, out_hw, out_w, size, pads):
    """``cols[i, k * C:(k + 1) * C]`` = trilinear sample of kernel point ``k`` of voxel ``start + i``; the
    chunk is split into ``n_parts`` contiguous parts, one per thread, each done in blocks of ``_BLOCK``
    voxels (the cells of a block's kernel point in one vectorised pass, then the channels)."""
    n_chunk, n_points = cols.shape[0], cols.shape[1]
    ch = table.shape[1]
    sz, sy = pads[1] * pads[2], pads[2]
    for part in prange(n_parts):
        base, rows, wts, frac, inside = _scratch(n_points, oz, table)
        lo, hi = part * n_chunk // n_parts, (part + 1) * n_chunk // n_parts
        for i0 in range(lo, hi, _BLOCK):
            nb = min(_BLOCK, hi - i0)
            _block_cells(off, b, start + i0, nb, oz, oy, ox, kz, ky, kx, out_hw, out_w, size, pads, base, rows, wts, frac, inside)
            # voxel by voxel, its kernel points in order: each voxel's columns are one contiguous row
            for j in range(nb):
                i = i0 + j
                for k in range(n_points):
                    r = rows[k, j]
                    # scalars of the table's dtype: the compiler keeps them in registers and vectorises over c
                    w0, w1, w2, w3 = wts[k, 0, j], wts[k, 1, j], wts[k, 2, j], wts[k, 3, j]
                    w4, w5, w6, w7 = wts[k, 4, j], wts[k, 5, j], wts[k, 6, j], wts[k, 7, j]
                    for c in range(ch):
                        cols[i, k, c] = _blend(table, c, r, sy, sz, w0, w1, w2, w3, w4, w5, w6, w7)


@njit(parallel=True, cache=True, fastmath=_FASTMATH)
def _backward(
    table, off, b, start, grad_cols, need_off, grad_off, need_cols, cols, need_x, grad_table, partials, n_parts,
    oz, oy, ox, kz, ky, kx, out_hw, out_w, size, pads,
):  # fmt: skip
    """One pass over the sampling cells of a chunk, for each output voxel and kernel point:

    * ``need_off``: ``grad_off[b, 3k + a, start + i]`` from the dot products of ``grad_cols`` with the 8
      corner values (derivatives of the trilinear weights, zero where the coordinate leaves ``[-1, size)``);
    * ``need_cols``: ``cols`` refilled as :func:`_forward_cols` does;
    * ``need_x``: ``weight * grad_cols`` added into the 8 corner rows of the input-gradient table.

    The chunk is split into ``n_parts`` contiguous parts, one per thread (in blocks, as
    :func:`_forward_cols`); with ``need_x``, part 0 adds into ``grad_table`` and part ``p`` into
    ``partials[p - 1]``, so that no two threads write the same row (the caller sums the partial tables).
    """
    n_chunk, n_points = grad_cols.shape[0], grad_cols.shape[1]
    ch = table.shape[1]
    sz, sy = pads[1] * pads[2], pads[2]
    for part in prange(n_parts):
        dst = grad_table if part == 0 or not need_x else partials[part - 1]
        base, rows, wts, frac, inside = _scratch(n_points, oz, table)
        lo, hi = part * n_chunk // n_parts, (part + 1) * n_chunk // n_parts
        for i0 in range(lo, hi, _BLOCK):
            nb = min(_BLOCK, hi - i0)
            _block_cells(off, b, start + i0, nb, oz, oy, ox, kz, ky, kx, out_hw, out_w, size, pads, base, rows, wts, frac, inside)
            for j in range(nb):
                i = i0 + j
                for k in range(n_points):
                    r0 = rows[k, j]
                    r1, r2, r3, r4, r5, r6, r7 = r0 + 1, r0 + sy, r0 + sy + 1, r0 + sz, r0 + sz + 1, r0 + sz + sy, r0 + sz + sy + 1
                    w0, w1, w2, w3 = wts[k, 0, j], wts[k, 1, j], wts[k, 2, j], wts[k, 3, j]
                    w4, w5, w6, w7 = wts[k, 4, j], wts[k, 5, j], wts[k, 6, j], wts[k, 7, j]
                    if need_off:
                        # scalar accumulators (in registers), zeroed in the table's dtype
                        d0 = d1 = d2 = d3 = d4 = d5 = d6 = d7 = w0 - w0
                        for c in range(ch):
                            g = grad_cols[i, k, c]
                            d0 += g * table[r0, c]
                            d1 += g * table[r1, c]
                            d2 += g * table[r2, c]
                            d3 += g * table[r3, c]
                            d4 += g * table[r4, c]
                            d5 += g * table[r5, c]
                            d6 += g * table[r6, c]
                            d7 += g * table[r7, c]
                        fz, fy, fx = frac[k, 0, j], frac[k, 1, j], frac[k, 2, j]
                        gz, gy, gx = 1.0 - fz, 1.0 - fy, 1.0 - fx
                        # corner j = 4 * dz + 2 * dy + dx
                        dz = gy * (gx * (d4 - d0) + fx * (d5 - d1)) + fy * (gx * (d6 - d2) + fx * (d7 - d3))
                        dy = gz * (gx * (d2 - d0) + fx * (d3 - d1)) + fz * (gx * (d6 - d4) + fx * (d7 - d5))
                        dx = gz * (gy * (d1 - d0) + fy * (d3 - d2)) + fz * (gy * (d5 - d4) + fy * (d7 - d6))
                        n = start + i
                        grad_off[b, 3 * k, n] = dz if inside[k, 0, j] else 0.0
                        grad_off[b, 3 * k + 1, n] = dy if inside[k, 1, j] else 0.0
                        grad_off[b, 3 * k + 2, n] = dx if inside[k, 2, j] else 0.0
                    if need_cols:
                        for c in range(ch):
                            cols[i, k, c] = _blend(table, c, r0, sy, sz, w0, w1, w2, w3, w4, w5, w6, w7)
                    if need_x:
                        _scatter(dst, r0, w0, grad_cols, i, k)
                        _scatter(dst, r1, w1, grad_cols, i, k)
                        _scatter(dst, r2, w2, grad_cols, i, k)
                        _scatter(dst, r3, w3, grad_cols, i, k)
                        _scatter(dst, r4, w4, grad_cols, i, k)
                        _scatter(dst, r5, w5, grad_cols, i, k)
                        _scatter(dst, r6, w6, grad_cols, i, k)
                        _scatter(dst, r7, w7, grad_cols, i, k)


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
        self.partials = None
        self._none = off.new_empty(0, 0, 0)

    def _cols(self, t: torch.Tensor) -> np.ndarray:
        return t.view(t.shape[0], self.n_points, self.in_ch).numpy()

    def _parts(self, n: int) -> int:
        return max(1, min(numba.get_num_threads(), n))

    def forward_cols(self, b, table, start, cols):
        _forward_cols(table.numpy(), self.off, b, start, self._cols(cols), self._parts(cols.shape[0]), *self.geo)

    def backward_cols(self, b, table, start, grad_cols, grad_off, cols, grad_table):
        need_off, need_cols, need_x = grad_off is not None, cols is not None, grad_table is not None
        parts = self._parts(grad_cols.shape[0])
        if need_x:
            if self.partials is None:
                # one table per thread: the scatter is race-free, each sampling cell computed once
                parts = min(parts, 1 + _PARTIALS_BYTES // max(1, grad_table.nbytes))
                self.partials = grad_table.new_zeros(parts - 1, *grad_table.shape)
            parts = min(parts, len(self.partials) + 1)
        partials = self.partials if need_x else self._none.to(table.dtype)
        _backward(
            table.numpy(), self.off, b, start, self._cols(grad_cols),
            need_off, (grad_off if need_off else self._none).numpy(),
            need_cols, self._cols(cols if need_cols else grad_cols),
            need_x, (grad_table if need_x else table).numpy(), partials.numpy(), parts,
            *self.geo,
        )  # fmt: skip

    def reduce_input_grad(self, grad_table):
        if self.partials is not None and len(self.partials):
            grad_table += self.partials.sum(0)
            self.partials.zero_()


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
