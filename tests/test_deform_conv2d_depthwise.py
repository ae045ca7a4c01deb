import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torchvision.ops import deform_conv2d

from dlka_monai.networks import DeformableDepthwiseConv2d
from dlka_monai.networks.layers import deform_conv2d_depthwise, kernels
from utils import deform2d_case as _case
from utils import deform2d_close as _close

numba_kernels = pytest.importorskip("dlka_monai.networks.layers.deform_conv2d_numba", exc_type=ImportError)
ROOT = Path(__file__).resolve().parents[1]


# (batch, C, (H, W), k, stride, padding, dilation): the decoder's two kernels, stride, non-square
# images; the last one has an odd batch and 16 channels, so that the backward splits the channels
# into blocks when there are 2 or more threads
CASES = [
    (2, 5, (9, 12), 5, 1, 2, 1),
    (2, 6, (11, 10), 7, 1, 9, 3),
    (1, 4, (10, 13), 3, 2, 0, 1),
    (3, 3, (8, 9), 3, 2, 3, 2),
    (3, 16, (7, 9), 5, 1, 2, 1),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", CASES)
def test_forward_and_four_grads_match_torchvision(case, dtype):
    """Offsets up to 3 pixels (samples across the border), stride, padding, dilation."""
    torch.manual_seed(0)
    x, off, w, b, conf = _case(*case, dtype=dtype)
    out = deform_conv2d_depthwise(x, off, w, b, *conf)
    ref = deform_conv2d(x, off, w, b, *conf)
    assert out.grad_fn.name() == "_DeformConv2dDepthwiseNumbaFnBackward"
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert out.dtype == dtype and out.shape == ref.shape and out.is_contiguous()
    assert _close(out, ref, tol)
    g = torch.randn_like(ref)
    inputs = (x, off, w, b)
    for name, a, r in zip(("input", "offset", "weight", "bias"), torch.autograd.grad(out, inputs, g), torch.autograd.grad(ref, inputs, g)):
        assert a.dtype == dtype and a.shape == r.shape
        assert _close(a, r, tol), f"grad {name}: {(a - r).abs().max().item()}"


def test_gradcheck_float64():
    torch.manual_seed(0)
    x, off, w, b, conf = _case(1, 2, (5, 6), 3, 1, 1, 2, dtype=torch.float64, amp=2.0)
    assert torch.autograd.gradcheck(lambda *t: deform_conv2d_depthwise(*t, *conf), (x, off, w, b), fast_mode=True)


def test_partial_grads_and_half_precision():
    """Only some inputs requiring grad; float16 / bfloat16 computed in float32 and returned as given."""
    torch.manual_seed(0)
    x, off, w, _, conf = _case(2, 4, (8, 9), 5, 1, 2, 1)
    off_only = off.detach().requires_grad_()
    out = deform_conv2d_depthwise(x.detach(), off_only, w.detach(), None, *conf)
    (g,) = torch.autograd.grad(out.sum(), off_only)
    (r,) = torch.autograd.grad(deform_conv2d(x.detach(), off_only, w.detach(), None, *conf).sum(), off_only)
    assert _close(g, r, 1e-5)
    for dtype in (torch.float16, torch.bfloat16):
        y = deform_conv2d_depthwise(x.detach().to(dtype), off.detach().to(dtype), w.detach().to(dtype), None, *conf)
        ref = deform_conv2d(*(t.detach().to(dtype).float() for t in (x, off, w)), None, *conf)
        assert y.dtype == dtype and _close(y.float(), ref, 1e-2)


def test_module_matches_torchvision_module():
    """DeformableDepthwiseConv2d runs the kernel; its output and all grads equal torchvision's op on its
    own submodules; the state-dict keys are unchanged."""
    torch.manual_seed(0)
    conv = DeformableDepthwiseConv2d(6, 7, padding=9, dilation=3)
    assert list(conv.state_dict()) == ["offset_net.weight", "offset_net.bias", "deform_conv.weight"]
    torch.nn.init.normal_(conv.offset_net.weight, std=0.3)
    x = torch.randn(2, 6, 10, 11, requires_grad=True)
    out = conv(x)
    ref = conv.deform_conv(x, conv.offset_net(x))
    assert out.grad_fn.name() == "_DeformConv2dDepthwiseNumbaFnBackward"
    assert _close(out, ref, 1e-5)
    g = torch.randn_like(ref)
    params = (x, conv.offset_net.weight, conv.offset_net.bias, conv.deform_conv.weight)
    for a, r in zip(torch.autograd.grad(out, params, g), torch.autograd.grad(ref, params, g)):
        assert _close(a, r, 1e-5)
    # traced: torchvision's op (a graph cannot hold the Python autograd function)
    traced = torch.jit.trace(conv.eval(), x.detach(), check_trace=False)
    assert "deform_conv2d" in str(traced.inlined_graph)
    assert _close(traced(x.detach()), ref.detach(), 1e-5)


@pytest.mark.slow
def test_fallback_to_torchvision_without_numba():
    """With numba unimportable the function runs torchvision's op and says so once."""
    script = textwrap.dedent(
        """
        import logging, sys
        sys.modules["numba"] = None  # makes `import numba` raise ImportError
        logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
        import torch
        from torchvision.ops import deform_conv2d
        from dlka_monai.networks.layers import deform_conv2d_depthwise
        torch.manual_seed(0)
        x = torch.randn(1, 3, 6, 7, requires_grad=True)
        w = torch.randn(3, 1, 3, 3, requires_grad=True)
        off = (2 * torch.randn(1, 18, 6, 7)).requires_grad_()
        y = deform_conv2d_depthwise(x, off, w, None, 1, 1, 1)
        deform_conv2d_depthwise(x, off, w, None, 1, 1, 1)
        assert "torchvision_deform_conv2d" in y.grad_fn.name(), y.grad_fn.name()
        assert torch.equal(y, deform_conv2d(x, off, w, None, 1, 1, 1))
        print("OK")
        """
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "OK"
    lines = [line for line in proc.stderr.splitlines() if line.startswith(kernels.__name__) and "deform_conv2d" in line]
    assert len(lines) == 1 and "torchvision" in lines[0], proc.stderr
