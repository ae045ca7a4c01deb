"""Triton kernels of the CUDA path of deform_conv3d_fast, checked on CPU with Triton's interpreter.

``TRITON_INTERPRET=1`` must be set before ``triton.jit`` decorates the kernels, so the comparison with
the reference runs in one subprocess of its own (it prints the errors as JSON, the asserts are here);
this process, and every other test, sees triton unchanged. On a machine with CUDA the compiled kernels
are also compared directly.
"""

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from dlka_monai.networks.layers import deform_conv_fast, kernels
from dlka_monai.networks.layers.deform_conv import deform_conv3d
from utils import compile_for_sm90, run_interpreted
from utils import deform3d_case as _case
from utils import deform3d_close as _close

triton = pytest.importorskip("triton", exc_type=ImportError)
ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent

# (batch, C_in, C_out, size, kernel, stride, padding, dilation) as in test_deform_conv_fast: offsets of
# up to 3 voxels (8 in "far") cross the border; shapes tiny because the interpreter is slow
_SCRIPT = textwrap.dedent(
    """
    import json
    import torch
    from dlka_monai.networks.layers import deform_conv_fast, deform_conv_triton as dct
    from dlka_monai.networks.layers.deform_conv import deform_conv3d
    from utils import deform3d_case as _case

    NAMES = ("input", "offset", "weight", "bias")

    def err(a, r):
        assert a.dtype == r.dtype and a.shape == r.shape, (a.dtype, r.dtype, a.shape, r.shape)
        return [(a - r).abs().max().item(), r.abs().max().item()]

    def compare(case, dtype, amp=3.0, alone=False):
        torch.manual_seed(0)
        x, off, w, b, (st, pd, dl, _) = _case(*case, dtype=dtype, amp=amp)
        out = dct.deform_conv3d_triton(x, off, w, b, st, pd, dl)
        ref = deform_conv3d(x, off, w, b, st, pd, dl)
        res = {"forward": err(out, ref)}
        g = torch.randn_like(ref)
        inputs = (x, off, w, b)
        if alone:
            # only one input requires grad (needs_input_grad), so the kernels skip the passes not needed
            for j, name in enumerate(NAMES[:3]):
                ins = [t.detach().requires_grad_(i == j) for i, t in enumerate(inputs)]
                a = torch.autograd.grad(dct.deform_conv3d_triton(*ins, st, pd, dl), ins[j], g)[0]
                res[name] = err(a, torch.autograd.grad(ref, inputs[j], g, retain_graph=True)[0])
        else:
            for name, a, r in zip(NAMES, torch.autograd.grad(out, inputs, g), torch.autograd.grad(ref, inputs, g)):
                res[name] = err(a, r)
        return res

    # the shipped blocks (voxels per program, channels per block) as the GPU runs them: no override here
    results = {}
    for dtype in (torch.float32, torch.float64):
        tag = str(dtype).split(".")[-1]
        results[f"3x3x3_{tag}"] = compare((1, 3, 2, (3, 4, 3), 3, 1, 1, 1), dtype)
        results[f"stride_pad_dil_{tag}"] = compare((2, 4, 3, (5, 4, 6), (3, 2, 1), (2, 1, 1), (1, 0, 0), (1, 2, 1)), dtype)
    results["far_outside_float32"] = compare((1, 3, 2, (4, 4, 3), (2, 2, 1), 1, 1, 1), torch.float32, amp=8.0)
    results["far_outside_alone_float32"] = compare((1, 3, 2, (4, 4, 3), (2, 2, 1), 1, 1, 1), torch.float32, amp=8.0, alone=True)
    # several chunks of 5 voxels, 2 voxel blocks per chunk (the last masked), 2 channel blocks of 2
    saved = deform_conv_fast._CHUNK_ELEMS_CPU, dct._BLOCK_N, dct._MAX_BLOCK_C
    deform_conv_fast._CHUNK_ELEMS_CPU, dct._BLOCK_N, dct._MAX_BLOCK_C = 4 * 3 * 5, 4, 2
    results["chunks_and_blocks_float64"] = compare((1, 3, 2, (4, 3, 3), (2, 2, 1), 1, 0, 1), torch.float64)
    deform_conv_fast._CHUNK_ELEMS_CPU, dct._BLOCK_N, dct._MAX_BLOCK_C = saved

    torch.manual_seed(3)
    x, off, w, b, (st, pd, dl, _) = _case(1, 2, 2, (2, 3, 2), (2, 2, 1), 1, 1, 1, dtype=torch.float64, amp=1.5)
    results["gradcheck"] = torch.autograd.gradcheck(
        lambda *a: dct.deform_conv3d_triton(*a, st, pd, dl), (x, off, w, b),
        eps=1e-6, atol=1e-6, fast_mode=True, raise_exception=False,
    )
    print(json.dumps(results))
    """
)
_CHECKS = [
    *(f"{c}_{t}" for t in ("float32", "float64") for c in ("3x3x3", "stride_pad_dil")),
    "far_outside_float32",
    "far_outside_alone_float32",
    "chunks_and_blocks_float64",
]


@pytest.fixture(scope="module")
def interpreted():
    """Errors ``[max |triton - reference|, max |reference|]`` per check and quantity, from the kernels
    run by Triton's interpreter on CPU tensors."""
    return run_interpreted(_SCRIPT)


@pytest.mark.slow  # minutes on CPU: the CUDA path, checked without a GPU
@pytest.mark.parametrize("check", _CHECKS)
def test_interpreted_kernels_match_reference(interpreted, check):
    """Forward and the four gradients, shapes sampling across the border, stride, padding, dilation,
    several chunks and blocks."""
    tol = 1e-5 if check.endswith("float32") else 1e-12
    res = interpreted[check]
    assert set(res) == {"forward", "input", "offset", "weight", *(() if "alone" in check else ("bias",))}
    bad = {name: f"{diff:.3g} (reference max {scale:.3g})" for name, (diff, scale) in res.items() if not diff <= tol * (1 + scale)}
    assert not bad, f"{check}: {bad}"


@pytest.mark.slow  # minutes on CPU: the CUDA path, checked without a GPU
def test_interpreted_gradcheck_float64(interpreted):
    assert interpreted["gradcheck"] is True


@pytest.mark.slow  # minutes on CPU: the CUDA path, checked without a GPU
@pytest.mark.parametrize(
    "dtypes, ones", [(("fp32", "fp64"), ()), (("fp64", "fp64"), ("C", "kw", "H", "start"))], ids=["fp32_fp64", "fp64_ones"]
)
def test_kernels_compile_for_cuda(dtypes, ones):
    """The interpreter does not check types as the compiler does: compile every kernel to a cubin for
    sm_90 (no GPU needed), table and offsets of the given dtypes, the integer arguments that Triton
    specialises when they are 1 given as constants."""
    from dlka_monai.networks.layers import deform_conv_triton as dct

    table, pos = (f"*{d}" for d in dtypes)
    ptr_types = dict(table_ptr=table, cols_ptr=table, grad_cols_ptr=table, grad_table_ptr=table, off_ptr=pos, grad_off_ptr=pos)
    consts = dict(BLOCK_N=dct._BLOCK_N, BLOCK_C=dct._MAX_BLOCK_C, **{name: 1 for name in ones})
    for fn, extra in ((dct._forward_cols_kernel, {}), (dct._offset_grad_kernel, dict(NEED_COLS=True)),
                      (dct._offset_grad_kernel, dict(NEED_COLS=False)), (dct._input_grad_kernel, {})):  # fmt: skip
        compiled = compile_for_sm90(fn, ptr_types, {**consts, **extra})
    assert f"atom.global.gpu.relaxed.add.f{dtypes[0][2:]}" in compiled.asm["ptx"]  # the scatter's atomics


def test_selection_per_device(monkeypatch):
    """CPU tensors run numba (or pure PyTorch), never Triton; CUDA tensors run Triton when it imports,
    else the pure-PyTorch autograd function."""
    from dlka_monai.networks.layers import deform_conv_triton

    numba = deform_conv_fast.numba_kernels()
    cpu_expected = numba.deform_conv3d_numba if numba is not None else deform_conv_fast._DeformConv3dFn.apply
    assert deform_conv_fast._implementation(torch.device("cpu")) == cpu_expected
    assert deform_conv_fast._implementation(torch.device("cuda")) == deform_conv_triton.deform_conv3d_triton
    monkeypatch.setattr(deform_conv_fast, "triton_kernels", lambda: None)
    assert deform_conv_fast._implementation(torch.device("cuda")) == deform_conv_fast._DeformConv3dFn.apply
    monkeypatch.setattr(deform_conv_fast, "numba_kernels", lambda: None)
    assert deform_conv_fast._implementation(torch.device("cpu")) == deform_conv_fast._DeformConv3dFn.apply


def test_cpu_tensors_do_not_run_triton():
    x, off, w, b, (st, pd, dl, _) = _case(1, 2, 2, (3, 3, 3), 2, 1, 0, 1)
    name = deform_conv_fast.deform_conv3d_fast(x, off, w, b, st, pd, dl).grad_fn.name()
    assert "Triton" not in name and name.endswith(("_DeformConv3dNumbaFnBackward", "_DeformConv3dFnBackward"))


def test_cuda_without_triton_selects_pure_pytorch_and_logs_once(monkeypatch, caplog):
    # `import triton` raises ImportError while the test runs; the kernel module is imported afresh
    monkeypatch.setitem(sys.modules, "triton", None)
    monkeypatch.delitem(sys.modules, "dlka_monai.networks.layers.deform_conv_triton", raising=False)
    kernels.kernel_module.cache_clear()
    try:
        with caplog.at_level(logging.INFO, logger=kernels.__name__):
            for _ in range(2):
                assert deform_conv_fast._implementation(torch.device("cuda")) == deform_conv_fast._DeformConv3dFn.apply
    finally:
        kernels.kernel_module.cache_clear()
    lines = [r.getMessage() for r in caplog.records if r.name == kernels.__name__]
    assert len(lines) == 1 and "on CUDA: pure-PyTorch path (triton unavailable" in lines[0], lines


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_compiled_kernels_on_cuda(dtype, monkeypatch, caplog):
    """The compiled kernels through the entry point on a GPU: a stage-like shape, then several chunks."""
    kernels.kernel_module.cache_clear()
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    for case, chunk_elems in (((2, 32, 16, (8, 8, 8), 3, 1, 1, 1), None), ((1, 5, 3, (6, 7, 5), 3, 2, 1, 2), 27 * 5 * 7)):
        if chunk_elems:
            monkeypatch.setattr(deform_conv_fast, "_CHUNK_ELEMS_CUDA", chunk_elems)
        torch.manual_seed(0)
        x, off, w, b, (st, pd, dl, _) = (
            t.detach().cuda().requires_grad_() if torch.is_tensor(t) else t for t in _case(*case, dtype=dtype)
        )
        with caplog.at_level(logging.INFO, logger=kernels.__name__):
            out = deform_conv_fast.deform_conv3d_fast(x, off, w, b, st, pd, dl)
        assert out.grad_fn.name().endswith("_DeformConv3dTritonFnBackward")
        ref = deform_conv3d(x, off, w, b, st, pd, dl)
        assert _close(out, ref, rel=tol, abs_=tol)
        g = torch.randn_like(ref)
        grads = torch.autograd.grad(out, (x, off, w, b), g)
        for name, a, r in zip(("input", "offset", "weight", "bias"), grads, torch.autograd.grad(ref, (x, off, w, b), g)):
            assert _close(a, r, rel=tol, abs_=tol), f"{case} grad {name}: {(a - r).abs().max().item()}"
    assert any("on CUDA: triton" in r.getMessage() for r in caplog.records if r.name == kernels.__name__)
