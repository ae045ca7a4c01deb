"""TorchScript export through MONAI's ckpt_export, and verify_net_in_out on the bundle."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from utils import TINY_BUNDLE_IMG_SIZE, TINY_BUNDLE_NET

from dlka_monai.networks import create_network
from dlka_monai.plan import network_plan
from dlka_monai.weights import save_model

ROOT = Path(__file__).resolve().parents[1]


def _bundle_cli(*args, cwd):
    proc = subprocess.run([sys.executable, "-m", "monai.bundle", *args], cwd=cwd, capture_output=True, encoding="utf-8", errors="replace", timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return proc.stdout + proc.stderr


def _tiny_checkpoint(tmp_path, seed):
    """The test bundle's net with non-zero offsets (so an export has to reproduce the deformable
    sampling), saved as a checkpoint."""
    net = create_network("dlka3d_synapse", img_size=TINY_BUNDLE_IMG_SIZE, **TINY_BUNDLE_NET)
    torch.manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if hasattr(m, "conv_offset"):
                m.conv_offset.weight.normal_(0, 0.05)
    ckpt = tmp_path / "model.pt"
    save_model(ckpt, net, network_plan(net))
    return net.eval(), ckpt


@pytest.mark.slow
def test_ckpt_export_torchscript_matches_eager(tiny_bundle, tmp_path):
    net, ckpt = _tiny_checkpoint(tmp_path, seed=1)
    ts_path = tmp_path / "model.ts"
    _bundle_cli(
        "ckpt_export", "network_def", "--filepath", str(ts_path), "--ckpt_file", str(ckpt), "--key_in_ckpt", "model",
        "--meta_file", str(tiny_bundle / "configs" / "metadata.json"),
        "--config_file", str(tiny_bundle / "configs" / "inference.json"), "--bundle_root", str(tiny_bundle),
        "--use_trace", "True", "--input_shape", str([1, 1, *TINY_BUNDLE_IMG_SIZE]),
        cwd=tmp_path,
    )
    scripted = torch.jit.load(str(ts_path))
    x = torch.rand(2, 1, *TINY_BUNDLE_IMG_SIZE)
    with torch.no_grad():
        assert (scripted(x) - net(x)).abs().max().item() <= 1e-4


@pytest.mark.slow
def test_verify_net_in_out_on_the_bundle(tmp_path):
    out = _bundle_cli(
        "verify_net_in_out", "network_def", "--meta_file", str(ROOT / "configs" / "metadata.json"),
        "--config_file", str(ROOT / "configs" / "inference.json"), cwd=tmp_path,
    )
    assert "verified with no error" in out


@pytest.mark.slow
def test_onnx_export_matches_in_onnxruntime(tiny_bundle, tmp_path):
    pytest.importorskip("onnxruntime")
    net, ckpt = _tiny_checkpoint(tmp_path, seed=2)
    onnx_path = tmp_path / "model.onnx"
    cmd = [sys.executable, "-m", "dlka_monai.export", "onnx", "--config_file", str(tiny_bundle / "configs" / "inference.json")]
    cmd += ["--ckpt_file", str(ckpt), "--filepath", str(onnx_path), "--bundle_root", str(tiny_bundle)]
    proc = subprocess.run(cmd, capture_output=True, encoding="utf-8", errors="replace", timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    diff = float(proc.stdout.split("max abs difference to PyTorch")[1].split(")")[0])
    assert diff <= 1e-4
    # and independently of the tool's own check
    import onnxruntime

    x = torch.rand(1, 1, *TINY_BUNDLE_IMG_SIZE)
    out = onnxruntime.InferenceSession(str(onnx_path)).run(None, {"image": x.numpy()})[0]
    with torch.no_grad():
        assert abs(out - net(x).numpy()).max() <= 1e-4
