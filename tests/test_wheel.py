"""A non-editable install (the built wheel) ships the configs it needs: dlka-segment and the packer work
without the source tree."""

import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import pytest

from utils import save_tiny_model

ROOT = Path(__file__).resolve().parents[1]
# builds and installs a wheel, then segments and packs in subprocesses: the packaging, not the code
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The wheel built from this checkout, installed (without dependencies: the test environment's are
    used) into a folder of its own."""
    tmp = tmp_path_factory.mktemp("wheel")
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp / "dist"), str(ROOT)]
    subprocess.run(build, check=True, capture_output=True, timeout=600)
    (wheel,) = (tmp / "dist").glob("dlka_monai-*.whl")
    target = tmp / "site"
    install = [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)]
    subprocess.run(install, check=True, capture_output=True, timeout=600)
    return target


def _run(installed, args, cwd):
    # the installed copy comes first on the path, before the editable install of the checkout
    env = {**os.environ, "PYTHONPATH": str(installed)}
    proc = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, encoding="utf-8", errors="replace", timeout=1200)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return proc.stdout


def test_the_wheel_segments_and_packs_without_the_source_tree(installed, demo_dataset, tmp_path):
    where = _run(installed, ["-c", "import dlka_monai.bundle_files as b; print(b.bundle_root())"], tmp_path)
    assert where.strip() == str(installed / "dlka_monai" / "_bundle")
    assert (installed / "dlka_monai" / "evaluation" / "templates" / "report.html.j2").is_file()  # package_data
    model = tmp_path / "model.pt"
    save_tiny_model(model)
    image = demo_dataset / "imagesTr" / "demo_006.nii.gz"
    out = _run(installed, ["-m", "dlka_monai.segment", "-i", str(image), "-o", str(tmp_path / "seg.nii.gz"), "--model", str(model)], tmp_path)
    assert "demo_006.nii.gz ->" in out
    assert nib.load(tmp_path / "seg.nii.gz").shape == nib.load(image).shape
    _run(installed, ["-m", "dlka_monai.bundle", "pack", "--out", str(tmp_path / "b"), "--checkpoint", str(model)], tmp_path)
    assert (tmp_path / "b" / "configs" / "inference.json").is_file() and (tmp_path / "b" / "docs" / "README.md").is_file()
