"""Triton kernels of the CUDA path of deform_conv2d_depthwise, checked on CPU with Triton's interpreter.

``TRITON_INTERPRET=1`` must be set before ``triton.jit`` decorates the kernels, so the comparison with
torchvision runs in one subprocess of its own (it prints the errors as JSON, the asserts are here);
this process, and every other test, sees triton unchanged. On a machine with CUDA the compiled kernels
are also compared directly.
"""

import logging
import sys
import textwrap

import pytest
import torch
from torchvision.ops import deform_conv2d

from dlka_monai.networks.layers import deform_conv2d as dc2d
from dlka_monai.networks.layers import kernels
from utils import compile_for_sm90, run_interpreted
from utils import deform2d_case as _case
from utils import deform2d_close as _close

pytest.importorskip("triton", exc_type=ImportError)

# (batch, C, (H, W), k, stride, padding, dilation) as in test_deform_conv2d_depthwise: offsets of up to
# 3 pixels (6 in "far") cross the border, kept off integer positions; shapes tiny because the
# interpreter is slow
_SCRIPT = textwrap.dedent(
    """
    import json
    import torch
    from torch.nn.modules.utils import _pair
    from torchvision.ops import deform_conv2d
    from dlka_monai.networks.layers import deform_conv2d_triton as dct
    from utils import deform2d_case as _case

    NAMES = ("input", "offset", "weight", "bias")

    def err(a, r):
        assert a.dtype == r.dtype and a.shape == r.shape, (a.dtype, r.dtype, a.shape, r.shape)
        return [(a - r).abs().max().item(), r.abs().max().item()]

    def run(x, off, w, b, conf):
        return dct.deform_conv2d_depthwise_triton(x, off, w, b, *(_pair(v) for v in conf))

    def compare(case, dtype, amp=3.0, alone=False):
        torch.manual_seed(0)
        x, off, w, b, conf = _case(*case, dtype=dtype, amp=amp)
        out = run(x, off, w, b, conf)
        ref = deform_conv2d(x, off, w, b, *conf)
        res = {"forward": err(out, ref)}
        g = torch.randn_like(ref)
        inputs = (x, off, w, b)
        if alone:
            # only one input requires grad (needs_input_grad), so the kernel skips the passes not needed
            for j, name in enumerate(NAMES[:3]):
                ins = [t.detach().requires_grad_(i == j) for i, t in enumerate(inputs)]
                a = torch.autograd.grad(run(*ins, conf), ins[j], g)[0]
                res[name] = err(a, torch.autograd.grad(ref, inputs[j], g, retain_graph=True)[0])
        else:
            for name, a, r in zip(NAMES, torch.autograd.grad(out, inputs, g), torch.autograd.grad(ref, inputs, g)):
                res[name] = err(a, r)
        return res

    # the shipped blocks (pixels per program, channels per block) as the GPU runs them: no override here
    results = {}
    for dtype in (torch.float32, torch.float64):
        tag = str(dtype).split(".")[-1]
        results[f"5x5_pad2_{tag}"] = compare((1, 3, (5, 7), 5, 1, 2, 1), dtype)
        results[f"7x7_dil3_pad9_{tag}"] = compare((1, 2, (6, 5), 7, 1, 9, 3), dtype)
        results[f"stride2_{tag}"] = compare((2, 3, (7, 6), 3, 2, 1, 1), dtype)
    results["far_outside_float32"] = compare((1, 2, (4, 5), 3, 1, 1, 1), torch.float32, amp=6.0)
    results["far_outside_alone_float32"] = compare((1, 2, (4, 5), 3, 1, 1, 1), torch.float32, amp=6.0, alone=True)
    # 2 images of 2 pixel blocks of 4 (the last masked), 3 channel blocks of 2 (the last masked)
    saved = dct._BLOCK_N, dct._MAX_BLOCK_C
    dct._BLOCK_N, dct._MAX_BLOCK_C = 4, 2
    results["blocks_float64"] = compare((2, 5, (3, 2), 3, 1, 1, 1), torch.float64)
    dct._BLOCK_N, dct._MAX_BLOCK_C = saved

    torch.manual_seed(3)
    x, off, w, b, conf = _case(1, 2, (3, 4), 3, 1, 1, 1, dtype=torch.float64, amp=1.5)
    results["gradcheck"] = torch.autograd.gradcheck(
        lambda *a: run(*a, conf), (x, off, w, b), eps=1e-6, atol=1e-6, fast_mode=True, raise_exception=False
    )
    print(json.dumps(results))
    """
)
_CHECKS = [
    *(f"{c}_{t}" for t in ("float32", "float64") for c in ("5x5_pad2", "7x7_dil3_pad9", "stride2")),
    "far_outside_float32",
    "far_outside_alone_float32",
    "blocks_float64",
]


@pytest.fixture(scope="module")
def interpreted():
    """Errors ``[max |triton - torchvision|, max |torchvision|]`` per check and quantity, from the
    kernels run by Triton's interpreter on CPU tensors."""
    return run_interpreted(_SCRIPT)


@pytest.mark.slow  # minutes on CPU: the CUDA path, checked without a GPU
@pytest.mark.parametrize("check", _CHECKS)
def test_interpreted_kernels_match_torchvision(interpreted, check):
    """Forward and the four gradients: the decoder's two kernels, stride 2, non-square images, samples
    across the border, several pixel and channel blocks."""
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
    "dtypes, ones", [(("fp32", "fp32"), ()), (("fp64", "fp64"), ("C", "kw", "H", "B"))], ids=["fp32", "fp64_ones"]
)
def test_kernels_compile_for_cuda(dtypes, ones):
    """The interpreter does not check types as the compiler does: compile every kernel variant to a
    cubin for sm_90 (no GPU needed), tensors and offsets of the given dtypes, the integer arguments that
    Triton specialises when they are 1 given as constants (``B``: the backward kernel's only)."""
    from dlka_monai.networks.layers import deform_conv2d_triton as dct

    table, pos = (f"*{d}" for d in dtypes)
    names = ("table_ptr", "w_ptr", "out_ptr", "grad_ptr", "grad_table_ptr", "grad_w_ptr")
    ptr_types = dict(off_ptr=pos, grad_off_ptr=pos, **{name: table for name in names})
    variants = [(dct._forward_kernel, {})]
    # each pass alone, and all three
    for flags in ((1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 1)):
        variants.append((dct._backward_kernel, dict(zip(("NEED_X", "NEED_OFF", "NEED_W"), map(bool, flags)))))
    for fn, extra in variants:
        compiled = compile_for_sm90(fn, ptr_types, dict(BLOCK_N=dct._BLOCK_N, BLOCK_C=dct._MAX_BLOCK_C, **{name: 1 for name in ones if name in fn.arg_names}, **extra))
    # the scatter's and the weight gradient's atomics
    assert f"atom.global.gpu.relaxed.add.f{dtypes[0][2:]}" in compiled.asm["ptx"]


def test_selection_per_device(monkeypatch):
    """CPU tensors run numba (or torchvision), never Triton; CUDA tensors run Triton when it imports,
    else torchvision."""
    from dlka_monai.networks.layers import deform_conv2d_triton

    numba = dc2d.numba_kernels()
    assert dc2d._kernel(torch.device("cpu")) == (numba.deform_conv2d_depthwise_numba if numba is not None else None)
    assert dc2d._kernel(torch.device("cuda")) == deform_conv2d_triton.deform_conv2d_depthwise_triton
    monkeypatch.setattr(dc2d, "triton_kernels", lambda: None)
    assert dc2d._kernel(torch.device("cuda")) is None
    monkeypatch.setattr(dc2d, "numba_kernels", lambda: None)
    assert dc2d._kernel(torch.device("cpu")) is None


def test_cpu_tensors_do_not_run_triton():
    x, off, w, b, conf = _case(1, 2, (5, 5), 3, 1, 1, 1)
    name = dc2d.deform_conv2d_depthwise(x, off, w, b, *conf).grad_fn.name()
    assert "Triton" not in name
    assert name == "_DeformConv2dDepthwiseNumbaFnBackward" or "torchvision_deform_conv2d" in name, name


def test_cuda_without_triton_selects_torchvision_and_logs_once(monkeypatch, caplog):
    # `import triton` raises ImportError while the test runs; the kernel module is imported afresh
    monkeypatch.setitem(sys.modules, "triton", None)
    monkeypatch.delitem(sys.modules, "dlka_monai.networks.layers.deform_conv2d_triton", raising=False)
    kernels.kernel_module.cache_clear()
    try:
        with caplog.at_level(logging.INFO, logger=kernels.__name__):
            for _ in range(2):
                assert dc2d._kernel(torch.device("cuda")) is None
    finally:
        kernels.kernel_module.cache_clear()
    lines = [r.getMessage() for r in caplog.records if r.name == kernels.__name__]
    expected = "deform_conv2d_depthwise on CUDA: torchvision's deform_conv2d (triton unavailable"
    assert len(lines) == 1 and expected in lines[0], lines


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_compiled_kernels_on_cuda(dtype, caplog):
    """The compiled kernels through the entry point on a GPU: a decoder-like shape for each of the two
    kernels, then stride 2 with several channel blocks, and one gradient alone."""
    kernels.kernel_module.cache_clear()
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    cases = ((2, 96, (28, 28), 5, 1, 2, 1), (2, 96, (28, 28), 7, 1, 9, 3), (3, 130, (13, 11), 3, 2, 1, 2))
    for case in cases:
        torch.manual_seed(0)
        x, off, w, b = (t.detach().cuda().requires_grad_() for t in _case(*case, dtype=dtype)[:4])
        conf = case[4:]
        with caplog.at_level(logging.INFO, logger=kernels.__name__):
            out = dc2d.deform_conv2d_depthwise(x, off, w, b, *conf)
        assert out.grad_fn.name().endswith("_DeformConv2dDepthwiseTritonFnBackward")
        ref = deform_conv2d(x, off, w, b, *conf)
        assert _close(out, ref, tol)
        g = torch.randn_like(ref)
        grads = torch.autograd.grad(out, (x, off, w, b), g)
        for name, a, r in zip(("input", "offset", "weight", "bias"), grads, torch.autograd.grad(ref, (x, off, w, b), g)):
            assert _close(a, r, tol), f"{case} grad {name}: {(a - r).abs().max().item()}"
        (a,) = torch.autograd.grad(dc2d.deform_conv2d_depthwise(x.detach(), off, w.detach(), None, *conf), off, g)
        (r,) = torch.autograd.grad(deform_conv2d(x.detach(), off, w.detach(), None, *conf), off, g)
        assert _close(a, r, tol), f"{case} offset grad alone: {(a - r).abs().max().item()}"
    assert any("deform_conv2d_depthwise on CUDA: triton" in r.getMessage() for r in caplog.records if r.name == kernels.__name__)
