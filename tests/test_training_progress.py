"""The training log, the per-class validation Dice, the progress plot and the validation overlay, on a
real MONAI trainer and evaluator with a one-layer network (seconds)."""

import json
import logging

import numpy as np
import pytest
import torch
from ignite.handlers import ProgressBar
from monai.data import DataLoader, MetaTensor
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.handlers import MeanDice, ValidationHandler, from_engine
from monai.losses import DiceCELoss
from monai.transforms import Activationsd, AsDiscreted, Compose
from PIL import Image

from dlka_monai.training import PerClassDice, ProgressPlot, TrainingLog, ValidationOverlay, load_history

NUM_CLASSES = 3


def _cases(n):
    """Cubes of class 1 and 2 in noise, [1, 16, 16, 8] arrays with a non-trivial affine."""
    rng = np.random.default_rng(0)
    cases = []
    for i in range(n):
        label = np.zeros((1, 16, 16, 8), np.float32)
        label[0, 2:8, 3:9, 1:6] = 1
        label[0, 9:14, 8 + i % 2 : 14, 2:7] = 2
        image = label / 2 + rng.normal(0, 0.1, label.shape).astype(np.float32)
        affine = torch.diag(torch.tensor([-2.0, -2.0, 3.0, 1.0]))  # LPS-like voxel axes
        cases.append({"image": MetaTensor(image, affine=affine), "label": MetaTensor(label, affine=affine)})
    return cases


def _train(log_dir, max_epochs, resume_from=0, decollate=True):
    torch.manual_seed(0)
    net = torch.nn.Conv3d(1, NUM_CLASSES, 3, padding=1)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.5)
    post = Compose([Activationsd("pred", softmax=True), AsDiscreted(("pred", "label"), argmax=(True, False), to_onehot=NUM_CLASSES)])
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader(_cases(2), batch_size=1),
        network=net,
        postprocessing=post,
        key_val_metric={"val_mean_dice": MeanDice(include_background=False, output_transform=from_engine(["pred", "label"]))},
        val_handlers=[PerClassDice()],
    )
    log = TrainingLog(log_dir, optimizer=optimizer, evaluator=evaluator)
    overlay = ValidationOverlay(evaluator, log_dir)
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=max_epochs,
        train_data_loader=DataLoader(_cases(4), batch_size=2),
        network=net,
        optimizer=optimizer,
        loss_function=DiceCELoss(to_onehot_y=True, softmax=True),
        decollate=decollate,
        train_handlers=[
            ValidationHandler(validator=evaluator, interval=2, epoch_level=True),
            ProgressBar(persist=True),
            log,
            ProgressPlot(log_dir),
            overlay,
        ],
    )
    if resume_from:  # as TrainingCheckpointer leaves the state of a resumed run
        trainer.state.epoch, trainer.state.iteration = resume_from, resume_from * 2
    trainer.run()
    return log, overlay


@pytest.mark.parametrize("decollate", [False, True])  # the bundle's trainer does not decollate
def test_one_line_per_epoch_on_the_console_and_iterations_in_the_file(tmp_path, capsys, decollate):
    log, _ = _train(tmp_path, max_epochs=4, decollate=decollate)
    out, err = capsys.readouterr()
    lines = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert [line.split()[1] for line in lines] == ["1/4", "2/4", "3/4", "4/4"]
    assert "dice" not in lines[0] and "dice" in lines[1] and "best" in lines[1] and "ETA" in lines[0]
    # the validated line holds the mean and one value per foreground class
    assert len(lines[1].split("[")[1].split("]")[0].split()) == NUM_CLASSES - 1
    assert "iteration" not in out + err and "Warning" not in out + err
    text = (tmp_path / "train.log").read_text()
    assert text.count("iteration") == 4 * 2 and lines[3] in text
    # the handler is gone from the root logger after the run
    assert not any(getattr(h, "baseFilename", "").endswith("train.log") for h in logging.getLogger().handlers)


def test_history_holds_what_the_lines_and_the_plot_show(tmp_path):
    log, _ = _train(tmp_path, max_epochs=4)
    history = load_history(tmp_path / "progress.json")
    assert history == json.loads(json.dumps(log.history))
    assert [r["epoch"] for r in history] == [1, 2, 3, 4]
    assert [r["lr"] for r in history] == [0.5] * 4
    assert all(np.isfinite(r["loss"]) and r["seconds"] > 0 for r in history)
    assert history[0]["loss"] > history[-1]["loss"]
    validated = [r for r in history if "dice" in r]
    assert [r["epoch"] for r in validated] == [2, 4]
    for r in validated:
        assert set(r["class_dice"]) == {"1", "2"}
        # the key metric is the mean of the per-class values
        assert r["dice"] == pytest.approx(np.mean(list(r["class_dice"].values())), abs=1e-5)
    assert log.best() == max((r["dice"], r["epoch"]) for r in validated)


def test_progress_plot_and_overlay(tmp_path):
    _, overlay = _train(tmp_path, max_epochs=2)
    plot = np.asarray(Image.open(tmp_path / "progress.png").convert("RGB"))
    assert plot.shape == (700, 900, 3) and len(np.unique(plot.reshape(-1, 3), axis=0)) > 20
    picture = np.asarray(Image.open(tmp_path / "validation_overlay.png").convert("RGB"))
    # 3 axial slices of image | label | prediction; RAS (x 16, y 16) shown as (y rows, x columns), enlarged 16x
    assert picture.shape == (3 * 16 * 16, 3 * 16 * 16, 3)
    picture = picture[::16, ::16]
    image, label, pred = overlay.case
    assert image.shape == label.shape == pred.shape == (16, 16, 8)
    # the kept case is the first validation case, reoriented from its LPS-like voxel axes to RAS
    assert np.array_equal(label, _cases(2)[0]["label"][0].numpy()[::-1, ::-1])
    # the label column is coloured where the case's label is, the image column is grey
    gray_column, label_column = picture[:, :16], picture[:, 16:32]
    assert np.ptp(gray_column.astype(int), axis=-1).max() == 0
    assert np.ptp(label_column.astype(int), axis=-1).max() > 50
    # radiological: the patient's right (+x in RAS) on the viewer's left, anterior (+y) up
    rows = (label[:, :, 1] > 0).T[::-1, ::-1]  # the first row: the lowest slice with foreground
    assert np.array_equal(np.ptp(label_column[:16].astype(int), axis=-1) > 0, rows)


def test_a_resumed_run_keeps_the_earlier_epochs(tmp_path, capsys):
    _train(tmp_path, max_epochs=2)
    capsys.readouterr()
    _train(tmp_path, max_epochs=4, resume_from=2)
    out = capsys.readouterr().out
    assert "epoch 1/4" not in out and "epoch 3/4" in out
    history = load_history(tmp_path / "progress.json")
    assert [r["epoch"] for r in history] == [1, 2, 3, 4]
