"""The training half of the bundle: configs/train.json and its overlays, on the demo data."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigWorkflow
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from utils import TINY_TRAIN_ARGS as TINY
from utils import free_port, run_bundle
from dlka_monai.networks import get_preset
from dlka_monai.training import latest_checkpoint, load_history

ROOT = Path(__file__).resolve().parents[1]
TRAIN = str(ROOT / "configs" / "train.json")
MULTI_GPU = str(ROOT / "configs" / "multi_gpu_train.json")


@pytest.fixture
def demo_dir(demo_dataset):
    return str(demo_dataset)


def _scalars(log_dir, tag):
    values = {}
    for events in Path(log_dir).glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        if tag in acc.Tags()["scalars"]:
            values.update({e.step: e.value for e in acc.Scalars(tag)})
    return values


def test_train_config_has_the_properties_monai_tools_read(tmp_path, demo_dir):
    workflow = ConfigWorkflow(
        config_file=TRAIN, workflow_type="train", bundle_root=str(tmp_path), demo_dir=demo_dir
    )
    workflow.initialize()
    assert workflow.check_properties() == []
    assert workflow.max_epochs == 100 and len(workflow.train_dataset) == 4
    config = json.loads(Path(TRAIN).read_text())
    assert {"run", "training", "network", "network_def", "bundle_root", "dataset_dir", "device"} <= set(config)


def test_metadata_has_the_model_zoo_fields():
    meta = json.loads((ROOT / "configs" / "metadata.json").read_text())
    assert meta["version"] in meta["changelog"]
    for key in ("monai_version", "pytorch_version", "numpy_version", "task", "description", "authors", "copyright"):
        assert isinstance(meta[key], str) and meta[key], key
    fmt = meta["network_data_format"]
    tensors = {"image": fmt["inputs"]["image"], "pred": fmt["outputs"]["pred"]}
    for tensor in tensors.values():
        for key, kind in dict(
            type=str, format=str, num_channels=int, spatial_shape=list, dtype=str, value_range=list, is_patch_data=bool, channel_def=dict
        ).items():
            assert isinstance(tensor[key], kind), key
    assert tensors["image"]["modality"] == "CT"
    # the repository bundle's metadata describes its default preset, whose facts live in the registry
    preset = get_preset(json.loads((ROOT / "configs" / "inference.json").read_text())["preset"])
    assert tensors["pred"]["channel_def"] == {str(k): v for k, v in preset.class_names.items()}
    assert tensors["pred"]["num_channels"] == preset.args["out_channels"] == 14
    assert tensors["image"]["spatial_shape"] == list(preset.args["img_size"]) == [64, 128, 128]


def test_demo_training_learns_saves_and_resumes(tmp_path, demo_dir):
    args = ["--config_file", TRAIN, "--bundle_root", str(tmp_path), "--demo_dir", demo_dir, *TINY]
    out = run_bundle([*args, "--max_epochs", "4", "--val_interval", "1"], cwd=tmp_path)
    epoch_lines = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert [line.split()[1] for line in epoch_lines] == ["1/4", "2/4", "3/4", "4/4"]
    assert all(" dice " in line and " ETA " in line for line in epoch_lines)
    # per-iteration figures and ignite's engine messages stay off the console, in logs/train.log
    assert "iteration" not in out and "Epoch[" not in out and "train_loss" not in out
    assert (tmp_path / "logs" / "train.log").read_text().count(" iteration ") == 4 * 4
    for picture in ("progress.png", "validation_overlay.png"):
        assert (tmp_path / "logs" / picture).stat().st_size > 1000

    dice = _scalars(tmp_path / "logs", "val_mean_dice")
    assert sorted(dice) == [1, 2, 3, 4]
    assert max(dice[e] for e in (2, 3, 4)) > dice[1], dice
    assert _scalars(tmp_path / "logs", "train_loss") and _scalars(tmp_path / "logs", "lr")

    models = tmp_path / "models"
    best = torch.load(models / "model.pt", weights_only=True)
    assert "encoder.stages.0.0.attn.spatial_gating_unit.deform_conv.conv_offset.weight" in best["model"]
    # the plan: the network as trained (the tiny overrides) and the demo's preprocessing
    assert best["plan"]["network"]["feature_size"] == 4 and best["plan"]["network"]["img_size"] == [16, 32, 32]
    assert best["plan"]["pixdim"] == [6.0, 4.0, 4.0] and best["plan"]["class_names"]["6"] == "liver"
    assert best["plan"]["training_precision"] == "fp32"  # the model says how it was trained (amp is for CUDA)
    latest = torch.load(models / "checkpoint_epoch=4.pt", weights_only=True)
    assert {"model", "optimizer", "lr_scheduler", "trainer"} <= set(latest)
    # ignite keeps iteration and epoch_length; the epoch follows from them
    epoch_length = latest["trainer"]["epoch_length"]
    assert epoch_length == 4 and latest["trainer"]["iteration"] == 4 * epoch_length

    # resume: continues at epoch 5 instead of starting over
    out = run_bundle([*args, "--max_epochs", "5", "--val_interval", "5", "--resume", "true"], cwd=tmp_path)
    assert "epoch 5/5" in out and "epoch 1/5" not in out
    # the plot of the resumed run covers all five epochs
    assert [r["epoch"] for r in load_history(tmp_path / "logs" / "progress.json")] == [1, 2, 3, 4, 5]
    resumed = torch.load(models / "checkpoint_epoch=5.pt", weights_only=True)
    assert resumed["trainer"]["iteration"] == 5 * epoch_length
    assert latest_checkpoint(models).endswith("checkpoint_epoch=5.pt")


@pytest.mark.slow
def test_resume_without_checkpoint_is_a_clear_error(tmp_path, demo_dir):
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", TRAIN, "--bundle_root", str(tmp_path)]
    cmd += ["--demo_dir", demo_dir, "--resume", "true", *TINY]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, encoding="utf-8", errors="replace", timeout=600)
    assert proc.returncode != 0
    assert "no checkpoint to resume from" in proc.stdout + proc.stderr


@pytest.mark.slow  # two training processes
def test_multi_gpu_config_runs_with_gloo_on_cpu(tmp_path, demo_dir):
    config = f"['{TRAIN}','{MULTI_GPU}']"
    args = ["--config_file", config, "--bundle_root", str(tmp_path), "--demo_dir", demo_dir, *TINY]
    launcher = (sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port", str(free_port()))
    out = run_bundle([*args, "--max_epochs", "1", "--val_interval", "1"], cwd=tmp_path, launcher=launcher)
    assert out.count("epoch 1/1") == 1  # rank 0 alone prints
    # rank 0 alone saves the checkpoints
    assert (tmp_path / "models" / "checkpoint_epoch=1.pt").exists()
    assert (tmp_path / "models" / "model.pt").exists()


PANCREAS = str(ROOT / "configs" / "pancreas.json")


@pytest.mark.slow
def test_pancreas_overlay_trains_on_demo_data(tmp_path, demo_dir):
    config = f"['{TRAIN}','{PANCREAS}']"
    args = ["--config_file", config, "--bundle_root", str(tmp_path), "--demo_dir", demo_dir, *TINY]
    out = run_bundle([*args, "--max_epochs", "1", "--val_interval", "1"], cwd=tmp_path)
    assert "epoch 1/1" in out
    best = torch.load(tmp_path / "models" / "pancreas" / "model.pt", weights_only=True)
    assert best["model"]["out1.conv.conv.weight"].shape[0] == 2  # background + pancreas
    assert best["model"]["encoder.downsample_layers.0.0.conv.weight"].shape[2:] == (2, 2, 2)  # the Pancreas patch embedding
    assert best["plan"]["preset"] == "dlka3d_pancreas" and best["plan"]["class_names"] == {"0": "background", "1": "pancreas"}


@pytest.mark.slow
def test_pancreas_overlay_reads_the_authors_h5_folds(tmp_path):
    h5py = pytest.importorskip("h5py")
    data = tmp_path / "NIH"
    (data / "Flods").mkdir(parents=True)
    zz, yy, xx = torch.meshgrid(*(torch.arange(40.0),) * 3, indexing="ij")
    for i in range(1, 5):
        label = (((zz - 20) / 8) ** 2 + ((yy - 18 - i) / 6) ** 2 + ((xx - 22) / 10) ** 2 < 1).to(torch.uint8)
        image = torch.randn(40, 40, 40) * 0.1 + label.float()
        with h5py.File(data / f"PANCREAS_{i:04d}.h5", "w") as f:
            f["image"], f["label"] = image.numpy(), label.numpy()
    (data / "Flods" / "train0.list").write_text("PANCREAS_0001\nPANCREAS_0002\nPANCREAS_0003\n")
    (data / "Flods" / "test0.list").write_text("PANCREAS_0004\n")
    config = f"['{TRAIN}','{PANCREAS}']"
    args = ["--config_file", config, "--bundle_root", str(tmp_path), "--dataset_dir", str(data), "--h5_fold", "0"]
    args += [*TINY, "--img_size", "[32,32,32]", "--max_epochs", "1", "--epoch_length", "2", "--val_interval", "1", "--val_fraction", "0.34"]
    out = run_bundle(args, cwd=tmp_path)
    assert "epoch 1/1" in out and " dice " in out
    assert (tmp_path / "models" / "pancreas" / "model.pt").exists()
