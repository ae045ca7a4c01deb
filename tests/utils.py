"""Helpers shared by the test files (as MONAI's tests/test_utils.py): the tiny network settings, tiny model
files, DICOM series, deformable-conv cases, Triton runners, subprocess runs, free ports and Dice. Test
files import from here, never from each other."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
DATA = TESTS / "data"
CONFIGS = ROOT / "configs"
TRAIN = str(CONFIGS / "train.json")
LOGGING = str(CONFIGS / "logging.conf")

# --- tiny networks, one place ---------------------------------------------------------------------------

# a 3D D-LKA net small enough for fast tests: stages 8³/4³/2³/1³ with 8..64 channels
TINY_3D = dict(img_size=(16, 32, 32), patch_size=(2, 4, 4), feature_size=4, depths=(1, 1, 1, 1))
# the demo-sized tiny net of the test bundle
TINY_BUNDLE_NET = dict(feature_size=4, depths=[1, 1, 1, 1])
TINY_BUNDLE_IMG_SIZE, TINY_BUNDLE_PIXDIM = [32, 64, 64], [3.0, 2.5, 2.5]
# the 2D nets: timm's smallest MaxViT encoder at 64x64
TINY_2D = dict(img_size=64, encoder="maxvit_rmlp_pico_rw_256")
# train.json overrides: the tiny net and a cheap validation, so a few demo epochs take seconds
TINY_TRAIN_ARGS = ["--network_def#feature_size", "4", "--network_def#depths", "[1,1,1,1]", "--validate#inferer#overlap", "0.25"]
# train_2d.json overrides: the tiny 2D net
TINY_TRAIN_2D_ARGS = ["--network_def#encoder", TINY_2D["encoder"], "--img_size", str(TINY_2D["img_size"])]


def reference_manifest(name: str) -> dict[str, list[int]]:
    """The authors' state-dict keys and shapes for preset ``name``."""
    return json.loads((DATA / f"{name}_state_dict.json").read_text())


def save_tiny_model(path, preset="dlka3d_synapse", seed=0, **network):
    """A model file of a tiny net of ``preset`` (weights drawn with ``seed``) with its plan (the demo's
    patch and spacing for the 3D presets); returns the network."""
    from dlka_monai.networks import create_network
    from dlka_monai.plan import make_plan, network_plan
    from dlka_monai.weights import save_model

    torch.manual_seed(seed)
    args = {**TINY_BUNDLE_NET, "img_size": TINY_BUNDLE_IMG_SIZE} if preset.startswith("dlka3d") else {}
    net = create_network(preset, **{**args, **network})
    plan = network_plan(net, make_plan(preset), pixdim=TINY_BUNDLE_PIXDIM) if preset.startswith("dlka3d") else network_plan(net)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_model(path, net, plan)
    return net


def tiny_training_checkpoint(path, seed=0):
    """A training checkpoint of the tiny net, with its plan: the packer keeps its ``model`` and ``plan``."""
    save_tiny_model(path, seed=seed)
    ckpt = torch.load(path, weights_only=True)
    torch.save({**ckpt, "epoch": torch.tensor(3)}, path)
    return ckpt


# --- processes ------------------------------------------------------------------------------------------


def run(cmd, cwd=None, timeout=900, env=None, check=True) -> subprocess.CompletedProcess:
    """``cmd`` in a subprocess, text output captured; with ``check``, a non-zero exit fails the test
    showing the output's end."""
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, encoding="utf-8", errors="replace", timeout=timeout)
    if check:
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    return proc


def run_bundle(args, cwd, timeout=900, launcher=(sys.executable,)) -> str:
    """``python -m monai.bundle run training`` with ``args`` and the bundle's logging config; its output."""
    proc = run([*launcher, "-m", "monai.bundle", "run", "training", *args, "--logging_file", LOGGING], cwd=cwd, timeout=timeout)
    return proc.stdout + proc.stderr


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the OS picks it), so that two runs never share a fixed one."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- images ---------------------------------------------------------------------------------------------

STUDY_UID = "1.2.826.0.1.3680043.2.1125.1"


SERIES_SHAPE = (16, 12, 5)  # (x, y, z)


def series_volume(offset: int = 0):
    """A (x, y, z) int16 array and the same volume as a SimpleITK image, rotated 10 degrees, off-origin."""
    import SimpleITK as sitk

    array = ((np.arange(np.prod(SERIES_SHAPE)).reshape(SERIES_SHAPE) * 7 + offset) % 1000 - 300).astype(np.int16)
    image = sitk.GetImageFromArray(array.T)  # SimpleITK takes (z, y, x)
    image.SetSpacing((0.8, 0.9, 2.5))
    image.SetOrigin((-12.5, 30.25, -100.0))
    c, s = np.cos(np.deg2rad(10)), np.sin(np.deg2rad(10))
    image.SetDirection((c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0))
    return array, image


def write_series(image, folder: Path, series_uid: str) -> None:
    """Write the SimpleITK ``image`` as a DICOM series, one file per slice, with the tags ImageSeriesReader
    needs."""
    import SimpleITK as sitk

    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    d = image.GetDirection()
    tags = {
        "0008|0021": "20240101",  # series date
        "0008|0031": "120000",  # series time
        "0008|0060": "CT",
        "0008|0008": "ORIGINAL\\PRIMARY\\AXIAL",
        "0020|000d": STUDY_UID,
        "0020|000e": series_uid,
        "0020|0052": f"{STUDY_UID}.9",  # frame of reference UID
        "0018|0050": f"{image.GetSpacing()[2]}",  # slice thickness
        "0020|0037": "\\".join(f"{v}" for v in (d[0], d[3], d[6], d[1], d[4], d[7])),  # row, column directions
    }
    for k in range(image.GetDepth()):
        slice_k = image[:, :, k]
        for tag, value in tags.items():
            slice_k.SetMetaData(tag, value)
        slice_k.SetMetaData("0020|0032", "\\".join(f"{v}" for v in image.TransformIndexToPhysicalPoint((0, 0, k))))
        slice_k.SetMetaData("0020|0013", f"{k + 1}")  # instance number
        slice_k.SetMetaData("0008|0018", f"{series_uid}.{k + 1}")  # SOP instance UID
        writer.SetFileName(str(folder / f"{series_uid[-3:]}_{k:03d}.dcm"))
        writer.Execute(slice_k)


def assert_same_space_values(seg_path, image_path, allowed):
    """The label map at ``seg_path`` is on the grid of the (non-RAS) image, uint8, of values in
    ``allowed``, and not a single value."""
    import nibabel as nib

    seg, image = nib.load(seg_path), nib.load(image_path)
    assert seg.shape == image.shape
    assert np.allclose(seg.affine, image.affine, atol=1e-4)
    assert nib.aff2axcodes(seg.affine) == nib.aff2axcodes(image.affine) != ("R", "A", "S")
    assert seg.get_data_dtype() == np.uint8
    values = np.unique(np.asarray(seg.dataobj))
    assert set(values.tolist()) <= set(allowed) and len(values) > 1


def assert_same_space(seg_path, image_path):
    assert_same_space_values(seg_path, image_path, range(14))


def dice(seg, gt, label: int) -> float:
    """Dice of ``label`` between two label arrays (NaN where it is in neither)."""
    a, b = np.asarray(seg) == label, np.asarray(gt) == label
    total = a.sum() + b.sum()
    return float(2 * (a & b).sum() / total) if total else float("nan")


# --- deformable convolutions ----------------------------------------------------------------------------


def _off_integers(off):
    """Offsets kept away from integer positions (the kinks of linear interpolation)."""
    return off.round() + (off - off.round()).clamp(-0.4, 0.4).abs().clamp(min=0.1) * torch.sign(off - off.round() + 1e-9)


def deform3d_case(batch, cin, cout, size, kernel, stride, padding, dilation, groups=1, dtype=torch.float32, amp=3.0):
    """Input, offsets (up to ``amp`` voxels), weight, bias and conv settings of a 3D deformable conv."""
    conv = torch.nn.Conv3d(cin, cout, kernel, stride, padding, dilation, groups).to(dtype)
    ks, st, pd, dl = conv.kernel_size, conv.stride, conv.padding, conv.dilation
    out = [(s + 2 * p - d * (k - 1) - 1) // t + 1 for s, k, t, p, d in zip(size, ks, st, pd, dl)]
    x = torch.randn(batch, cin, *size, dtype=dtype, requires_grad=True)
    off = _off_integers(amp * (torch.rand(batch, 3 * math.prod(ks), *out, dtype=dtype) * 2 - 1))
    off.requires_grad_()
    w = conv.weight.detach().clone().requires_grad_()
    b = conv.bias.detach().clone().requires_grad_()
    return x, off, w, b, (st, pd, dl, groups)


# (batch, C_in, C_out, size, kernel, stride, padding, dilation) of the 3D kernel comparisons
DEFORM3D_CASES = [
    (2, 5, 7, (6, 7, 8), 3, 1, 1, 1),
    (1, 4, 3, (7, 6, 9), 3, 2, 0, 1),
    (2, 3, 4, (8, 8, 8), 3, 1, 2, 2),
    (1, 4, 4, (5, 6, 7), (3, 2, 1), (2, 1, 1), (1, 0, 0), (1, 2, 1)),
]


def deform3d_close(a, b, rel=1e-5, abs_=1e-5):
    scale = b.abs().max().item()
    return (a - b).abs().max().item() <= abs_ + rel * scale


def deform2d_case(batch, ch, size, kernel, stride, padding, dilation, dtype=torch.float32, amp=3.0):
    """Input, offsets (up to ``amp`` pixels), weight, bias and conv settings of a 2D depthwise
    deformable conv."""
    out = [(s + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1 for s in size]
    x = torch.randn(batch, ch, *size, dtype=dtype, requires_grad=True)
    off = _off_integers(amp * (torch.rand(batch, 2 * kernel * kernel, *out, dtype=dtype) * 2 - 1))
    off.requires_grad_()
    w = torch.randn(ch, 1, kernel, kernel, dtype=dtype, requires_grad=True)
    b = torch.randn(ch, dtype=dtype, requires_grad=True)
    return x, off, w, b, (stride, padding, dilation)


def deform2d_close(a, b, tol):
    return (a - b).abs().max().item() <= tol * (1 + b.abs().max().item())


def run_interpreted(script: str) -> dict:
    """Run ``script`` under Triton's interpreter in a fresh process (the package and this folder
    importable) and return the JSON object it prints last. ``TRITON_INTERPRET=1`` must be set before
    ``triton.jit`` decorates the kernels, hence the process of its own."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(TESTS), os.environ.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-5000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def compile_for_sm90(fn, ptr_types: dict, constants: dict):
    """Compile the Triton kernel ``fn`` to a cubin for sm_90 (no GPU needed): the pointers typed by
    ``ptr_types``, the arguments in ``constants`` as constants, every other one i32."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    sig = {a: "constexpr" if a in constants else ptr_types.get(a, "i32") for a in fn.arg_names}
    compiled = triton.compile(ASTSource(fn, sig, constants), target=GPUTarget("cuda", 90, 32))
    assert compiled.asm["cubin"]
    return compiled
