
import pytest
import torch

from dlka_monai.networks.layers.deform_conv import deform_conv3d
from dlka_monai.networks.layers import DeformConv3d
from dlka_monai.networks.layers import deform_conv_fast
from dlka_monai.networks.layers.deform_conv_fast import (
    FastDilatedDepthwiseConv3d,
    deform_conv3d_fast,
    dilated_depthwise_conv3d,
)
from utils import DEFORM3D_CASES as CASES
from utils import deform3d_case as _case
from utils import deform3d_close as _close


@pytest.fixture(params=["default", "pytorch"])
def cpu_path(request, monkeypatch):
    """Run a test on the default CPU path (numba kernels when installed) and on the pure-PyTorch one."""
    if request.param == "pytorch":
        monkeypatch.setattr(deform_conv_fast, "numba_kernels", lambda: None)
    return request.param


@pytest.mark.parametrize("case", CASES)
def test_matches_reference_forward_and_backward(case, cpu_path):
    torch.manual_seed(0)
    x, off, w, b, (st, pd, dl, groups) = _case(*case)
    ref = deform_conv3d(x, off, w, b, st, pd, dl, groups)
    out = deform_conv3d_fast(x, off, w, b, st, pd, dl, groups)
    assert out.shape == ref.shape
    assert (out - ref).abs().max().item() <= 1e-5
    g = torch.randn_like(ref)
    grads_ref = torch.autograd.grad(ref, (x, off, w, b), g)
    grads = torch.autograd.grad(out, (x, off, w, b), g)
    for name, a, r in zip(("input", "offset", "weight", "bias"), grads, grads_ref):
        assert _close(a, r), f"grad {name}: {(a - r).abs().max().item()}"


def test_large_offsets_and_partial_grads(cpu_path):
    torch.manual_seed(1)
    x, off, w, b, (st, pd, dl, _) = _case(1, 3, 2, (5, 6, 4), 3, 1, 1, 1, amp=8.0)  # many samples fully outside
    ref = deform_conv3d(x, off, w, None, st, pd, dl)
    out = deform_conv3d_fast(x, off, w, None, st, pd, dl)
    assert (out - ref).abs().max().item() <= 1e-5
    g = torch.randn_like(ref)
    # only the offset grad needed, then only the weight grad: only that input requires grad
    inputs = (x, off, w)
    for j in (1, 2):
        alone = [u.detach().requires_grad_(i == j) for i, u in enumerate(inputs)]
        got = torch.autograd.grad(deform_conv3d_fast(*alone, None, st, pd, dl), alone[j], g)[0]
        assert _close(got, torch.autograd.grad(ref, inputs[j], g, retain_graph=True)[0])


def test_stage_like_shape_zero_offset_equals_conv():
    torch.manual_seed(2)
    conv = torch.nn.Conv3d(16, 16, 3, padding=1)
    deform = DeformConv3d(16, 16, 3, padding=1)
    assert deform.fast
    deform.load_state_dict(conv.state_dict())
    x = torch.randn(2, 16, 10, 10, 10)
    out = deform(x, torch.zeros(2, 81, 10, 10, 10))
    assert (out - conv(x)).abs().max().item() <= 1e-5


@pytest.mark.slow
def test_gradcheck_float64(cpu_path):
    torch.manual_seed(3)
    x, off, w, b, (st, pd, dl, _) = _case(1, 2, 2, (3, 4, 3), 2, 1, 1, 1, dtype=torch.float64, amp=1.5)
    assert torch.autograd.gradcheck(
        lambda *a: deform_conv3d_fast(*a, st, pd, dl), (x, off, w, b), eps=1e-6, atol=1e-6, fast_mode=True
    )


@pytest.mark.parametrize("size", [(10, 11, 12), (4, 5, 6), (13, 9, 7)])
def test_dilated_depthwise_matches_conv3d(size):
    torch.manual_seed(4)
    ch = 4
    ref_conv = torch.nn.Conv3d(ch, ch, 7, padding=9, dilation=3, groups=ch)
    fast = FastDilatedDepthwiseConv3d(ch, ch, 7, padding=9, dilation=3, groups=ch)
    fast.load_state_dict(ref_conv.state_dict())  # same state_dict keys
    assert set(fast.state_dict()) == {"weight", "bias"}
    x = torch.randn(2, ch, *size, requires_grad=True)
    ref, out = ref_conv(x), fast(x)
    assert (out - ref).abs().max().item() <= 1e-5
    g = torch.randn_like(ref)
    for a, r in zip(
        torch.autograd.grad(out, (x, fast.weight, fast.bias), g),
        torch.autograd.grad(ref, (x, ref_conv.weight, ref_conv.bias), g),
    ):
        assert _close(a, r)


def test_dilated_depthwise_gradcheck_and_fallback():
    torch.manual_seed(5)
    x = torch.randn(1, 2, 4, 5, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 1, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: dilated_depthwise_conv3d(*a, 2, 2), (x, w, b), fast_mode=True)
    # not "same": falls back to F.conv3d
    y = dilated_depthwise_conv3d(x, w, b, 2, 1)
    ref = torch.nn.functional.conv3d(x, w, b, padding=1, dilation=2, groups=2)
    assert torch.equal(y, ref)


def test_fast_paths_accept_monai_metatensors():
    from monai.data import MetaTensor

    torch.manual_seed(6)
    x = MetaTensor(torch.randn(1, 4, 9, 9, 9), affine=torch.eye(4)).requires_grad_()
    deform = DeformConv3d(4, 4, 3, padding=1)
    depthwise = FastDilatedDepthwiseConv3d(4, 4, 7, padding=9, dilation=3, groups=4)
    offset = torch.randn(1, 81, 9, 9, 9)
    out = deform(depthwise(x), offset)
    plain = torch.nn.functional.conv3d(x.as_tensor(), depthwise.weight, depthwise.bias, padding=9, dilation=3, groups=4)
    ref = deform_conv3d(plain, offset, deform.weight, deform.bias, 1, 1)
    assert out.shape == ref.shape == (1, 4, 9, 9, 9)
    assert _close(out.as_tensor() if hasattr(out, "as_tensor") else out, ref)
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_half_precision_runs_the_fast_path_in_float32():
    """bf16 input (as under AMP): the result and gradients are float32 computations of the bf16 values,
    returned in bf16, not the reference path's."""
    torch.manual_seed(0)
    x, off, w, b, (st, pd, dl, _) = _case(1, 4, 5, (6, 6, 6), 3, 1, 1, 1)
    xh = x.detach().bfloat16().requires_grad_()
    y = deform_conv3d_fast(xh, off, w, b, st, pd, dl)
    assert y.dtype == torch.bfloat16
    y.float().square().sum().backward()
    y32 = deform_conv3d(xh.detach().float().requires_grad_(), off.detach().requires_grad_(), w, b, st, pd, dl)
    assert _close(y.float(), y32, rel=1e-2, abs_=1e-2)
    assert xh.grad.dtype == torch.bfloat16 and off.grad is not None and w.grad is not None
    assert torch.isfinite(xh.grad.float()).all() and torch.isfinite(off.grad).all()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast off inside: float32 GEMMs, no dtype clash
        conv = DeformConv3d(4, 5, 3, padding=1)
        assert conv(torch.randn(1, 4, 6, 6, 6), 0.5 * torch.randn(1, 81, 6, 6, 6)).shape == (1, 5, 6, 6, 6)


def test_unsupported_groups_fall_back_with_a_warning():
    x, off, w, b, (st, pd, dl, _) = _case(1, 6, 6, (5, 5, 5), 3, 1, 1, 1, groups=2)
    with pytest.warns(UserWarning, match="supports groups=1 .* using the reference deform_conv3d"):
        y = deform_conv3d_fast(x, off, w, b, st, pd, dl, groups=2)
    assert torch.allclose(y, deform_conv3d(x, off, w, b, st, pd, dl, groups=2))
