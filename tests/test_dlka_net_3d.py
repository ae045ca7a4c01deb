import pytest
import torch
from utils import TINY_3D, reference_manifest
from monai.inferers import sliding_window_inference
from monai.losses import DeepSupervisionLoss, DiceCELoss

from dlka_monai.networks import DLKANet3D, create_network, list_networks


@pytest.mark.parametrize("name,n_params", [("dlka3d_synapse", 42_353_327), ("dlka3d_pancreas", 62_067_079)])
def test_presets_match_the_papers_models(name, n_params):
    with torch.device("meta"):  # shapes only: no memory, no init
        net = create_network(name)
    assert sum(p.numel() for p in net.parameters()) == n_params
    ours = sorted(tuple(t.shape) for t in net.state_dict().values())
    theirs = sorted(tuple(s) for s in reference_manifest(name).values())
    assert ours == theirs


def test_registry():
    assert {"dlka3d_synapse", "dlka3d_pancreas"} <= set(list_networks())
    net = create_network("dlka3d_synapse", out_channels=3, **TINY_3D)
    assert isinstance(net, DLKANet3D) and net.out_channels == 3 and net.img_size == (16, 32, 32)
    with pytest.raises(KeyError, match="dlka3d_synapse"):
        create_network("dlka3d_nope")


@pytest.mark.slow
def test_synapse_full_size_forward():
    net = create_network("dlka3d_synapse")
    x = torch.randn(1, 1, 64, 128, 128)
    with torch.no_grad():
        out = net.eval()(x)
        assert isinstance(out, torch.Tensor) and out.shape == (1, 14, 64, 128, 128)
        outs = net.train()(x)
    assert [tuple(o.shape) for o in outs] == [(1, 14, 64, 128, 128), (1, 14, 32, 32, 32), (1, 14, 16, 16, 16)]
    assert torch.isfinite(outs[0]).all()


@pytest.mark.slow
def test_pancreas_full_size_forward():
    net = create_network("dlka3d_pancreas").eval()
    with torch.no_grad():
        out = net(torch.randn(1, 1, 96, 96, 96))
    assert isinstance(out, torch.Tensor) and out.shape == (1, 2, 96, 96, 96)
    assert torch.isfinite(out).all()


def test_wrong_input_size_names_both_sizes():
    net = create_network("dlka3d_synapse", **TINY_3D)
    with pytest.raises(ValueError, match=r"\(16, 32, 32\).*\(16, 32, 48\)"):
        net(torch.randn(2, 1, 16, 32, 48))


def test_img_size_must_fit_the_downsampling():
    with pytest.raises(ValueError, match="divisible"):
        DLKANet3D(1, 2, img_size=(24, 32, 32), patch_size=(2, 4, 4))


def test_tiny_training_step_updates_every_parameter():
    net = create_network("dlka3d_synapse", out_channels=3, **TINY_3D).train()
    before = {k: p.detach().clone() for k, p in net.named_parameters()}
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, eps=1e-20)
    x = torch.randn(2, 1, 16, 32, 32)
    y = torch.randint(0, 3, (2, 1, 16, 32, 32)).float()  # MONAI loads labels as float
    outs = net(x)
    assert len(outs) == 3
    loss = DeepSupervisionLoss(DiceCELoss(to_onehot_y=True, softmax=True))(outs, y)
    loss.backward()
    no_grad = [k for k, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not no_grad, f"parameters without gradient: {no_grad}"
    opt.step()
    unchanged = [k for k, p in net.named_parameters() if torch.equal(p, before[k])]
    assert not unchanged, f"parameters not updated: {unchanged}"


def test_eval_output_works_with_sliding_window_inference():
    net = create_network("dlka3d_synapse", out_channels=3, **TINY_3D).eval()
    volume = torch.randn(1, 1, 20, 40, 50)
    with torch.no_grad():
        out = sliding_window_inference(volume, roi_size=net.img_size, sw_batch_size=2, predictor=net, overlap=0.25)
    assert out.shape == (1, 3, 20, 40, 50) and torch.isfinite(out).all()
