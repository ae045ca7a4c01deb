# Copyright (c) dlka_monai contributors. Licensed under the Apache License, Version 2.0.
"""numba CPU kernels of the depthwise 2D deformable convolution (torchvision semantics, groups = C,
offset_groups = 1, no mask).

The CPU path of :func:`~dlka_monai.networks.layers.deform_conv2d.deform_conv2d_depthwise`
when numba is installed. A depthwise deformable conv needs no columns and no GEMM: with the bilinear
sample ``s[b, p, k, c]`` of channel ``c`` at kernel point ``k`` of output pixel ``p``,

* forward: ``out[b, p, c] = sum_k w[c, k] * s[b, p, k, c]``, one kernel parallel over output pixels;
* backward: one kernel parallel over (image, channel block) tasks computes, per pixel and kernel point,
  the offset gradient (dot products of ``w[c, k] * grad_out[p, c]`` with the 4 corner values), the
  weight gradient (``sum_p grad_out[p, c] * s[p, k, c]``, one partial sum per image, reduced after)
  and the input gradient (scattered into the task's own image and channels, so race-free).

The 4 corners' table rows and bilinear weights are computed once per (pixel, kernel point) and kept in
registers; the loops over channels are contiguous (channels-last) and vectorised. Sampling follows the
3D kernels' rule (:mod:`~dlka_monai.networks.layers.deform_conv_numba`): the input is read from a
zero-padded channels-last table and out-of-image cells are clamped onto its padding, which gives
torchvision's "corners outside contribute 0". The kernels read and write the tensors' memory through
zero-copy NumPy views; the only copies are the padded table, its gradient and the channels-last
output / output gradient. numba compiles them on first use per dtype and caches the machine code.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch
from numba import njit, prange

from dlka_monai.networks.layers.deform_conv_numba import _FASTMATH, _cell, _set_threads

__all__ = ["deform_conv2d_depthwise_numba"]


@njit(inline="always")
def _corners(off, b, k, n, py, px, ky, kx, size, pad_w, wbuf):
    """Table row of corner 0 of the sampling cell of output pixel ``n`` (grid position ``py, px``),
    kernel point ``k``; fills ``wbuf`` (4 bilinear weights, table dtype, corner ``2 dy + dx``) and
    returns the fractions and whether the sample can have a valid corner (torchvision's rule)."""
    # exact integer base + offset, in the offsets' precision, as torchvision computes it
    cy, fy, iny = _cell(py + ky[k] + off[b, 2 * k, n], size[0])
    cx, fx, inx = _cell(px + kx[k] + off[b, 2 * k + 1, n], size[1])
    gy, gx = 1.0 - fy, 1.0 - fx
    wbuf[0] = gy * gx
    wbuf[1] = gy * fx
    wbuf[2] = fy * gx
    wbuf[3] = fy * fx
    return cy * pad_w + cx, fy, fx, iny and inx


@njit(parallel=True, cache=True, fastmath=_FASTMATH)
def _forward(table, off, w_t, out, oy, ox, ky, kx, out_w, size, pad_w):
    """``out[b, n, c] = sum_k w_t[k, c] * bilinear(table[b, :, c], n, k)``."""
    batch, n_out, ch = out.shape
    n_points = w_t.shape[0]
    for bn in prange(batch * n_out):
        b, n = bn // n_out, bn % n_out
        w = np.empty(4, table.dtype)
        py, px = oy[n // out_w], ox[n % out_w]
        acc = out[b, n]
        acc[:] = 0
        tb = table[b]
        for k in range(n_points):
            r, _, _, _ = _corners(off, b, k, n, py, px, ky, kx, size, pad_w, w)
            # scalars of the table's dtype: the compiler keeps them in registers and vectorises over c
            w0, w1, w2, w3 = w[0], w[1], w[2], w[3]
            t0, t1, t2, t3 = tb[r], tb[r + 1], tb[r + pad_w], tb[r + pad_w + 1]
            wk = w_t[k]
            for c in range(ch):
                acc[c] += wk[c] * (w0 * t0[c] + w1 * t1[c] + w2 * t2[c] + w3 * t3[c])


@njit(parallel=True, cache=True, fastmath=_FASTMATH)
def _backward(table, off, w_t, grad_out, grad_table, grad_off, grad_w, need_x, n_blocks, oy, ox, ky, kx, out_w, size, pad_w):
    """Task ``(b, block)`` of ``batch * n_blocks``: for image ``b`` and its channel block,
    ``grad_off[block, b]`` (partial over the block's channels), ``grad_w[b, :, block]`` and, when
    ``need_x``, ``grad_table[b, :, block]`` (the scatter; no other task writes these elements)."""
    batch, n_out, ch = grad_out.shape
    n_points = w_t.shape[0]
    per_block = -(-ch // n_blocks)
    for task in prange(batch * n_blocks):
        b, blk = task // n_blocks, task % n_blocks
        c0 = blk * per_block
        c1 = min(ch, c0 + per_block)
        w = np.empty(4, table.dtype)
        for n in range(n_out):
            py, px = oy[n // out_w], ox[n % out_w]
            g = grad_out[b, n, c0:c1]
            for k in range(n_points):
                r, fy, fx, inside = _corners(off, b, k, n, py, px, ky, kx, size, pad_w, w)
                w0, w1, w2, w3 = w[0], w[1], w[2], w[3]
                # (int, ..., int, slice) indexing keeps the rows C-contiguous for numba: vectorised loops
                t0, t1 = table[b, r, c0:c1], table[b, r + 1, c0:c1]
                t2, t3 = table[b, r + pad_w, c0:c1], table[b, r + pad_w + 1, c0:c1]
                wk = w_t[k, c0:c1]
                gw = grad_w[b, k, c0:c1]
                # scalar accumulators (in registers), zeroed in the table's dtype
                d0 = d1 = d2 = d3 = w0 - w0
                for c in range(g.shape[0]):
                    gc = g[c]
                    gwc = gc * wk[c]
                    d0 += gwc * t0[c]
                    d1 += gwc * t1[c]
                    d2 += gwc * t2[c]
                    d3 += gwc * t3[c]
                    gw[c] += gc * (w0 * t0[c] + w1 * t1[c] + w2 * t2[c] + w3 * t3[c])
                if inside:
                    gy, gx = 1.0 - fy, 1.0 - fx
                    grad_off[blk, b, 2 * k, n] = gx * (d2 - d0) + fx * (d3 - d1)
                    grad_off[blk, b, 2 * k + 1, n] = gy * (d1 - d0) + fy * (d3 - d2)
                if need_x:
                    for j in range(4):
                        wj = w[j]
                        if wj != 0:
                            dst = grad_table[b, r + (j >> 1) * pad_w + (j & 1), c0:c1]
                            # loop bound from the view's own shape: the compiler vectorises this form
                            for c in range(dst.shape[0]):
                                dst[c] += wj * (g[c] * wk[c])


class _Geometry:
    """Per-call constants of the kernels: base coordinates per output row / column and per kernel
    point (in the positions' dtype, exact integers), the image size and the padded row width."""

    def __init__(self, size, out_size, kernel, stride, padding, dilation, pos_dtype):
        np_dtype = torch.empty(0, dtype=pos_dtype).numpy().dtype
        self.oy, self.ox = (((np.arange(out_size[a]) * stride[a]) - padding[a]).astype(np_dtype) for a in range(2))
        ki = np.arange(kernel[0] * kernel[1])
        self.ky = ((ki // kernel[1]) * dilation[0]).astype(np_dtype)
        self.kx = ((ki % kernel[1]) * dilation[1]).astype(np_dtype)
        self.out_w = out_size[1]
        self.size = np.asarray(size, dtype=np.int64)
        self.pad_w = size[1] + 2

    def args(self):
        return self.oy, self.ox, self.ky, self.kx, self.out_w, self.size, self.pad_w


def _padded_table(x: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]`` -> zero-padded channels-last rows ``[B, (H+2)*(W+2), C]``."""
    b, c, h, w = x.shape
    rows = x.new_zeros(b, h + 2, w + 2, c)
    rows[:, 1:-1, 1:-1].copy_(x.permute(0, 2, 3, 1))
    return rows.view(b, -1, c)


class _DeformConv2dDepthwiseNumbaFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, offset, weight, bias, stride, padding, dilation):
        batch, ch, *size = input.shape
        kernel = weight.shape[2:]
        out_size = offset.shape[2:]
        n_out = out_size[0] * out_size[1]
        pos_dtype = torch.promote_types(offset.dtype, torch.float32)
        geo = _Geometry(size, out_size, kernel, stride, padding, dilation, pos_dtype)
        off = offset.detach().to(pos_dtype).view(batch, -1, n_out).numpy()
        w_t = weight.detach().view(ch, -1).t().contiguous()  # [K, C]
        out = input.new_empty(batch, n_out, ch)
        _set_threads()
        _forward(_padded_table(input.detach()).numpy(), off, w_t.numpy(), out.numpy(), *geo.args())
        out = out.view(batch, *out_size, ch).permute(0, 3, 1, 2).contiguous()
        if bias is not None:
            out += bias.view(1, -1, 1, 1)
        ctx.save_for_backward(input, offset, weight)
        ctx.conf = (stride, padding, dilation, bias is not None)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        input, offset, weight = ctx.saved_tensors
        stride, padding, dilation, has_bias = ctx.conf
        need_x, need_off, need_w, need_b = ctx.needs_input_grad[:4]
        batch, ch, *size = input.shape
        kernel = weight.shape[2:]
        out_size = offset.shape[2:]
        n_out, n_points = out_size[0] * out_size[1], kernel[0] * kernel[1]
        pos_dtype = torch.promote_types(offset.dtype, torch.float32)
        geo = _Geometry(size, out_size, kernel, stride, padding, dilation, pos_dtype)
        off = offset.detach().to(pos_dtype).view(batch, -1, n_out).numpy()
        w_t = weight.detach().view(ch, -1).t().contiguous()
        grad_cl = grad_out.permute(0, 2, 3, 1).contiguous().view(batch, n_out, ch)
        _set_threads()
        # channel blocks only so that the tasks fill the threads evenly (each block re-derives the cells);
        # blocks of at least 8 channels keep the channel loops vectorised
        threads = numba.get_num_threads()
        n_blocks = max(1, min(threads // math.gcd(batch, threads), ch // 8))
        table = _padded_table(input.detach())
        grad_table = torch.zeros_like(table) if need_x else table.new_zeros(batch, 0, ch)
        grad_off = torch.zeros(n_blocks, batch, 2 * n_points, n_out, dtype=table.dtype)
        grad_w = table.new_zeros(batch, n_points, ch)
        _backward(
            table.numpy(), off, w_t.numpy(), grad_cl.numpy(), grad_table.numpy(), grad_off.numpy(), grad_w.numpy(),
            need_x, n_blocks, *geo.args(),
        )
        grad_input = None
        if need_x:
            grad_input = grad_table.view(batch, size[0] + 2, size[1] + 2, ch)[:, 1:-1, 1:-1].permute(0, 3, 1, 2).contiguous()
        grad_offset = grad_off.sum(0).view(offset.shape).to(offset.dtype) if need_off else None
        grad_weight = grad_w.sum(0).t().reshape(weight.shape) if need_w else None
        grad_bias = grad_out.sum((0, 2, 3)) if (need_b and has_bias) else None
        return grad_input, grad_offset, grad_weight, grad_bias, None, None, None


def deform_conv2d_depthwise_numba(input, offset, weight, bias, stride, padding, dilation) -> torch.Tensor:
    """:func:`torchvision.ops.deform_conv2d` with ``groups = C`` and ``offset_groups = 1`` on
    contiguous float32/float64 CPU tensors of one dtype, computed by the numba kernels of this module.

    Args:
        input: ``[B, C, H, W]``.
        offset: ``[B, 2 * kh * kw, H', W']`` in pixels, (dy, dx) per kernel point ``k = i * kw + j``.
        weight: ``[C, 1, kh, kw]``.
        bias: ``[C]`` or None.
        stride, padding, dilation: 2 ints each.

    Returns:
        ``[B, C, H', W']``.
    """
    return _DeformConv2dDepthwiseNumbaFn.apply(input, offset, weight, bias, stride, padding, dilation)
