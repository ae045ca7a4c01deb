import re

import pytest
import timm
import torch
from utils import TINY_2D as TINY_2D_NET
from utils import reference_manifest

from dlka_monai.convert import convert_state_dict
from dlka_monai.networks import DeformableDepthwiseConv2d, DLKANet2D, DLKAttention, create_network, list_networks

# a 2D D-LKA net small enough for fast tests: MaxViT-pico at 64×64 (stages 16²/8²/4²/2², 32..256 channels)
TINY_2D = dict(out_channels=3, **TINY_2D_NET)

# the authors' modules that never run: the first decoder stage's skip/LKA layers and the 1 -> 3 conv
AUTHORS_DEAD = re.compile(r"^(decoder_3\.(x1_linear|layer_lka_1|layer_lka_2)\.|backbone\.conv\.)")

@pytest.fixture(scope="module")
def synapse_net():
    """The full-size net on the meta device: its structure and shapes, no weights."""
    with torch.device("meta"):
        return create_network("dlka2d_synapse")


def test_preset_matches_the_papers_model(synapse_net):
    assert sum(p.numel() for p in synapse_net.parameters()) == 78_583_005
    theirs = {k: tuple(s) for k, s in reference_manifest("dlka2d_synapse").items() if not AUTHORS_DEAD.match(k)}
    ours = {k: tuple(t.shape) for k, t in synapse_net.state_dict().items()}
    assert sorted(ours.values()) == sorted(theirs.values())
    # and key by key, through the converter's rename table (strict: any unmatched key or shape raises)
    manifest = {k: torch.empty(s, device="meta") for k, s in reference_manifest("dlka2d_synapse").items()}
    assert {k: tuple(t.shape) for k, t in convert_state_dict(manifest, "dlka2d_synapse").items()} == ours


def test_registry_and_config(synapse_net):
    assert "dlka2d_synapse" in list_networks()
    assert isinstance(synapse_net, DLKANet2D)
    assert (synapse_net.in_channels, synapse_net.out_channels, synapse_net.img_size) == (1, 9, (224, 224))
    assert type(synapse_net.encoder).__name__ == "MaxxVit"


@pytest.mark.slow
def test_synapse_full_size_forward():
    net = create_network("dlka2d_synapse").eval()
    with torch.no_grad():
        out = net(torch.randn(1, 1, 224, 224))
    assert isinstance(out, torch.Tensor) and out.shape == (1, 9, 224, 224)
    assert torch.isfinite(out).all()


def test_wrong_input_size_names_both_sizes():
    net = create_network("dlka2d_synapse", **TINY_2D)
    with pytest.raises(ValueError, match=r"\(64, 64\).*\(64, 96\)"):
        net(torch.randn(1, 1, 64, 96))


def test_img_size_must_fit_the_downsampling():
    with pytest.raises(ValueError, match="divisible by 32"):
        DLKANet2D(1, 2, img_size=200)


def test_three_channel_input_goes_straight_to_the_encoder():
    net = create_network("dlka2d_synapse", in_channels=3, **TINY_2D).eval()
    assert net.encoder.stem.conv1.in_channels == 3
    with torch.no_grad():
        assert net(torch.randn(1, 3, 64, 64)).shape == (1, 3, 64, 64)


def test_tiny_training_step_updates_every_parameter():
    net = create_network("dlka2d_synapse", **TINY_2D).train()
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x, y = torch.randn(1, 1, 64, 64), torch.randint(0, 3, (1, 64, 64))
    out = net(x)
    assert isinstance(out, torch.Tensor) and out.shape == (1, 3, 64, 64)  # one tensor, also in training
    loss = torch.nn.functional.cross_entropy(out, y)
    loss.backward()
    # timm's MaxViT adds rel_pos.mlp.fc2.bias as one constant per head to all attention logits, which
    # softmax ignores: its gradient is zero in exact arithmetic, so it is the only exception
    exempt = re.compile(r"rel_pos\.mlp\.fc2\.bias$")
    dead = [n for n, p in net.named_parameters() if not exempt.search(n) and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert not dead, dead
    opt.step()
    for name in ("decoder0.blocks.1.attn.spatial_gating_unit.conv_spatial.offset_net.weight", "out.conv.conv.weight"):
        assert not torch.equal(before[name], dict(net.named_parameters())[name])


def test_pretrained_encoder_loads_a_local_timm_state_dict(tmp_path):
    x = torch.randn(1, 3, 64, 64)
    src = create_network("dlka2d_synapse", **TINY_2D).eval()
    path = tmp_path / "encoder.pt"
    torch.save(src.encoder.state_dict(), path)
    torch.manual_seed(1)
    fresh = create_network("dlka2d_synapse", **TINY_2D)
    assert not torch.equal(fresh.encoder.stem.conv1.weight, src.encoder.stem.conv1.weight)
    torch.manual_seed(1)
    loaded = create_network("dlka2d_synapse", pretrained_encoder=path, **TINY_2D).eval()
    got = loaded.encoder.state_dict()
    for k, v in src.encoder.state_dict().items():
        assert torch.equal(got[k], v), k
    with torch.no_grad():
        for a, b in zip(loaded.encode(x), src.encode(x)):
            assert torch.equal(a, b)
        loaded.load_state_dict({k: v for k, v in src.state_dict().items() if not k.startswith("encoder.")}, strict=False)
        assert torch.equal(loaded(x[:, :1]), src(x[:, :1]))


def test_pretrained_encoder_accepts_a_timm_classifier_checkpoint(tmp_path):
    clf = timm.create_model("maxvit_rmlp_pico_rw_256", pretrained=False, img_size=64).eval()
    path = tmp_path / "timm.pth"
    torch.save({"state_dict": clf.state_dict()}, path)  # with head.fc.*, wrapped
    net = DLKANet2D(3, 2, img_size=64, encoder="maxvit_rmlp_pico_rw_256", pretrained_encoder=path).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(net.encode(x)[-1], clf.forward_features(x))


def test_pretrained_encoder_mismatch_is_a_clear_error(tmp_path):
    other = timm.create_model("maxvit_rmlp_nano_rw_256", pretrained=False, num_classes=0, img_size=64)
    path = tmp_path / "nano.pt"
    torch.save(other.state_dict(), path)
    with pytest.raises(ValueError, match=r"nano\.pt.*(missing keys|shape mismatches)"):
        create_network("dlka2d_synapse", pretrained_encoder=path, **TINY_2D)


def test_2d_attention_has_deformable_depthwise_convs():
    attn = DLKAttention(2, 16)
    unit = attn.spatial_gating_unit
    assert {k: tuple(v.shape) for k, v in unit.state_dict().items()} == {
        "conv0.offset_net.weight": (50, 16, 5, 5),
        "conv0.offset_net.bias": (50,),
        "conv0.deform_conv.weight": (16, 1, 5, 5),
        "conv_spatial.offset_net.weight": (98, 16, 7, 7),
        "conv_spatial.offset_net.bias": (98,),
        "conv_spatial.deform_conv.weight": (16, 1, 7, 7),
        "conv1.weight": (16, 16, 1, 1),
        "conv1.bias": (16,),
    }
    assert unit.conv_spatial.deform_conv.dilation == (3, 3) and unit.conv_spatial.deform_conv.padding == (9, 9)
    x = torch.randn(2, 16, 12, 12, requires_grad=True)
    attn(x).sum().backward()
    assert x.grad is not None and attn.spatial_gating_unit.conv0.offset_net.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("kernel_size,padding,dilation", [(5, 2, 1), (7, 9, 3)])
def test_deformable_depthwise_conv_with_zero_offsets_is_the_plain_depthwise_conv(kernel_size, padding, dilation):
    conv = DeformableDepthwiseConv2d(6, kernel_size, padding=padding, dilation=dilation)
    torch.nn.init.zeros_(conv.offset_net.weight)
    plain = torch.nn.Conv2d(6, 6, kernel_size, padding=padding, dilation=dilation, groups=6, bias=False)
    plain.weight.data.copy_(conv.deform_conv.weight.data)
    x = torch.randn(2, 6, 11, 13)
    torch.testing.assert_close(conv(x), plain(x))
    torch.nn.init.normal_(conv.offset_net.weight)
    assert not torch.allclose(conv(x), plain(x))


def test_3d_attention_is_unchanged():
    attn = DLKAttention(3, 8)
    assert list(attn.state_dict()) == [
        "proj_1.weight",
        "proj_1.bias",
        "spatial_gating_unit.conv0.weight",
        "spatial_gating_unit.conv0.bias",
        "spatial_gating_unit.conv_spatial.weight",
        "spatial_gating_unit.conv_spatial.bias",
        "spatial_gating_unit.deform_conv.weight",
        "spatial_gating_unit.deform_conv.bias",
        "spatial_gating_unit.deform_conv.conv_offset.weight",
        "spatial_gating_unit.deform_conv.conv_offset.bias",
        "spatial_gating_unit.conv1.weight",
        "spatial_gating_unit.conv1.bias",
        "proj_2.weight",
        "proj_2.bias",
    ]
    with pytest.raises(ValueError, match="spatial_dims"):
        DLKAttention(1, 8)
