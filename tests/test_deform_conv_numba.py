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
from utils import DEFORM3D_CASES as CASES
from utils import deform3d_case as _case
from utils import deform3d_close as _close

numba_kernels = pytest.importorskip("dlka_monai.networks.layers.deform_conv_numba", exc_type=ImportError)
deform_conv3d_numba = numba_kernels.deform_conv3d_numba
ROOT = Path(__file__).resolve().parents[1]


def _grads(out, inputs, g):
    return torch.autograd.grad(out, inputs, g)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", CASES)
def test_forward_and_four_grads_match_reference(case, dtype):
    """Shapes that sample across the border (offsets up to 3 voxels), with stride, padding, dilation."""
    torch.manual_seed(0)
    x, off, w, b, (st, pd, dl, _) = _case(*case, dtype=dtype)
    ref = deform_conv3d(x, off, w, b, st, pd, dl)
    out = deform_conv3d_numba(x, off, w, b, st, pd, dl)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert out.dtype == dtype and out.shape == ref.shape
    assert _close(out, ref, rel=tol, abs_=tol)
    g = torch.randn_like(ref)
    for name, a, r in zip(("input", "offset", "weight", "bias"), _grads(out, (x, off, w, b), g), _grads(ref, (x, off, w, b), g)):
        assert a.dtype == dtype
        assert _close(a, r, rel=tol, abs_=tol), f"grad {name}: {(a - r).abs().max().item()}"


def test_samples_far_outside_and_partial_grads():
    torch.manual_seed(1)
    x, off, w, _, (st, pd, dl, _) = _case(1, 3, 2, (5, 6, 4), 3, 1, 1, 1, amp=8.0)
    ref = deform_conv3d(x, off, w, None, st, pd, dl)
    out = deform_conv3d_numba(x, off, w, None, st, pd, dl)
    assert _close(out, ref)
    g = torch.randn_like(ref)
    # each gradient alone: only that input requires grad, so the kernels skip the passes not needed
    inputs = (x, off, w)
    for j, t in enumerate(inputs):
        alone = [u.detach().requires_grad_(i == j) for i, u in enumerate(inputs)]
        got = torch.autograd.grad(deform_conv3d_numba(*alone, None, st, pd, dl), alone[j], g)[0]
        assert _close(got, torch.autograd.grad(ref, t, g, retain_graph=True)[0])


@pytest.mark.parametrize("partials_bytes", [0, 256 << 20])
def test_input_grad_with_and_without_per_thread_tables(monkeypatch, partials_bytes):
    """Blocks of voxels that do not divide the parts, two threads scattering into tables of their own (or,
    with no memory for those, one thread into the gradient table): the same gradients as the reference."""
    monkeypatch.setattr(numba_kernels, "_PARTIALS_BYTES", partials_bytes)
    torch.manual_seed(5)
    x, off, w, b, (st, pd, dl, _) = _case(2, 3, 4, (9, 10, 11), 3, 1, 1, 1)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        out = deform_conv3d_numba(x, off, w, b, st, pd, dl)
        g = torch.randn_like(out)
        got = _grads(out, (x, off, w), g)
    finally:
        torch.set_num_threads(before)
    ref = deform_conv3d(x, off, w, b, st, pd, dl)
    for a, r in zip(got, _grads(ref, (x, off, w), g)):
        assert _close(a, r)


def test_nan_offsets_stay_in_bounds_and_propagate():
    """A NaN offset samples nothing outside the table (no crash, no garbage) and makes its voxel NaN."""
    x, off, w, b, (st, pd, dl, _) = _case(1, 2, 2, (4, 4, 4), 3, 1, 1, 1)
    off = off.detach().clone()
    off[0, 0, 1, 2, 3] = float("nan")
    out = deform_conv3d_numba(x.detach(), off, w.detach(), b.detach(), st, pd, dl)
    nan = torch.isnan(out[0, 0])
    assert nan[1, 2, 3] and nan.sum() == 1


def test_gradcheck_float64():
    torch.manual_seed(3)
    x, off, w, b, (st, pd, dl, _) = _case(1, 2, 3, (3, 4, 3), 2, 1, 1, 1, dtype=torch.float64, amp=1.5)
    assert torch.autograd.gradcheck(lambda *a: deform_conv3d_numba(*a, st, pd, dl), (x, off, w, b), eps=1e-6, atol=1e-6, fast_mode=True)


def test_fast_entry_point_uses_the_kernels_and_logs_once(caplog):
    torch.manual_seed(4)
    x, off, w, b, (st, pd, dl, _) = _case(1, 4, 4, (5, 5, 5), 3, 1, 1, 1)
    kernels.kernel_module.cache_clear()
    with caplog.at_level(logging.INFO, logger=kernels.__name__):
        y1 = deform_conv_fast.deform_conv3d_fast(x, off, w, b, st, pd, dl)
        deform_conv_fast.deform_conv3d_fast(x, off, w, b, st, pd, dl)
    assert y1.grad_fn.name().endswith("_DeformConv3dNumbaFnBackward")
    lines = [r.getMessage() for r in caplog.records if r.name == kernels.__name__]
    assert len(lines) == 1 and "numba" in lines[0] and "kernels" in lines[0]


def test_threads_follow_torch():
    x, off, w, b, (st, pd, dl, _) = _case(1, 4, 4, (4, 4, 4), 3, 1, 1, 1)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        y1 = deform_conv3d_numba(x, off, w, b, st, pd, dl)
        assert numba_kernels.numba.get_num_threads() == 1
        torch.set_num_threads(before)
        y2 = deform_conv3d_numba(x, off, w, b, st, pd, dl)
        assert numba_kernels.numba.get_num_threads() == min(before, numba_kernels.numba.config.NUMBA_NUM_THREADS)
    finally:
        torch.set_num_threads(before)
    assert _close(y1, y2)


@pytest.mark.slow
def test_pure_pytorch_fallback_without_numba():
    """With numba unimportable the fast entry point runs the pure-PyTorch function and says so once."""
    script = textwrap.dedent(
        """
        import logging, sys
        sys.modules["numba"] = None  # makes `import numba` raise ImportError
        logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
        import torch
        from dlka_monai.networks.layers.deform_conv import deform_conv3d
        from dlka_monai.networks.layers.deform_conv_fast import deform_conv3d_fast
        torch.manual_seed(0)
        x = torch.randn(1, 3, 4, 5, 6, requires_grad=True)
        w = torch.randn(2, 3, 3, 3, 3, requires_grad=True)
        off = (2 * torch.randn(1, 81, 4, 5, 6)).requires_grad_()
        y = deform_conv3d_fast(x, off, w, None, 1, 1, 1)
        deform_conv3d_fast(x, off, w, None, 1, 1, 1)
        r = deform_conv3d(x, off, w, None, 1, 1, 1)
        assert y.grad_fn.name().endswith("_DeformConv3dFnBackward"), y.grad_fn.name()
        assert (y - r).abs().max() < 1e-5
        g = torch.autograd.grad(y.sum(), (x, off, w))
        h = torch.autograd.grad(r.sum(), (x, off, w))
        assert all((a - b).abs().max() < 1e-4 for a, b in zip(g, h))
        print("OK")
        """
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "OK"
    lines = [line for line in proc.stderr.splitlines() if line.startswith(kernels.__name__)]
    assert len(lines) == 1 and "pure-PyTorch" in lines[0], proc.stderr


def test_first_kernel_call_keeps_torch_threads():
    """Starting numba's OpenMP thread pool resets OpenMP's thread count, which is torch's: a fresh process
    that asked torch for one thread still has one after the first kernel call."""
    script = textwrap.dedent(
        """
        import torch
        torch.set_num_threads(1)
        from dlka_monai.networks.layers.deform_conv_numba import deform_conv3d_numba
        x = torch.randn(1, 2, 3, 3, 3)
        deform_conv3d_numba(x, torch.zeros(1, 81, 3, 3, 3), torch.randn(2, 2, 3, 3, 3), None, (1,) * 3, (1,) * 3, (1,) * 3)
        print(torch.get_num_threads())
        """
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "1"
