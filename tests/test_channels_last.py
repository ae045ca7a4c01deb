import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dlka_monai.networks import create_network
from dlka_monai.networks.layers import ChannelsLastConv3d, ChannelsLastInstanceNorm3d, keep_channels_last


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("affine", [False, True])
def test_channels_last_instance_norm_matches_instance_norm(dtype, affine):
    torch.manual_seed(0)
    # a large mean next to a small spread: single-pass float32 sums would cancel here
    x = (torch.randn(2, 5, 6, 7, 9, dtype=torch.float64) * torch.rand(1, 5, 1, 1, 1) + 100).to(dtype)
    norm = ChannelsLastInstanceNorm3d(5, affine=affine).to(dtype)
    if affine:
        nn.init.uniform_(norm.weight, 0.5, 2)
        nn.init.uniform_(norm.bias, -1, 1)
    ref = F.instance_norm(x.double(), weight=norm.weight.double() if affine else None, bias=norm.bias.double() if affine else None)
    x_cl = x.contiguous(memory_format=torch.channels_last_3d)
    with torch.no_grad():
        y = norm(x_cl)
    assert y.is_contiguous(memory_format=torch.channels_last_3d) and not y.is_contiguous()
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    assert (y.double() - ref).abs().max().item() < tol
    # autograd or a contiguous input take nn.InstanceNorm3d's path: the same values
    y_grad = norm(x_cl.clone().requires_grad_())
    assert y_grad.grad_fn is not None and (y_grad.double() - ref).abs().max().item() < tol
    with torch.no_grad():
        assert (norm(x).double() - ref).abs().max().item() < tol


def test_keep_channels_last_keeps_configuration_and_state():
    block = nn.Sequential(
        nn.Conv3d(1, 4, 3), nn.InstanceNorm3d(4, eps=1e-3, affine=True), nn.Sequential(nn.InstanceNorm3d(4)), nn.Conv3d(4, 4, 1)
    )
    block[1].weight.data.fill_(2.0)
    before = block.state_dict()
    x = torch.randn(1, 1, 5, 6, 7)
    with torch.no_grad():
        y_before = block(x)
    keep_channels_last(block)
    assert type(block[0]) is ChannelsLastConv3d and type(block[3]) is nn.Conv3d  # only one-channel convs start the layout
    assert type(block[1]) is ChannelsLastInstanceNorm3d and type(block[2][0]) is ChannelsLastInstanceNorm3d
    assert block[1].eps == 1e-3 and block[1].affine and not block[2][0].affine
    after = block.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    with torch.no_grad():
        y = block[:3](x)
        assert y.is_contiguous(memory_format=torch.channels_last_3d) and not y.is_contiguous()
        assert torch.allclose(block[3](y), y_before, atol=1e-5)


@pytest.mark.parametrize(
    "kernel, stride, padding, dilation, bias",
    [(1, 1, 0, 1, True), (1, 1, 0, 1, False), (3, 1, 1, 1, True), ((2, 4, 4), (2, 4, 4), 0, 1, True), (3, 2, 2, 2, False)],
)
def test_one_channel_conv_computed_without_onednn_matches_conv3d(kernel, stride, padding, dilation, bias):
    """The addcmul (1×1×1) and repeated-input depthwise paths give nn.Conv3d's values, channels-last."""
    torch.manual_seed(0)
    conv = nn.Conv3d(1, 6, kernel, stride, padding, dilation, bias=bias)
    fast = ChannelsLastConv3d(1, 6, kernel, stride, padding, dilation, bias=bias)
    fast.load_state_dict(conv.state_dict())
    x = torch.randn(2, 1, 9, 10, 11)
    with torch.no_grad():
        y, ref = fast(x), conv(x)
    assert y.shape == ref.shape and y.is_contiguous(memory_format=torch.channels_last_3d) and not y.is_contiguous()
    assert torch.allclose(y, ref, atol=1e-5)


def test_dlka_net_3d_inference_channels_last_matches_the_contiguous_forward():
    torch.manual_seed(0)
    net = create_network("dlka3d_synapse", img_size=(16, 32, 32), feature_size=8, depths=(1, 1, 1, 1), out_channels=3).eval()
    assert any(isinstance(m, ChannelsLastInstanceNorm3d) for m in net.modules())
    layouts = []
    net.encoder1.register_forward_hook(lambda m, i, o: layouts.append(o.is_contiguous(memory_format=torch.channels_last_3d) and not o.is_contiguous()))
    x = torch.randn(2, 1, 16, 32, 32) * 50 + 20
    with torch.no_grad():
        y = net(x)
    with torch.enable_grad():
        y_ref = net(x.requires_grad_())  # autograd: contiguous layout, nn.InstanceNorm3d's kernels
    assert layouts == [True, False]  # the full-resolution stem ran channels-last at inference only
    assert (y - y_ref).abs().max().item() <= 1e-4 * y_ref.abs().max().item()
