import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import deform_conv2d

from dlka_monai.networks import DeformConv3d, DeformConv3dPack, deform_conv3d


def _offset(x, weight, stride, padding, dilation, fill=None):
    out_size = [
        (s + 2 * p - d * (k - 1) - 1) // st + 1
        for s, k, st, p, d in zip(x.shape[2:], weight.shape[2:], stride, padding, dilation)
    ]
    shape = (x.shape[0], 3 * weight[0, 0].numel(), *out_size)
    return torch.zeros(shape, dtype=x.dtype) if fill is None else fill(shape)


@pytest.mark.parametrize(
    "stride,padding,dilation,groups",
    [
        ((1, 1, 1), (1, 1, 1), (1, 1, 1), 1),
        ((2, 1, 2), (0, 2, 1), (1, 1, 1), 1),
        ((1, 1, 1), (3, 2, 3), (3, 2, 3), 1),
        ((1, 2, 1), (1, 1, 1), (1, 1, 1), 2),
        ((1, 1, 1), (1, 1, 1), (1, 1, 1), 6),
    ],
)
def test_zero_offset_equals_conv3d(stride, padding, dilation, groups):
    torch.manual_seed(0)
    x = torch.randn(2, 6, 7, 9, 8)
    conv = torch.nn.Conv3d(6, 12, 3, stride, padding, dilation, groups)
    deform = DeformConv3d(6, 12, 3, stride, padding, dilation, groups)
    deform.load_state_dict(conv.state_dict())
    out = deform(x, _offset(x, conv.weight, stride, padding, dilation))
    ref = conv(x)
    assert out.shape == ref.shape
    assert (out - ref).abs().max().item() <= 1e-5


def test_integer_offset_equals_conv_of_shifted_volume():
    torch.manual_seed(1)
    x = torch.randn(1, 4, 8, 9, 10)
    weight = torch.nn.Conv3d(4, 5, 3).weight.detach()
    shift = (1, -2, 3)
    offset = _offset(x, weight, (1,) * 3, (1,) * 3, (1,) * 3)
    for ax in range(3):
        offset[:, ax::3] = shift[ax]
    out = deform_conv3d(x, offset, weight, None, 1, 1, 1)
    # reading x at p + s everywhere == conv of x shifted by -s with zeros entering at the border
    shifted = torch.zeros_like(x)
    src = [slice(max(s, 0), n + min(s, 0)) for s, n in zip(shift, x.shape[2:])]
    dst = [slice(max(-s, 0), n + min(-s, 0)) for s, n in zip(shift, x.shape[2:])]
    shifted[(..., *dst)] = x[(..., *src)]
    ref = F.conv3d(shifted, weight, None, 1, 1)
    # away from the border the conv's zero padding of `shifted` never stands for a voxel of x
    inner = (..., slice(1, -1), slice(1, -1), slice(1, -1))
    assert (out[inner] - ref[inner]).abs().max().item() <= 1e-5
    assert out[:, :, 0].abs().sum() > 0 and (out - ref).abs().max() > 1e-3  # the border reads real voxels


@pytest.mark.parametrize("stride,padding,dilation", [(1, 1, 1), (2, 2, 2), (1, 0, 1)])
def test_depth_one_matches_torchvision_deform_conv2d(stride, padding, dilation):
    torch.manual_seed(2)
    x = torch.randn(2, 3, 1, 11, 12)
    weight = torch.randn(4, 3, 1, 3, 3)
    bias = torch.randn(4)
    offset = _offset(x, weight, (1, stride, stride), (0, padding, padding), (1, dilation, dilation), lambda s: 2.5 * torch.randn(s))
    offset[:, 0::3] = 0  # no motion along the singleton depth
    out = deform_conv3d(x, offset, weight, bias, (1, stride, stride), (0, padding, padding), (1, dilation, dilation))
    offset_2d = torch.stack([offset[:, 1::3], offset[:, 2::3]], dim=2).flatten(1, 2)[:, :, 0]
    ref = deform_conv2d(x[:, :, 0], offset_2d, weight[:, :, 0], bias, stride, padding, dilation)
    assert (out[:, :, 0] - ref).abs().max().item() <= 1e-5
    assert offset.abs().max() > 1  # samples cross cell borders and the volume edge


def test_gradcheck_float64():
    torch.manual_seed(3)
    x = torch.randn(1, 2, 3, 3, 4, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(3, 2, 2, 2, 2, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, dtype=torch.float64, requires_grad=True)
    # keep samples away from integer positions, where trilinear interpolation has a kink;
    # offsets of up to ±2 voxels also sample outside the volume
    frac = torch.rand(1, 24, 2, 2, 3, dtype=torch.float64) * 0.6 + 0.2
    offset = (frac + torch.randint(-2, 2, frac.shape)).requires_grad_()
    fn = lambda *a: deform_conv3d(a[0], a[1], a[2], a[3], stride=1, padding=0, dilation=1)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, offset, weight, bias), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_module_dtypes(dtype):
    torch.manual_seed(4)
    conv = DeformConv3dPack(4, 6, 3, padding=1).to(dtype)
    x = torch.randn(1, 4, 5, 6, 7, dtype=dtype)
    out = conv(x)
    ref = F.conv3d(x.float(), conv.weight.float(), conv.bias.float(), padding=1)
    assert out.dtype == dtype and out.shape == (1, 6, 5, 6, 7)
    tol = 5e-2 if dtype == torch.bfloat16 else 1e-5
    assert (out.float() - ref).abs().max().item() <= tol * max(1.0, ref.abs().max().item())


def test_pack_offsets_start_at_zero_and_learn():
    conv = DeformConv3dPack(2, 2, 3, padding=1)
    assert conv.conv_offset.weight.abs().sum() == 0 and conv.conv_offset.bias.abs().sum() == 0
    x = torch.randn(1, 2, 4, 4, 4)
    conv(x).square().sum().backward()
    assert conv.conv_offset.weight.grad.abs().sum() > 0
    assert conv.weight.grad.abs().sum() > 0 and conv.bias.grad.abs().sum() > 0


def test_bad_offset_shape_is_a_clear_error():
    conv = DeformConv3d(2, 2, 3, padding=1)
    with pytest.raises(ValueError, match="offset must be"):
        conv(torch.randn(1, 2, 4, 4, 4), torch.zeros(1, 80, 4, 4, 4))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    torch.manual_seed(5)
    x = torch.randn(2, 4, 6, 7, 8, requires_grad=True)
    weight = torch.randn(5, 4, 3, 3, 3, requires_grad=True)
    offset = (2 * torch.randn(2, 81, 6, 7, 8)).requires_grad_()
    out = deform_conv3d(x, offset, weight, None, 1, 1, 1)
    out.square().sum().backward()
    xc, wc, oc = (t.detach().cuda().requires_grad_() for t in (x, weight, offset))
    out_c = deform_conv3d(xc, oc, wc, None, 1, 1, 1)
    out_c.square().sum().backward()
    assert (out_c.cpu() - out).abs().max().item() <= 1e-3
    for a, b in ((x, xc), (weight, wc), (offset, oc)):
        assert torch.allclose(b.grad.cpu(), a.grad, rtol=1e-3, atol=1e-2)
