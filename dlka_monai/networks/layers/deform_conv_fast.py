# Copyright (c) dlka_monai contributors. Licensed under the Apache License, Version 2.0.
"""Faster 3D deformable convolution with an explicit, memory-lean backward.

:func:`deform_conv3d_fast` has the signature and semantics of
:func:`dlka_monai.networks.layers.deform_conv.deform_conv3d` (D3D semantics, trilinear sampling, corners
outside the volume contribute zero, no mask) but is a :class:`torch.autograd.Function`:

* the trilinear gather-and-blend of the 8 corners is one fused ``F.embedding_bag`` call
  (``mode="sum"`` with ``per_sample_weights`` = the trilinear weights; invalid corners read an appended
  zero row), so the 8 corner columns are never materialised;
* work is done in chunks of output voxels so the sampled columns of one chunk stay small
  (bounded memory, cache friendly), each chunk followed by one GEMM;
* only ``input``, ``offset`` and ``weight`` are saved for backward; backward recomputes the sampling
  indices and weights per chunk, gets ``<grad_cols, corner value>`` for all 8 corners from the native
  ``embedding_bag`` per-sample-weights backward (again without materialising the corners), turns them
  into the offset gradient with the derivatives of the trilinear weights, and scatters the input
  gradient with one ``index_add_`` per corner and chunk (weighted rows built in a reused buffer).

On CPU, when numba is installed, :func:`deform_conv3d_fast` runs the compiled kernels of
:mod:`~dlka_monai.networks.layers.deform_conv_numba` instead (same semantics, the corners kept in
registers), and on CUDA, when triton is installed, those of
:mod:`~dlka_monai.networks.layers.deform_conv_triton`; this module's autograd function is the fallback.

Also here: :func:`dilated_depthwise_conv3d` / :class:`FastDilatedDepthwiseConv3d` for the depthwise
``7^3``, dilation-3 convolution of the D-LKA attention block (see their docstrings).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _triple

from dlka_monai.networks.layers.deform_conv import _check_args, _out_size, deform_conv3d
from dlka_monai.networks.layers.kernels import kernel_module

__all__ = ["deform_conv3d_fast", "dilated_depthwise_conv3d", "FastDilatedDepthwiseConv3d"]

# number of elements (rows * channels) of one chunk of sampled columns
_CHUNK_ELEMS_CPU = 1 << 21
_CHUNK_ELEMS_CUDA = 1 << 26


def numba_kernels():
    """The numba CPU kernels module, or None when numba cannot be imported (logged once)."""
    return kernel_module("deform_conv3d", "CPU", "deform_conv_numba", "numba")


def triton_kernels():
    """The Triton CUDA kernels module, or None when triton cannot be imported (logged once)."""
    return kernel_module("deform_conv3d", "CUDA", "deform_conv_triton", "triton")


def _implementation(device: torch.device):
    """The function :func:`deform_conv3d_fast` runs for tensors on ``device`` (after its checks): the
    numba kernels on CPU, the Triton kernels on CUDA, where their package imports; else the pure-PyTorch
    autograd function of this module."""
    if device.type == "cpu" and (kernels := numba_kernels()) is not None:
        return kernels.deform_conv3d_numba
    if device.type == "cuda" and (kernels := triton_kernels()) is not None:
        return kernels.deform_conv3d_triton
    return _DeformConv3dFn.apply


def _plain(t: torch.Tensor | None) -> torch.Tensor | None:
    return t if t is None or type(t) is torch.Tensor else t.as_subclass(torch.Tensor)


def _chunk_voxels(n_out: int, n_points: int, in_ch: int, device: torch.device) -> int:
    elems = _CHUNK_ELEMS_CUDA if device.type == "cuda" else _CHUNK_ELEMS_CPU
    return max(1, min(n_out, elems // max(1, n_points * in_ch)))


class _Sampler:
    """Sampling rows and trilinear weights for one image and a range of output voxels.

    The image is read from a zero-padded channels-last table (one voxel of zeros on each side), so
    every sampling cell whose floor lies in ``[-1, size - 1]`` has all 8 corners in the table; floors
    outside are clamped to that range with the fractional part clamped to ``[0, 1]``, which puts all
    the weight on padding (value 0, input gradient 0). Only the offset gradient needs the explicit
    ``inside`` mask (``-1 <= p < size`` per axis: outside it the reference has no valid corner).
    """

    def __init__(self, size, out_size, kernel, stride, padding, dilation, pos_dtype, device):
        self.size = size
        self.out_size = out_size
        self.padded = [s + 2 for s in size]
        self.n_table = math.prod(self.padded)
        self.n_points = math.prod(kernel)
        # int64: index_add_ on CPU is several times slower with int32 indices
        self.idx_dtype = torch.int64
        self.pos_dtype = pos_dtype
        self.device = device
        # kernel offsets per axis, [K] each, in kernel order k = (i * kh + j) * kw + l
        ki = torch.arange(self.n_points, device=device)
        k_axes = [ki // (kernel[1] * kernel[2]), (ki // kernel[2]) % kernel[1], ki % kernel[2]]
        self.k_coord = [(k_axes[a] * dilation[a]).to(pos_dtype) for a in range(3)]
        self.stride = stride
        self.padding = padding
        self.mult = [self.padded[1] * self.padded[2], self.padded[2], 1]
        # table row of corner (a, b, c) of the cell with padded floor index 0 is shift[abc]
        self.shift = torch.tensor(
            [a * self.mult[0] + b * self.mult[1] + c for a in (0, 1) for b in (0, 1) for c in (0, 1)],
            dtype=self.idx_dtype,
            device=device,
        )

    @staticmethod
    def voxel_major(offset_b: torch.Tensor) -> torch.Tensor:
        """``[K, 3, N']`` offsets of one image -> ``[3, N', K]``, so that chunks of voxels are contiguous."""
        return offset_b.permute(1, 2, 0).contiguous()

    def positions(self, offset_t: torch.Tensor, start: int, stop: int) -> list[torch.Tensor]:
        """Sampling positions ``[n, K]`` per axis for output voxels ``start:stop`` of one image.

        ``offset_t``: ``[3, N', K]`` (:meth:`voxel_major`). Same float operations as the reference (exact
        integer base + offset).
        """
        n = torch.arange(start, stop, device=self.device)
        hw = self.out_size[1] * self.out_size[2]
        o_axes = [n // hw, (n // self.out_size[2]) % self.out_size[1], n % self.out_size[2]]
        pos = []
        for a in range(3):
            base = (o_axes[a] * self.stride[a] - self.padding[a]).to(self.pos_dtype)
            base = base.unsqueeze(1) + self.k_coord[a].unsqueeze(0)  # [n, K], exact integers
            pos.append(base + offset_t[a, start:stop].to(self.pos_dtype))
        return pos

    def sample(self, pos, dtype, need_masks=False):
        """Table rows of the 8 corners ``[n*K, 8]`` and their weights ``[n*K, 8]``.

        Also returns per-axis weights ``(w0, w1)`` (``[n, K]`` each) and, if asked, the per-axis
        ``inside`` masks for the offset gradient.
        """
        lin = None
        axis_w, masks = [], []
        for a in range(3):
            p = pos[a]
            f = p.floor().clamp_(-1, self.size[a] - 1)
            frac = (p - f).clamp_(0, 1)
            if need_masks:
                masks.append((p >= -1) & (p < self.size[a]))
            # padded floor index is f + 1
            c = (f.to(self.idx_dtype) + 1) * self.mult[a] if self.mult[a] != 1 else f.to(self.idx_dtype) + 1
            lin = c if lin is None else lin + c
            frac = frac.to(dtype)
            axis_w.append((1 - frac, frac))
        rows = (lin.unsqueeze(-1) + self.shift).view(-1, 8)
        (z0, z1), (y0, y1), (x0, x1) = axis_w
        # one product per corner into its column: about twice as fast as a broadcast outer product
        w = z0.new_empty(*z0.shape, 8)
        yx = [wy * wx for wy in (y0, y1) for wx in (x0, x1)]
        for j, (wz, wyx) in enumerate((wz, wyx) for wz in (z0, z1) for wyx in yx):
            torch.mul(wz, wyx, out=w[..., j])
        return rows, w.view(-1, 8), axis_w, masks


def _padded_rows(x_b: torch.Tensor) -> torch.Tensor:
    """``[C, D, H, W]`` -> zero-padded channels-last rows ``[(D+2)*(H+2)*(W+2), C]``."""
    c, d, h, w = x_b.shape
    rows = x_b.new_zeros(d + 2, h + 2, w + 2, c)
    rows[1:-1, 1:-1, 1:-1].copy_(x_b.permute(1, 2, 3, 0))
    return rows.view(-1, c)


class _ColumnsDeformConv3dFn(torch.autograd.Function):
    """The column algorithm of the compiled kernels (numba on CPU, Triton on CUDA), per image and chunk
    of output voxels: forward = sampled columns ``[n, K * C_in]`` by a kernel, then one GEMM with the
    weight; backward = ``grad_cols = grad_out @ weight`` (GEMM), the offset gradient by a kernel (which
    refills the columns when the weight gradient ``grad_out^T @ cols`` needs them), the input gradient
    scattered into a zero-padded channels-last table by a kernel. Only the passes the inputs need run.

    ``apply(kernels, input, offset, weight, bias, stride, padding, dilation)``: ``kernels`` is the
    backend's class, built once per call with ``(offset [B, 3K, N'] in the positions' dtype, in_ch,
    size, out_size, kernel, stride, padding, dilation)`` and providing ``forward_cols(b, table, start,
    cols)``; ``backward_cols(b, table, start, grad_cols, grad_off, cols, grad_table)``, which in one pass
    over the chunk's sampling cells writes the offset gradient into ``grad_off[b]``, refills ``cols`` and
    adds the input gradient into ``grad_table``, each only where that argument is not None; and
    ``reduce_input_grad(grad_table)``, called after an image's chunks, which adds what the kernels kept
    aside (e.g. per-thread partial tables) into ``grad_table``. Subclasses name the backend in the
    autograd graph.
    """

    @staticmethod
    def forward(ctx, kernels, input, offset, weight, bias, stride, padding, dilation):
        batch, in_ch, *size = input.shape
        out_ch, _, *kernel = weight.shape
        out_size = [_out_size(*a) for a in zip(size, kernel, stride, padding, dilation)]
        n_out, n_points = math.prod(out_size), math.prod(kernel)
        pos_dtype = torch.promote_types(offset.dtype, torch.float32)
        off = offset.detach().to(pos_dtype).view(batch, 3 * n_points, n_out)
        run = kernels(off, in_ch, size, out_size, kernel, stride, padding, dilation)
        w_rows = weight.detach().permute(0, 2, 3, 4, 1).reshape(out_ch, n_points * in_ch)  # [C_out, K*C_in]
        chunk = _chunk_voxels(n_out, n_points, in_ch, input.device)
        cols = input.new_empty(chunk, n_points * in_ch)
        out = input.new_empty(batch, n_out, out_ch)
        for b in range(batch):
            table = _padded_rows(input[b].detach())
            for start in range(0, n_out, chunk):
                n = min(chunk, n_out - start)
                run.forward_cols(b, table, start, cols[:n])
                torch.mm(cols[:n], w_rows.t(), out=out[b, start : start + n])
        out = out.transpose(1, 2)
        if bias is not None:
            out = out + bias.view(1, -1, 1)
        ctx.save_for_backward(input, offset, weight)
        ctx.conf = (kernels, stride, padding, dilation, bias is not None)
        return out.reshape(batch, out_ch, *out_size)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        input, offset, weight = ctx.saved_tensors
        kernels, stride, padding, dilation, has_bias = ctx.conf
        need_x, need_off, need_w, need_b = ctx.needs_input_grad[1:5]
        batch, in_ch, *size = input.shape
        out_ch, _, *kernel = weight.shape
        out_size = list(grad_out.shape[2:])
        n_out, n_points = math.prod(out_size), math.prod(kernel)
        pos_dtype = torch.promote_types(offset.dtype, torch.float32)
        off = offset.detach().to(pos_dtype).view(batch, 3 * n_points, n_out)
        run = kernels(off, in_ch, size, out_size, kernel, stride, padding, dilation)
        w_rows = weight.detach().permute(0, 2, 3, 4, 1).reshape(out_ch, n_points * in_ch)
        chunk = _chunk_voxels(n_out, n_points, in_ch, input.device)
        grad_out = grad_out.reshape(batch, out_ch, n_out)

        grad_input = torch.empty_like(input) if need_x else None
        grad_off = torch.zeros(batch, 3 * n_points, n_out, dtype=pos_dtype, device=input.device) if need_off else None
        grad_w_rows = torch.zeros_like(w_rows) if need_w else None
        grad_bias = grad_out.sum((0, 2)) if (need_b and has_bias) else None
        cols = input.new_empty(chunk, n_points * in_ch)
        grad_cols = input.new_empty(chunk, n_points * in_ch)
        grad_table = input.new_empty((size[0] + 2) * (size[1] + 2) * (size[2] + 2), in_ch) if need_x else None
        for b in range(batch):
            table = _padded_rows(input[b].detach())
            if need_x:
                grad_table.zero_()
            for start in range(0, n_out, chunk):
                n = min(chunk, n_out - start)
                g_rows = grad_out[b, :, start : start + n].t()  # [n, C_out]
                if need_x or need_off:
                    torch.mm(g_rows, w_rows, out=grad_cols[:n])
                if need_off or need_x:
                    run.backward_cols(b, table, start, grad_cols[:n], grad_off, cols[:n] if need_w else None, grad_table)
                elif need_w:
                    run.forward_cols(b, table, start, cols[:n])
                if need_w:
                    grad_w_rows.addmm_(g_rows.t(), cols[:n])
            if need_x:
                run.reduce_input_grad(grad_table)
                grad_input[b].copy_(grad_table.view(*(s + 2 for s in size), in_ch)[1:-1, 1:-1, 1:-1].permute(3, 0, 1, 2))
        grad_weight = None
        if need_w:
            grad_weight = grad_w_rows.view(out_ch, *kernel, in_ch).permute(0, 4, 1, 2, 3).contiguous()
        grad_offset = grad_off.view(offset.shape).to(offset.dtype) if need_off else None
        return None, grad_input, grad_offset, grad_weight, grad_bias, None, None, None


class _DeformConv3dFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, offset, weight, bias, stride, padding, dilation):
        batch, in_ch, *size = input.shape
        out_ch, _, *kernel = weight.shape
        out_size = [_out_size(*a) for a in zip(size, kernel, stride, padding, dilation)]
        n_out = math.prod(out_size)
        n_points = math.prod(kernel)
        pos_dtype = torch.promote_types(offset.dtype, torch.float32)
        sampler = _Sampler(size, out_size, kernel, stride, padding, dilation, pos_dtype, input.device)
        w_rows = weight.permute(0, 2, 3, 4, 1).reshape(out_ch, n_points * in_ch)  # [C_out, K*C_in]
        chunk = _chunk_voxels(n_out, n_points, in_ch, input.device)
        out = input.new_empty(batch, n_out, out_ch)
        offset_v = offset.view(batch, n_points, 3, n_out)
        for b in range(batch):
            table = _padded_rows(input[b])
            offset_t = sampler.voxel_major(offset_v[b])
            for start in range(0, n_out, chunk):
                stop = min(start + chunk, n_out)
                rows, w, _, _ = sampler.sample(sampler.positions(offset_t, start, stop), input.dtype)
                cols = F.embedding_bag(rows, table, per_sample_weights=w, mode="sum")  # [n*K, C_in]
                torch.mm(cols.view(stop - start, n_points * in_ch), w_rows.t(), out=out[b, start:stop])
        out = out.transpose(1, 2)
        if bias is not None:
            out = out + bias.view(1, -1, 1)
        ctx.save_for_backward(input, offset, weight)
        ctx.conf = (stride, padding, dilation, bias is not None)
        return out.reshape(batch, out_ch, *out_size)

    @staticmethod
    def backward(ctx, grad_out):
        input, offset, weight = ctx.saved_tensors
        stride, padding, dilation, has_bias = ctx.conf
        need_x, need_off, need_w, need_b = ctx.needs_input_grad[:4]
        batch, in_ch, *size = input.shape
        out_ch, _, *kernel = weight.shape
        out_size = list(grad_out.shape[2:])
        n_out = math.prod(out_size)
        n_points = math.prod(kernel)
        pos_dtype = torch.promote_types(offset.dtype, torch.float32)
        sampler = _Sampler(size, out_size, kernel, stride, padding, dilation, pos_dtype, input.device)
        w_rows = weight.permute(0, 2, 3, 4, 1).reshape(out_ch, n_points * in_ch)
        chunk = _chunk_voxels(n_out, n_points, in_ch, input.device)
        grad_out = grad_out.reshape(batch, out_ch, n_out)
        offset_v = offset.view(batch, n_points, 3, n_out)

        grad_input = torch.zeros_like(input) if need_x else None
        grad_offset = torch.zeros(batch, n_points, 3, n_out, dtype=offset.dtype, device=offset.device) if need_off else None
        grad_w_rows = torch.zeros_like(w_rows) if need_w else None
        grad_bias = grad_out.sum((0, 2)) if (need_b and has_bias) else None
        if need_x:
            grad_table = input.new_empty(sampler.n_table, in_ch)
            buf = input.new_empty(chunk * n_points, in_ch)

        for b in range(batch):
            table = _padded_rows(input[b])
            offset_t = sampler.voxel_major(offset_v[b])
            if need_x:
                grad_table.zero_()
            for start in range(0, n_out, chunk):
                stop = min(start + chunk, n_out)
                n = stop - start
                pos = sampler.positions(offset_t, start, stop)
                rows, w, axis_w, masks = sampler.sample(pos, input.dtype, need_masks=need_off)
                g_rows = grad_out[b, :, start:stop].t()  # [n, C_out]
                grad_cols = None
                if need_x or need_off:
                    grad_cols = torch.mm(g_rows, w_rows).view(n * n_points, in_ch)
                if need_off:
                    with torch.enable_grad():
                        w_req = w.detach().requires_grad_()
                        cols = F.embedding_bag(rows, table, per_sample_weights=w_req, mode="sum")
                    # gw[r, j] = <grad_cols[r], value of corner j>  (native kernel, corners not materialised)
                    (gw,) = torch.autograd.grad(cols, w_req, grad_cols)
                    cols = cols.detach()
                    gw = gw.view(n, n_points, 2, 2, 2)
                    (z0, z1), (y0, y1), (x0, x1) = axis_w
                    d = gw[..., 1, :, :] - gw[..., 0, :, :]  # along z: [n, K, 2(y), 2(x)]
                    gz = y0 * (d[..., 0, 0] * x0 + d[..., 0, 1] * x1) + y1 * (d[..., 1, 0] * x0 + d[..., 1, 1] * x1)
                    d = gw[..., :, 1, :] - gw[..., :, 0, :]  # along y: [n, K, 2(z), 2(x)]
                    gy = z0 * (d[..., 0, 0] * x0 + d[..., 0, 1] * x1) + z1 * (d[..., 1, 0] * x0 + d[..., 1, 1] * x1)
                    d = gw[..., 1] - gw[..., 0]  # along x: [n, K, 2(z), 2(y)]
                    gx = z0 * (d[..., 0, 0] * y0 + d[..., 0, 1] * y1) + z1 * (d[..., 1, 0] * y0 + d[..., 1, 1] * y1)
                    gpos = torch.stack((gz * masks[0], gy * masks[1], gx * masks[2]), 0)  # [3, n, K]
                    grad_offset[b, :, :, start:stop] = gpos.permute(2, 0, 1).to(offset.dtype)
                elif need_w:
                    cols = F.embedding_bag(rows, table, per_sample_weights=w, mode="sum")
                if need_w:
                    grad_w_rows.addmm_(g_rows.t(), cols.view(n, n_points * in_ch))
                if need_x:
                    rows_t = rows.t()
                    w_t = w.t()
                    src = buf[: n * n_points]
                    for j in range(8):
                        torch.mul(grad_cols, w_t[j].unsqueeze(1), out=src)
                        grad_table.index_add_(0, rows_t[j].contiguous(), src)
            if need_x:
                grad_input[b].copy_(grad_table.view(*sampler.padded, in_ch)[1:-1, 1:-1, 1:-1].permute(3, 0, 1, 2))
        grad_weight = None
        if need_w:
            grad_weight = grad_w_rows.view(out_ch, *kernel, in_ch).permute(0, 4, 1, 2, 3).contiguous()
        grad_offset = grad_offset.view(offset.shape) if need_off else None
        return grad_input, grad_offset, grad_weight, grad_bias, None, None, None


def deform_conv3d_fast(
    input: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
) -> torch.Tensor:
    """Drop-in replacement of :func:`~dlka_monai.networks.layers.deform_conv.deform_conv3d`.

    Same arguments, shapes, semantics and result (up to float rounding), computed by a custom
    autograd function that saves only ``input``, ``offset`` and ``weight`` for backward.

    Half precision (float16 / bfloat16 input, as under AMP) is computed in float32, with autocast off,
    and returned in the input's dtype: the sampling positions need float32 anyway, and the reference
    path would keep all sampled columns for backward. Falls back to the reference ``deform_conv3d``
    (pure autograd), with a warning, for ``groups != 1`` and other dtypes.

    CPU tensors run numba kernels when numba is installed (:func:`numba_kernels`), CUDA tensors Triton
    kernels when triton is installed (:func:`triton_kernels`); other devices, and these without their
    package, the pure-PyTorch autograd function of this module.
    """
    stride, padding, dilation = _triple(stride), _triple(padding), _triple(dilation)
    if input.dtype in (torch.float16, torch.bfloat16) or (input.is_floating_point() and weight.dtype != input.dtype):
        with torch.autocast(input.device.type, enabled=False):
            args = [None if t is None else t.float() for t in (input, offset, weight, bias)]
            return deform_conv3d_fast(*args, stride, padding, dilation, groups).to(input.dtype)
    if groups != 1 or input.dtype not in (torch.float32, torch.float64):
        warnings.warn(
            f"deform_conv3d_fast supports groups=1 and floating-point input only (got groups={groups}, "
            f"{input.dtype}); using the reference deform_conv3d, which is slower and keeps more memory.",
            stacklevel=2,
        )
        return deform_conv3d(input, offset, weight, bias, stride, padding, dilation, groups)
    *_, out_size = _check_args(input, offset, weight, stride, padding, dilation, groups)
    if min(out_size) <= 0:
        return deform_conv3d(input, offset, weight, bias, stride, padding, dilation, groups)
    # plain tensors inside the autograd function: MONAI's MetaTensor overrides methods like new_empty
    input, offset, weight = (_plain(t).contiguous() for t in (input, offset, weight))
    return _implementation(input.device)(input, offset, weight, _plain(bias), stride, padding, dilation)


# ----------------------------------------------------------------------------------------------------
# depthwise dilated convolution by dilation-phase decomposition
# ----------------------------------------------------------------------------------------------------


_PHASE_MIN_VOXELS = 512


def _phase_split(x: torch.Tensor, dil: int, q: Sequence[int]) -> torch.Tensor:
    """``[B, C, D, H, W]`` -> ``[B * dil^3, C, qd, qh, qw]``: zero-pad to ``q * dil``, one sub-grid per phase."""
    b, c, d, h, w = x.shape
    x = F.pad(x, (0, q[2] * dil - w, 0, q[1] * dil - h, 0, q[0] * dil - d))
    x = x.view(b, c, q[0], dil, q[1], dil, q[2], dil).permute(0, 3, 5, 7, 1, 2, 4, 6)
    return x.reshape(b * dil**3, c, *q)


def _phase_merge(y: torch.Tensor, batch: int, dil: int, size: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`_phase_split` (drops the padding)."""
    _, c, *q = y.shape
    y = y.view(batch, dil, dil, dil, c, *q).permute(0, 4, 5, 1, 6, 2, 7, 3)
    y = y.reshape(batch, c, q[0] * dil, q[1] * dil, q[2] * dil)
    return y[:, :, : size[0], : size[1], : size[2]].contiguous()


class _PhaseDepthwiseFn(torch.autograd.Function):
    # backward runs in forward's autocast state: under CPU autocast its convs then cast the float32
    # weight and the saved input like the gradient, as forward's conv did
    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu")
    def forward(ctx, x, weight, bias, dil):
        batch, ch, *size = x.shape
        q = [-(-s // dil) for s in size]
        p = (weight.shape[-1] - 1) // 2
        xs = _phase_split(x, dil, q)
        ys = F.conv3d(xs, weight, bias, padding=p, groups=ch)
        ctx.save_for_backward(xs, weight)
        ctx.conf = (batch, dil, size, bias is not None)
        return _phase_merge(ys, batch, dil, size)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx, grad_y):
        xs, weight = ctx.saved_tensors
        batch, dil, size, has_bias = ctx.conf
        ch = weight.shape[0]
        k = weight.shape[-1]
        p = (k - 1) // 2
        q = list(xs.shape[2:])
        gs = _phase_split(grad_y, dil, q)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            # transposed conv of a stride-1 conv = conv with the flipped kernel
            grad_x = _phase_merge(F.conv3d(gs, weight.flip(-1, -2, -3), padding=p, groups=ch), batch, dil, size)
        if ctx.needs_input_grad[1]:
            # grad_w[c] = sum over phases of corr(x_phase[c], g_phase[c]): one grouped conv, g as kernel
            n = gs.shape[0] * ch
            xp = F.pad(xs, (p,) * 6).reshape(1, n, *[s + 2 * p for s in q])
            gw = F.conv3d(xp, gs.reshape(n, 1, *q), groups=n)
            grad_w = gw.view(gs.shape[0], ch, k, k, k).sum(0).unsqueeze(1)
        if has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_y.sum((0, 2, 3, 4))
        return grad_x, grad_w, grad_b, None


def dilated_depthwise_conv3d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    dilation: int,
    padding: int,
) -> torch.Tensor:
    """``F.conv3d(x, weight, bias, padding=padding, dilation=dilation, groups=C)`` for a depthwise weight
    ``[C, 1, k, k, k]``, computed on the ``dilation^3`` phase sub-grids.

    Output voxel ``3q + r`` of a dilation-3 convolution only reads input voxels of phase ``r``, so the
    zero-padded volume is rearranged into ``dilation^3`` sub-grids (batched) and convolved with the
    *undilated* kernel (``padding // dilation``); exact (same products and sums). Backward is explicit:
    input gradient = phase conv with the flipped kernel, weight gradient = one grouped conv of the
    phase sub-grids with the phase gradients as kernels. Much faster than the dilated depthwise
    ``nn.Conv3d`` on CPU.

    Used when the conv is "same" (``padding == dilation * (k - 1) / 2``), the kernel is cubic and odd,
    ``dilation > 1``, the weight is depthwise and the volume has at least 512 voxels (on tiny volumes,
    e.g. 4^3, the phase form's weight gradient is slower than cuDNN/oneDNN's); everything else falls
    back to ``F.conv3d``, and so does CUDA (measured on an H200: cuDNN's dilated depthwise conv is as
    fast or faster there).
    """
    ch = x.shape[1]
    k = weight.shape[-1]
    usable = (
        x.dim() == 5
        and weight.shape == (ch, 1, k, k, k)
        and k % 2 == 1
        and dilation > 1
        and padding == dilation * (k - 1) // 2
        and x[0, 0].numel() >= _PHASE_MIN_VOXELS
        and x.device.type == "cpu"
    )
    if not usable:
        return F.conv3d(x, weight, bias, padding=padding, dilation=dilation, groups=ch)
    return _PhaseDepthwiseFn.apply(_plain(x), _plain(weight), _plain(bias), dilation)


class FastDilatedDepthwiseConv3d(nn.Conv3d):
    """``nn.Conv3d(C, C, k, padding=p, dilation=d, groups=C)`` (stride 1, zero padding) computed with
    :func:`dilated_depthwise_conv3d`; same parameters and state_dict keys (``weight``, ``bias``), so
    checkpoints of the plain ``nn.Conv3d`` load unchanged. Other configurations use ``nn.Conv3d.forward``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        k = self.kernel_size
        ok = (
            self.groups == self.in_channels == self.out_channels
            and self.padding_mode == "zeros"
            and self.stride == (1, 1, 1)
            and len(set(k)) == 1
            and len(set(self.dilation)) == 1
            and isinstance(self.padding, tuple)
            and len(set(self.padding)) == 1
        )
        if not ok or torch.jit.is_tracing():
            return super().forward(x)
        return dilated_depthwise_conv3d(x, self.weight, self.bias, self.dilation[0], self.padding[0])
