"""The packed bundle in MONAI Label's ``monaibundle`` sample app, in process: BundleInferTask and
BundleTrainTask of MONAI Label 0.8.5 on a tiny D-LKA net.

MONAI Label pins numpy<2, so this runs in an environment of its own (what .ci/run does):
``pip install -e ".[test,label]" && python -m pytest tests -m monailabel``; elsewhere it is skipped.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from test_bundle_pack import TINY_SET, _tiny_training_checkpoint

from dlka_monai.bundle import pack_bundle

pytest.importorskip("monailabel")
pytestmark = pytest.mark.monailabel

NAME = "dlka3d_synapse"


@pytest.fixture(scope="module")
def monaibundle_app(demo_dataset, tmp_path_factory):
    """The monaibundle app serving the packed tiny bundle from ``<app>/model/<name>``, with 3 studies, 2 of
    them labelled."""
    from monailabel.config import settings
    from monailabel.interfaces.utils.app import app_instance, clear_cache

    root = tmp_path_factory.mktemp("monailabel")
    _tiny_training_checkpoint(root / "tiny.pt")
    # validation every epoch, so that a 1-epoch run updates models/model.pt
    bundle, _ = pack_bundle(NAME, root / "dist" / NAME, root / "tiny.pt", overrides={**TINY_SET, "val_interval": 1})
    # the sample app ships with the monailabel package: this copies it, offline
    cmd = [sys.executable, "-m", "monailabel.main", "apps", "--download", "--name", "monaibundle", "--output", str(root / "apps")]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    app_dir = root / "apps" / "monaibundle"
    (app_dir / "model").mkdir(exist_ok=True)
    (app_dir / "model" / NAME).symlink_to(bundle, target_is_directory=True)

    studies = root / "studies"
    (studies / "labels" / "final").mkdir(parents=True)
    for case in ("demo_000", "demo_001", "demo_006"):
        shutil.copy(demo_dataset / "imagesTr" / f"{case}.nii.gz", studies)
    for case in ("demo_000", "demo_001"):
        shutil.copy(demo_dataset / "labelsTr" / f"{case}.nii.gz", studies / "labels" / "final")

    with pytest.MonkeyPatch.context() as mp:
        # no folder watcher thread, no sessions under ~/.cache
        mp.setattr(settings, "MONAI_LABEL_DATASTORE_AUTO_RELOAD", False)
        mp.setattr(settings, "MONAI_LABEL_SESSIONS", False)
        # zoo_source other than monaihosting: local bundles without listing the online model zoo
        conf = {"models": NAME, "zoo_source": "github", "sam2": "false", "preload": "false"}
        app = app_instance(str(app_dir), str(studies), conf)
        yield app, bundle
    clear_cache()


def _infer(app, demo_dataset, case="demo_006"):
    result = app.infer({"model": NAME, "image": case, "device": "cpu"})
    label = Path(result["file"])
    try:
        seg, image = nib.load(label), nib.load(demo_dataset / "imagesTr" / f"{case}.nii.gz")
        assert seg.shape == image.shape
        assert np.allclose(seg.affine, image.affine, atol=1e-4)
        assert nib.aff2axcodes(image.affine) != ("R", "A", "S")  # not the orientation the net is fed in
        values = np.unique(np.asarray(seg.dataobj))
        assert set(values.tolist()) <= set(range(14)) and len(values) > 1
    finally:
        label.unlink()
    return result["params"]


def test_bundle_infer_task_returns_a_label_map_in_the_image_space(monaibundle_app, demo_dataset):
    from monailabel.tasks.infer.bundle import BundleInferTask

    app, bundle = monaibundle_app
    task = app._infers[NAME]
    assert isinstance(task, BundleInferTask) and task.is_valid()
    meta = json.loads((bundle / "configs" / "metadata.json").read_text(encoding="utf-8"))
    channel_def = meta["network_data_format"]["outputs"]["pred"]["channel_def"]
    expected = {v: int(k) for k, v in channel_def.items() if k != "0"}  # the labels, without background
    info = app.info()["models"][NAME]
    assert info["labels"] == expected and info["dimension"] == 3 and info["type"] == "segmentation"
    params = _infer(app, demo_dataset)
    assert params["label_names"] == expected


def test_bundle_train_task_trains_the_model_that_infer_then_uses(monaibundle_app, demo_dataset):
    from monailabel.tasks.train.bundle import BundleTrainTask

    app, bundle = monaibundle_app
    assert isinstance(app._trainers[NAME], BundleTrainTask)
    model = bundle / "models" / "model.pt"
    before = torch.load(model, weights_only=True)
    app.train({"model": NAME, "max_epochs": 1, "device": "cpu", "val_split": 0.5, "multi_gpu": False})
    after = torch.load(model, weights_only=True)
    assert before.keys() == after.keys() and not all(torch.equal(before[k], after[k]) for k in before)
    assert (bundle / "models" / "checkpoint_epoch=1.pt").exists()
    _infer(app, demo_dataset)  # the infer task reloads the changed model.pt
