# Copyright (c) dlka_monai contributors. Licensed under the Apache License, Version 2.0.
"""Depthwise 2D deformable convolution: :func:`torchvision.ops.deform_conv2d` with ``groups = C``.

torchvision computes a grouped deformable conv as one small GEMM per group, which for a depthwise
weight (one ``k×k`` filter per channel, as in the 2D D-LKA decoder) costs 50-80× a plain depthwise conv
on CPU. :func:`deform_conv2d_depthwise` has torchvision's semantics for that case and runs fused kernels
(no columns, no GEMM): on CPU with numba installed those of
:mod:`~dlka_monai.networks.layers.deform_conv2d_numba`, on CUDA with Triton installed those of
:mod:`~dlka_monai.networks.layers.deform_conv2d_triton`; everything else goes to torchvision, the
reference.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn.modules.utils import _pair
from torchvision.ops import deform_conv2d

from dlka_monai.networks.layers.deform_conv import _out_size
from dlka_monai.networks.layers.deform_conv_fast import _plain
from dlka_monai.networks.layers.kernels import kernel_module

__all__ = ["deform_conv2d_depthwise"]


def numba_kernels():
    """The numba CPU kernels module, or None when numba cannot be imported (logged once)."""
    return kernel_module("deform_conv2d_depthwise", "CPU", "deform_conv2d_numba", "numba", fallback="torchvision's deform_conv2d")


def triton_kernels():
    """The Triton CUDA kernels module, or None when triton cannot be imported (logged once)."""
    return kernel_module("deform_conv2d_depthwise", "CUDA", "deform_conv2d_triton", "triton", fallback="torchvision's deform_conv2d")


def _kernel(device: torch.device):
    """The kernel function a float32/float64 depthwise call on ``device`` runs: numba's on CPU, Triton's
    on CUDA, where their package imports; None (torchvision's op) otherwise."""
    if device.type == "cpu" and (kernels := numba_kernels()) is not None:
        return kernels.deform_conv2d_depthwise_numba
    if device.type == "cuda" and (kernels := triton_kernels()) is not None:
        return kernels.deform_conv2d_depthwise_triton
    return None


def _is_depthwise(input: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor, stride, padding, dilation) -> bool:
    """Whether the arguments are a valid depthwise call with one offset group and a non-empty output
    (anything else goes to torchvision, which raises its own errors for invalid shapes)."""
    if input.dim() != 4 or offset.dim() != 4 or weight.dim() != 4:
        return False
    batch, ch, *size = input.shape
    kernel = weight.shape[2:]
    out = [_out_size(*a) for a in zip(size, kernel, stride, padding, dilation)]
    return (
        tuple(weight.shape[:2]) == (ch, 1)
        and tuple(offset.shape) == (batch, 2 * kernel[0] * kernel[1], *out)
        and min(out) > 0
        and batch * ch > 0
    )


def deform_conv2d_depthwise(
    input: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
) -> torch.Tensor:
    """``torchvision.ops.deform_conv2d(input, offset, weight, bias, stride, padding, dilation)`` for a
    depthwise weight (groups = C) and one offset group: bilinear sampling, zero outside the image, no
    mask.

    Half precision (float16 / bfloat16, or mixed dtypes as under autocast) is computed in float32 with
    autocast off and returned in the input's dtype. Float32/float64 tensors run the numba kernels on CPU
    when numba is installed (:func:`numba_kernels`) and the Triton kernels on CUDA when triton is
    installed (:func:`triton_kernels`); other devices, dtypes and shapes run torchvision.

    Args:
        input: ``[B, C, H, W]``.
        offset: ``[B, 2 * kh * kw, H', W']`` in pixels, (dy, dx) per kernel point ``k = i * kw + j``.
        weight: ``[C, 1, kh, kw]``.
        bias: ``[C]`` or None.
        stride: int or 2 ints.
        padding: int or 2 ints (zero padding).
        dilation: int or 2 ints.

    Returns:
        ``[B, C, H', W']``.
    """
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    if input.dtype in (torch.float16, torch.bfloat16) or (
        input.is_floating_point() and {offset.dtype, weight.dtype, input.dtype} != {input.dtype}
    ):
        with torch.autocast(input.device.type, enabled=False):
            args = [None if t is None else t.float() for t in (input, offset, weight, bias)]
            return deform_conv2d_depthwise(*args, stride, padding, dilation).to(input.dtype)
    # plain tensors inside the autograd function: MONAI's MetaTensor overrides methods like new_empty
    input, offset, weight, bias = (_plain(t) for t in (input, offset, weight, bias))
    fast = input.dtype in (torch.float32, torch.float64) and _is_depthwise(input, offset, weight, stride, padding, dilation)
    if fast and (kernel := _kernel(input.device)) is not None:
        input, offset, weight = (t.contiguous() for t in (input, offset, weight))
        return kernel(input, offset, weight, bias, stride, padding, dilation)
    return deform_conv2d(input, offset, weight, bias, stride, padding, dilation)
