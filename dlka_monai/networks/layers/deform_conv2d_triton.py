# Copyright (c) dlka_monai contributors. Licensed under the Apache License, Version 2.0.
"""Triton CUDA kernels of the depthwise 2D deformable convolution (torchvision semantics, groups = C,
offset_groups = 1, no mask).

The CUDA path of :func:`~dlka_monai.networks.layers.deform_conv2d.deform_conv2d_depthwise` when
Triton is installed; the structure of :mod:`~dlka_monai.networks.layers.deform_conv2d_numba` (the CPU
kernels). A depthwise deformable conv needs no columns and no GEMM. Each program handles one image, a
block of ``BLOCK_N`` output pixels and a block of ``BLOCK_C`` channels of the zero-padded
channels-last input table, and loops over the kernel points; per point it computes the 4 corner rows
and bilinear weights of its pixels once and uses them for all its channels:

* forward: ``out[b, c, p] = sum_k w[c, k] * s[b, p, k, c]`` accumulated in registers (``s``: the
  bilinear sample of channel ``c`` at kernel point ``k`` of pixel ``p``);
* backward, one kernel, its passes chosen by ``needs_input_grad``: the offset gradient (per pixel and
  kernel point, the 4 corner dot products over the block's channels with ``w[c, k] * grad_out[p, c]``,
  then the derivatives of the bilinear weights; one partial per channel block, summed after), the
  weight gradient (the block's sum over pixels of ``grad_out * s``, reduced over programs with
  ``tl.atomic_add``) and the input gradient (scattered into the padded gradient table with
  ``tl.atomic_add``). The bias gradient is a torch sum.

Sampling follows the numba kernels' rule (:func:`~dlka_monai.networks.layers.deform_conv_triton._cell`:
the same clamping into the one-pixel zero padding, the positions computed in the offsets' precision),
so results agree with torchvision to float rounding. Under ``TRITON_INTERPRET=1`` (set before this
module is imported) the kernels also run on CPU tensors, which is how the tests check them without a GPU.
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

from dlka_monai.networks.layers.deform_conv_triton import _cell, _scatter_corner

__all__ = ["deform_conv2d_depthwise_triton"]

# output pixels per program; channels per program at most _MAX_BLOCK_C (register pressure)
_BLOCK_N = 32
_MAX_BLOCK_C = 64


@triton.jit
def _program_block(C, n_out, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    """Image ``b`` (int64), pixel indices ``i`` (int64) and channels ``c`` of this program, their masks
    and the ``[BLOCK_N, BLOCK_C]`` mask; axis 0 enumerates (image, pixel block), axis 1 channel blocks."""
    n_blocks = tl.cdiv(n_out, BLOCK_N)
    pid = tl.program_id(0).to(tl.int64)
    b = pid // n_blocks
    i = (pid % n_blocks) * BLOCK_N + tl.arange(0, BLOCK_N)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_n = i < n_out
    mask_c = c < C
    return b, i, c, mask_n, mask_c, mask_n[:, None] & mask_c[None, :]


@triton.jit
def _sampling(off_ptr, b, i, mask_n, k, n_points, n_out, out_w, kw, sh, sw, ph, pw, dh, dw, H, W):
    """Table row (image-relative, int64) of corner 0 of the sampling cell of pixels ``i`` of image ``b``
    at kernel point ``k``, the fractions and whether the sample can have a valid corner (torchvision's
    rule: both coordinates in ``[-1, size)``)."""
    oy = i // out_w
    ox = i % out_w
    ky = k // kw
    kx = k % kw
    # offsets of kernel point k: channels 2k, 2k + 1 of [B, 2K, n_out]
    o = off_ptr + (b * n_points + k) * 2 * n_out + i
    off_y = tl.load(o, mask=mask_n, other=0.0)
    off_x = tl.load(o + n_out, mask=mask_n, other=0.0)
    # exact integer base + offset, in the offsets' precision, as torchvision computes it
    cy, fy, iny = _cell((oy * sh - ph + ky * dh).to(off_y.dtype) + off_y, H)
    cx, fx, inx = _cell((ox * sw - pw + kx * dw).to(off_x.dtype) + off_x, W)
    return cy * (W + 2) + cx, fy, fx, iny & inx


@triton.jit
def _forward_kernel(
    table_ptr, off_ptr, w_ptr, out_ptr, C, n_points, n_out, out_w, kw, sh, sw, ph, pw, dh, dw, H, W,
    BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """``out[b, c, i] = sum_k w_t[k, c] * bilinear(table[b, :, c], i, k)``; ``table``:
    ``[B, (H+2)(W+2), C]``, ``w_t``: ``[K, C]``, ``out``: ``[B, C, n_out]``."""
    b, i, c, mask_n, mask_c, m = _program_block(C, n_out, BLOCK_N, BLOCK_C)
    dtype = table_ptr.dtype.element_ty
    t = table_ptr + b * (H + 2) * (W + 2) * C + c[None, :]
    acc = tl.zeros([BLOCK_N, BLOCK_C], dtype)
    for k in range(n_points):
        row, fy, fx, _ = _sampling(off_ptr, b, i, mask_n, k, n_points, n_out, out_w, kw, sh, sw, ph, pw, dh, dw, H, W)
        fy, fx = fy.to(dtype), fx.to(dtype)
        gy, gx = 1 - fy, 1 - fx
        # element offsets [BLOCK_N, 1] (int64) of corners 0 and 2; corner j + 1 is C further
        r0, r2 = (row * C)[:, None], ((row + W + 2) * C)[:, None]
        s = (gy * gx)[:, None] * tl.load(t + r0, mask=m, other=0.0)
        s += (gy * fx)[:, None] * tl.load(t + r0 + C, mask=m, other=0.0)
        s += (fy * gx)[:, None] * tl.load(t + r2, mask=m, other=0.0)
        s += (fy * fx)[:, None] * tl.load(t + r2 + C, mask=m, other=0.0)
        wk = tl.load(w_ptr + k * C + c, mask=mask_c, other=0.0)
        acc += wk[None, :] * s
    tl.store(out_ptr + (b * C + c[None, :]) * n_out + i[:, None], acc, mask=m)


@triton.jit
def _backward_kernel(
    table_ptr, off_ptr, w_ptr, grad_ptr, grad_table_ptr, grad_off_ptr, grad_w_ptr,
    B, C, n_points, n_out, out_w, kw, sh, sw, ph, pw, dh, dw, H, W,
    NEED_X: tl.constexpr, NEED_OFF: tl.constexpr, NEED_W: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """For the program's image, pixels and channels (``grad``: ``[B, C, n_out]``, the output gradient):

    * ``NEED_OFF``: ``grad_off[channel block, b, 2k + a, i]`` (``[n_cblocks, B, 2K, n_out]``), this
      block's part of the offset gradient (zero where the sample has no valid corner);
    * ``NEED_W``: ``grad_w[k, c] += sum_i grad[b, c, i] * s[b, i, k, c]`` (``[K, C]``, atomic);
    * ``NEED_X``: ``grad_table[b, corner rows, c] += weight * w[c, k] * grad[b, c, i]``
      (``[B, (H+2)(W+2), C]``, atomic: programs of other pixels and kernel points hit the same rows).
    """
    b, i, c, mask_n, mask_c, m = _program_block(C, n_out, BLOCK_N, BLOCK_C)
    dtype = table_ptr.dtype.element_ty
    img = b * (H + 2) * (W + 2) * C + c[None, :]
    t = table_ptr + img
    g = tl.load(grad_ptr + (b * C + c[None, :]) * n_out + i[:, None], mask=m, other=0.0)
    for k in range(n_points):
        row, fy, fx, inside = _sampling(off_ptr, b, i, mask_n, k, n_points, n_out, out_w, kw, sh, sw, ph, pw, dh, dw, H, W)
        fy, fx = fy.to(dtype), fx.to(dtype)
        gy, gx = 1 - fy, 1 - fx
        r0, r2 = (row * C)[:, None], ((row + W + 2) * C)[:, None]
        wk = tl.load(w_ptr + k * C + c, mask=mask_c, other=0.0)
        gw = g * wk[None, :]
        if NEED_OFF or NEED_W:
            t0 = tl.load(t + r0, mask=m, other=0.0)
            t1 = tl.load(t + r0 + C, mask=m, other=0.0)
            t2 = tl.load(t + r2, mask=m, other=0.0)
            t3 = tl.load(t + r2 + C, mask=m, other=0.0)
        if NEED_OFF:
            d0 = tl.sum(gw * t0, axis=1)
            d1 = tl.sum(gw * t1, axis=1)
            d2 = tl.sum(gw * t2, axis=1)
            d3 = tl.sum(gw * t3, axis=1)
            # corner j = 2 * dy + dx
            gdy = gx * (d2 - d0) + fx * (d3 - d1)
            gdx = gy * (d1 - d0) + fy * (d3 - d2)
            out_dtype = grad_off_ptr.dtype.element_ty
            o = grad_off_ptr + ((tl.program_id(1) * B + b) * n_points + k) * 2 * n_out + i
            tl.store(o, tl.where(inside, gdy, 0.0).to(out_dtype), mask=mask_n)
            tl.store(o + n_out, tl.where(inside, gdx, 0.0).to(out_dtype), mask=mask_n)
        if NEED_W:
            s = (gy * gx)[:, None] * t0 + (gy * fx)[:, None] * t1 + (fy * gx)[:, None] * t2 + (fy * fx)[:, None] * t3
            tl.atomic_add(grad_w_ptr + k * C + c, tl.sum(g * s, axis=0), mask=mask_c, sem="relaxed")
        if NEED_X:
            gt = grad_table_ptr + img
            _scatter_corner(gt + r0, gy * gx, gw, m)
            _scatter_corner(gt + r0 + C, gy * fx, gw, m)
            _scatter_corner(gt + r2, fy * gx, gw, m)
            _scatter_corner(gt + r2 + C, fy * fx, gw, m)


def _padded_table(x: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]`` -> zero-padded channels-last rows ``[B, (H+2)*(W+2), C]``."""
    b, c, h, w = x.shape
    rows = x.new_zeros(b, h + 2, w + 2, c)
    rows[:, 1:-1, 1:-1].copy_(x.permute(0, 2, 3, 1))
    return rows.view(b, -1, c)


class _Launch:
    """Per-call launch constants: the kernels' geometry arguments, block sizes and grid."""

    def __init__(self, batch, ch, size, out_size, kernel, stride, padding, dilation):
        self.n_points = kernel[0] * kernel[1]
        self.n_out = out_size[0] * out_size[1]
        self.geo = (ch, self.n_points, self.n_out, out_size[1], kernel[1], *stride, *padding, *dilation, *size)
        self.blocks = dict(BLOCK_N=_BLOCK_N, BLOCK_C=min(triton.next_power_of_2(ch), _MAX_BLOCK_C))
        self.grid = (batch * triton.cdiv(self.n_out, _BLOCK_N), triton.cdiv(ch, self.blocks["BLOCK_C"]))


class _DeformConv2dDepthwiseTritonFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, offset, weight, bias, stride, padding, dilation):
        batch, ch, *size = input.shape
        out_size = offset.shape[2:]
        lc = _Launch(batch, ch, size, out_size, weight.shape[2:], stride, padding, dilation)
        pos_dtype = torch.promote_types(offset.dtype, torch.float32)
        off = offset.detach().to(pos_dtype).contiguous()
        w_t = weight.detach().view(ch, -1).t().contiguous()  # [K, C]
        out = input.new_empty(batch, ch, *out_size)
        _forward_kernel[lc.grid](_padded_table(input.detach()), off, w_t, out, *lc.geo, **lc.blocks)
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
        grad_bias = grad_out.sum((0, 2, 3)) if (need_b and has_bias) else None
        if not (need_x or need_off or need_w):
            return None, None, None, grad_bias, None, None, None
        batch, ch, *size = input.shape
        out_size = offset.shape[2:]
        lc = _Launch(batch, ch, size, out_size, weight.shape[2:], stride, padding, dilation)
        pos_dtype = torch.promote_types(offset.dtype, torch.float32)
        off = offset.detach().to(pos_dtype).contiguous()
        w_t = weight.detach().view(ch, -1).t().contiguous()
        table = _padded_table(input.detach())
        # unused outputs get 1-element placeholders (the kernel does not touch them)
        grad_table = torch.zeros_like(table) if need_x else table.new_empty(1)
        grad_off = table.new_empty(lc.grid[1], *offset.shape, dtype=pos_dtype) if need_off else off.new_empty(1)
        grad_w = torch.zeros_like(w_t) if need_w else w_t.new_empty(1)
        _backward_kernel[lc.grid](
            table, off, w_t, grad_out.contiguous(), grad_table, grad_off, grad_w, batch, *lc.geo,
            NEED_X=need_x, NEED_OFF=need_off, NEED_W=need_w, **lc.blocks,
        )  # fmt: skip
        grad_input = None
        if need_x:
            grad_input = grad_table.view(batch, size[0] + 2, size[1] + 2, ch)[:, 1:-1, 1:-1].permute(0, 3, 1, 2).contiguous()
        grad_offset = grad_off.sum(0).to(offset.dtype) if need_off else None
        grad_weight = grad_w.t().reshape(weight.shape) if need_w else None
        return grad_input, grad_offset, grad_weight, grad_bias, None, None, None


def deform_conv2d_depthwise_triton(input, offset, weight, bias, stride, padding, dilation) -> torch.Tensor:
    """:func:`torchvision.ops.deform_conv2d` with ``groups = C`` and ``offset_groups = 1`` on
    contiguous float32/float64 CUDA tensors of one dtype, computed by the Triton kernels of this module.

    Args:
        input: ``[B, C, H, W]``.
        offset: ``[B, 2 * kh * kw, H', W']`` in pixels, (dy, dx) per kernel point ``k = i * kw + j``.
        weight: ``[C, 1, kh, kw]``.
        bias: ``[C]`` or None.
        stride, padding, dilation: 2 ints each.

    Returns:
        ``[B, C, H', W']``.
    """
    # Triton launches on the current device (autograd's device threads set it for backward)
    with torch.cuda.device(input.device) if input.is_cuda else contextlib.nullcontext():
        return _DeformConv2dDepthwiseTritonFn.apply(input, offset, weight, bias, stride, padding, dilation)
