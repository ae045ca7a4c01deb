"""The packed bundle in MONAI Label's ``monaibundle`` sample app, in process: BundleInferTask and
BundleTrainTask of MONAI Label 0.8.5 on a tiny D-LKA net.

MONAI Label pins numpy<2, so this runs in an environment of its own (what .ci/run does):
``pip install -e ".[test,label]" && python -m pytest tests -m monailabel``; elsewhere it is skipped.
"""

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from dlka_monai.bundle import pack_bundle
from utils import dice, free_port, tiny_training_checkpoint

pytest.importorskip("monailabel")
pytestmark = pytest.mark.monailabel

NAME = "dlka3d_synapse"
LIVER = 6


def _app_and_studies(root, demo_dataset, model=None):
    """The monaibundle sample app serving a packed bundle of ``model`` (default: a tiny net of random
    weights) from ``<app>/model/<name>``, and a studies folder of 3 images, 2 of them labelled."""
    if model is None:
        model = root / "tiny.pt"
        tiny_training_checkpoint(model)
    # validation every epoch and 2 iterations an epoch, so that a 1-epoch run is quick and updates models/model.pt
    bundle, _ = pack_bundle(NAME, root / "dist" / NAME, model, overrides={"val_interval": 1, "epoch_length": 2})
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
    return app_dir, studies, bundle


# zoo_source other than monaihosting: local bundles without listing the online model zoo
_CONF = {"models": NAME, "zoo_source": "github", "sam2": "false", "preload": "false"}


@pytest.fixture(scope="module")
def monaibundle_app(demo_dataset, tmp_path_factory):
    """The app in this process (MONAI Label's own ``app_instance``)."""
    from monailabel.config import settings
    from monailabel.interfaces.utils.app import app_instance, clear_cache

    app_dir, studies, bundle = _app_and_studies(tmp_path_factory.mktemp("monailabel"), demo_dataset)
    with pytest.MonkeyPatch.context() as mp:
        # no folder watcher thread, no sessions under ~/.cache
        mp.setattr(settings, "MONAI_LABEL_DATASTORE_AUTO_RELOAD", False)
        mp.setattr(settings, "MONAI_LABEL_SESSIONS", False)
        app = app_instance(str(app_dir), str(studies), _CONF)
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
    # the packed plan's tiny network is trained, and saved with its plan
    assert after["plan"]["network"] == before["plan"]["network"]
    before, after = before["model"], after["model"]
    assert before.keys() == after.keys() and not all(torch.equal(before[k], after[k]) for k in before)
    assert (bundle / "models" / "checkpoint_epoch=1.pt").exists()
    _infer(app, demo_dataset)  # the infer task reloads the changed model.pt


def _request(url, data=None, timeout=60):
    body = None if data is None else urllib.parse.urlencode(data).encode()
    with urllib.request.urlopen(urllib.request.Request(url, data=body, method="POST" if body is not None else "GET"), timeout=timeout) as r:
        return r.read()


def test_rest_server_infers_and_trains_the_packed_bundle(demo_model, demo_dataset, tmp_path):
    """``monailabel start_server`` on 127.0.0.1 with the packed demo model, driven as a client does:
    inference over REST (a label map in the image's space that finds the held-out case's liver, with the
    bundle's class names), one training round, stop."""
    app_dir, studies, bundle = _app_and_studies(tmp_path, demo_dataset, demo_model.model)
    port = free_port()
    cmd = [sys.executable, "-m", "monailabel.main", "start_server", "--app", str(app_dir), "--studies", str(studies)]
    cmd += ["--host", "127.0.0.1", "--port", str(port)]
    for key, value in _CONF.items():
        cmd += ["--conf", key, value]
    env = {**os.environ, "MONAI_LABEL_DATASTORE_AUTO_RELOAD": "false", "MONAI_LABEL_SESSIONS": "false"}
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                info = json.loads(_request(f"{url}/info/", timeout=10))
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, (tmp_path / "server.log").read_text()[-4000:]
                time.sleep(2)
        meta = json.loads((bundle / "configs" / "metadata.json").read_text(encoding="utf-8"))
        expected = {v: int(k) for k, v in meta["network_data_format"]["outputs"]["pred"]["channel_def"].items() if k != "0"}
        assert info["models"][NAME]["labels"] == expected

        params = {"params": json.dumps({"device": "cpu"})}
        label = tmp_path / "label.nii.gz"
        label.write_bytes(_request(f"{url}/infer/{NAME}?image=demo_006&output=image", params, timeout=900))
        seg, image = nib.load(label), nib.load(demo_dataset / "imagesTr" / "demo_006.nii.gz")
        assert seg.shape == image.shape and np.allclose(seg.affine, image.affine, atol=1e-4)
        assert set(np.unique(np.asarray(seg.dataobj)).tolist()) <= set(range(14))
        truth = nib.load(demo_dataset / "labelsTr" / "demo_006.nii.gz").dataobj
        assert dice(seg.dataobj, truth, LIVER) > 0.5  # the organ, where it is (~0.67 by the demo model)
        result = json.loads(_request(f"{url}/infer/{NAME}?image=demo_006&output=json", params, timeout=900))
        assert result["label_names"] == expected

        model = bundle / "models" / "model.pt"
        before = torch.load(model, weights_only=True)["model"]
        train = {"max_epochs": 1, "device": "cpu", "val_split": 0.5, "multi_gpu": False}
        request = urllib.request.Request(
            f"{url}/train/{NAME}?run_sync=true", data=json.dumps(train).encode(), method="POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=1500) as r:
            assert r.status == 200
        after = torch.load(model, weights_only=True)["model"]
        assert not all(torch.equal(before[k], after[k]) for k in before)
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=60)
        log.close()
    assert server.poll() is not None
