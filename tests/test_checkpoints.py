"""Crash-safe checkpoints, resuming, and the non-finite loss guard, on a small real MONAI trainer."""

import errno
import os
import random
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Events
from monai.engines import SupervisedTrainer
from monai.transforms import Compose, RandFlipd, RandGaussianNoised

from utils import TINY_TRAIN_ARGS as TINY
from utils import run
from dlka_monai.data import InvalidInputError
from dlka_monai.training import NonFiniteLossGuard, TrainingCheckpointer, latest_checkpoint
from dlka_monai.weights import atomic_save

ROOT = Path(__file__).resolve().parents[1]
TRAIN = str(ROOT / "configs" / "train.json")
LOGGING = str(ROOT / "configs" / "logging.conf")


class NaNLoss(torch.nn.Module):
    """MSE, but NaN on the given (1-based) calls: a diverging step on demand."""

    def __init__(self, nan_calls):
        super().__init__()
        self.nan_calls, self.calls = set(nan_calls), 0

    def forward(self, pred, target):
        self.calls += 1
        loss = torch.nn.functional.mse_loss(pred, target)
        return loss * float("nan") if self.calls in self.nan_calls else loss


class _Data(torch.utils.data.Dataset):
    def __init__(self, transform=None):
        self.transform = transform

    def __len__(self):
        return 4

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        item = {"image": torch.randn(1, 4, 4, 4, generator=g), "label": torch.randn(1, 4, 4, 4, generator=g)}
        return self.transform(item) if self.transform else item


def _trainer(loss, epochs=3, transform=None):
    net = torch.nn.Conv3d(1, 1, 3, padding=1)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    loader = torch.utils.data.DataLoader(_Data(transform), batch_size=2)
    trainer = SupervisedTrainer(
        device=torch.device("cpu"), max_epochs=epochs, train_data_loader=loader, network=net, optimizer=optimizer,
        loss_function=loss,
    )
    return trainer, net, optimizer


def _snapshot(net, optimizer):
    weights = [p.detach().clone() for p in net.parameters()]
    momenta = [optimizer.state[p]["momentum_buffer"].clone() for p in net.parameters() if p in optimizer.state]
    return weights, momenta


def test_atomic_save_never_leaves_half_a_file(tmp_path):
    path = tmp_path / "ckpt.pt"
    atomic_save({"w": torch.ones(3)}, path)
    with pytest.raises(Exception):
        atomic_save({"w": torch.zeros(3), "bad": lambda: 0}, path)  # fails while writing
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


@pytest.mark.parametrize("failure", ["open", "fsync", "no_o_directory"])
def test_atomic_save_where_folders_cannot_be_synced(failure, tmp_path, monkeypatch):
    """Windows cannot open a folder (PermissionError) and has no O_DIRECTORY; some file systems refuse
    to fsync one (EINVAL). The file is written and renamed into place all the same."""
    real_open, real_fsync = os.open, os.fsync
    tried = []

    def open_(path, flags, *args, **kwargs):
        if os.path.isdir(path):
            tried.append(Path(path))
            if failure == "open":
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    def fsync(fd):
        if failure == "fsync" and stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_fsync(fd)

    monkeypatch.setattr(os, "open", open_)
    monkeypatch.setattr(os, "fsync", fsync)
    if failure == "no_o_directory":
        monkeypatch.delattr(os, "O_DIRECTORY", raising=False)
    atomic_save({"w": torch.arange(3)}, tmp_path / "ckpt.pt")
    assert tried == [tmp_path]
    assert torch.equal(torch.load(tmp_path / "ckpt.pt", weights_only=True)["w"], torch.arange(3))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def test_latest_checkpoint_skips_half_written_and_temporary_files(tmp_path):
    atomic_save({"epoch": 2}, tmp_path / "checkpoint_epoch=2.pt")
    atomic_save({"epoch": 3}, tmp_path / "checkpoint_epoch=3.pt")
    # what a non-atomic writer killed mid-save leaves, and a temporary file of atomic_save
    full = (tmp_path / "checkpoint_epoch=3.pt").read_bytes()
    (tmp_path / "checkpoint_epoch=4.pt").write_bytes(full[: len(full) // 2])
    (tmp_path / ".checkpoint_epoch=5.pt.123.tmp").write_bytes(full)
    assert latest_checkpoint(tmp_path).endswith("checkpoint_epoch=3.pt")


def test_checkpoint_holds_the_whole_training_state_and_resumes_it(tmp_path):
    transform = Compose([RandFlipd(["image", "label"], prob=0.5, spatial_axis=0), RandGaussianNoised("image", prob=1.0)])
    transform.set_random_state(seed=1)
    trainer, net, optimizer = _trainer(torch.nn.MSELoss(), epochs=2, transform=transform)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda _: scheduler.step())
    TrainingCheckpointer(tmp_path, net, optimizer, scheduler, keep=1).attach(trainer)
    trainer.run()
    # epoch 1 deleted after 2 was written; no validation ran, so model.pt is the last epoch's model
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_epoch=2.pt", "model.pt"]
    ckpt = torch.load(tmp_path / "checkpoint_epoch=2.pt", weights_only=True)
    assert set(ckpt) == {"model", "optimizer", "lr_scheduler", "scaler", "trainer", "best", "rng", "plan"}
    assert ckpt["trainer"] == {"epoch": 2, "iteration": 4, "epoch_length": 2}
    assert set(ckpt["rng"]) >= {"python", "numpy", "torch", "transforms"} and len(ckpt["rng"]) >= 4
    assert len(ckpt["rng"]["transforms"]) >= 2
    # what epoch 3 draws when training goes on without a break ...
    after_epoch_2 = (torch.rand(3), np.random.rand(3), random.random(), [t.R.rand() for t in transform.transforms])

    # ... is what a fresh process resuming from the checkpoint draws
    torch.manual_seed(99), np.random.seed(99), random.seed(99)
    transform2 = Compose([RandFlipd(["image", "label"], prob=0.5, spatial_axis=0), RandGaussianNoised("image", prob=1.0)])
    trainer2, net2, optimizer2 = _trainer(torch.nn.MSELoss(), epochs=3, transform=transform2)
    scheduler2 = torch.optim.lr_scheduler.StepLR(optimizer2, step_size=1, gamma=0.5)
    checkpointer = TrainingCheckpointer(tmp_path, net2, optimizer2, scheduler2, resume=True)
    checkpointer.load(trainer2)
    assert trainer2.state.epoch == 2 and trainer2.state.iteration == 4
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), net2.state_dict().values()))
    assert optimizer2.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"] == 0.025
    assert scheduler2.state_dict() == scheduler.state_dict()
    resumed = (torch.rand(3), np.random.rand(3), random.random(), [t.R.rand() for t in transform2.transforms])
    assert torch.equal(after_epoch_2[0], resumed[0]) and np.array_equal(after_epoch_2[1], resumed[1])
    assert after_epoch_2[2:] == resumed[2:]


def test_resume_refuses_a_checkpoint_with_a_pickled_callable(tmp_path):
    trainer, net, optimizer = _trainer(torch.nn.MSELoss())
    torch.save({"model": net.state_dict(), "hook": os.system}, tmp_path / "checkpoint_epoch=1.pt")
    TrainingCheckpointer(tmp_path, net, optimizer, resume=True).attach(trainer)
    with pytest.raises(InvalidInputError, match=r"contains pickled Python objects \(posix.system\)"):
        trainer.run()


def test_guard_stops_at_a_nan_loss_before_the_step(tmp_path):
    trainer, net, optimizer = _trainer(NaNLoss({4}))  # epoch 2, second batch
    NonFiniteLossGuard("stop").attach(trainer)
    TrainingCheckpointer(tmp_path, net, optimizer).attach(trainer)
    states = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda _: states.append(_snapshot(net, optimizer)[0]))
    with pytest.raises(FloatingPointError, match=r"loss nan at epoch 2, iteration 4 \(batch 2 of 2\): training stopped"):
        trainer.run()
    assert len(states) == 3 and all(torch.equal(a, b) for a, b in zip(states[-1], net.parameters()))
    # the epoch-1 checkpoint is the last good state; nothing was saved after it
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint_epoch=1.pt"]


def test_guard_skips_non_finite_steps_without_touching_weights_or_momentum():
    trainer, net, optimizer = _trainer(NaNLoss({3, 4}))
    NonFiniteLossGuard("skip").attach(trainer)
    states = {}
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: states.__setitem__(e.state.iteration, _snapshot(net, optimizer)))
    trainer.run()
    assert trainer.state.epoch == 3
    for a, b in zip(states[2][0] + states[2][1], states[4][0] + states[4][1]):
        assert torch.equal(a, b)  # iterations 3 and 4 changed nothing
    assert not all(torch.equal(a, b) for a, b in zip(states[4][0], states[5][0]))  # iteration 5 trained again
    assert all(torch.isfinite(p).all() for p in net.parameters())


def test_guard_gives_up_after_too_many_skips():
    trainer, _, _ = _trainer(NaNLoss(range(2, 100)))
    NonFiniteLossGuard("skip", max_skips=2).attach(trainer)
    with pytest.raises(FloatingPointError, match="at epoch 2, iteration 4 .* after 2 skipped steps in a row"):
        trainer.run()


def test_nan_in_bundle_training_stops_it_and_keeps_the_last_checkpoint(tmp_path, demo_dataset):
    """The train config's guard, in-process: a loss that turns NaN in epoch 2."""
    from monai.bundle import ConfigWorkflow
    from monai.losses import DeepSupervisionLoss, DiceCELoss

    class NaNFromCall(DeepSupervisionLoss):
        calls = 0

        def forward(self, input, target):
            NaNFromCall.calls += 1
            loss = super().forward(input, target)
            return loss * float("nan") if NaNFromCall.calls > 4 else loss

    workflow = ConfigWorkflow(
        config_file=TRAIN, workflow_type="train", bundle_root=str(tmp_path), demo_dir=str(demo_dataset),
        max_epochs=3, val_interval=1, loss=NaNFromCall(DiceCELoss(to_onehot_y=True, softmax=True)),
        **{"network_def#feature_size": 4, "network_def#depths": [1, 1, 1, 1], "validate#inferer#overlap": 0.25},
    )
    workflow.initialize()
    with pytest.raises(Exception) as err:
        workflow.run()
    cause = err.value
    while cause is not None and not isinstance(cause, FloatingPointError):  # the config parser wraps it
        cause = cause.__cause__
    assert cause is not None and "at epoch 2, iteration 5 (batch 1 of 4)" in str(cause), err.value
    models = tmp_path / "models"
    assert sorted(p.name for p in models.iterdir()) == ["checkpoint_epoch=1.pt", "model.pt"]
    ckpt = torch.load(models / "checkpoint_epoch=1.pt", weights_only=True)
    assert ckpt["trainer"]["epoch"] == 1 and all(torch.isfinite(v).all() for v in ckpt["model"].values())


def _epochs(models: Path) -> list[int]:
    return sorted(int(p.name.split("=")[1][:-3]) for p in models.glob("checkpoint_epoch=*.pt"))


@pytest.mark.slow
def test_training_killed_at_random_moments_resumes_and_finishes(tmp_path, demo_dataset):
    """SIGKILL mid-epoch (and mid-save, when it falls there) several times; each resume starts at the last
    checkpoint, and the run ends with the full number of epochs, loadable checkpoints and the very weights
    of a run never interrupted (the checkpoints hold the random generators; one thread, so that the
    floating-point sums are the same in every run)."""
    max_epochs, kills = 8, 3
    rng = random.Random(0)
    models = tmp_path / "models"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}

    def command(root):
        cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", TRAIN, "--logging_file", LOGGING]
        cmd += ["--bundle_root", str(root), "--demo_dir", str(demo_dataset), "--max_epochs", str(max_epochs)]
        return cmd + ["--val_interval", "2", *TINY]

    cmd = command(tmp_path)
    killed, finished, attempt = 0, False, 0
    while not finished:
        start = _epochs(models)[-1] if attempt else 0
        log = tmp_path / f"run{attempt}.log"
        with open(log, "w") as out:
            proc = subprocess.Popen(cmd + (["--resume", "true"] if attempt else []), cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)
            if killed < kills:
                # wait for a checkpoint newer than the one this run resumed from, then kill at a random moment
                deadline = time.time() + 600
                while not (_epochs(models) and _epochs(models)[-1] > start) and proc.poll() is None and time.time() < deadline:
                    time.sleep(0.05)
                time.sleep(rng.uniform(0.0, 1.5))
                if proc.poll() is None:
                    proc.send_signal(signal.SIGKILL)
                    killed += 1
            proc.wait(timeout=900)
        text = log.read_text(encoding="utf-8", errors="replace")
        assert proc.returncode in (0, -signal.SIGKILL), text[-3000:]
        finished = proc.returncode == 0
        if attempt:
            # it went on from the newest checkpoint: only the work since then was lost
            assert f"checkpoint_epoch={start}.pt at epoch {start}," in text, text[-3000:]
        assert _epochs(models), "a killed run left no complete checkpoint"
        for epoch in _epochs(models):
            torch.load(models / f"checkpoint_epoch={epoch}.pt", weights_only=True)
        attempt += 1
    assert killed >= 2, f"only {killed} kill(s) landed before training finished"
    assert _epochs(models)[-1] == max_epochs
    final = torch.load(models / f"checkpoint_epoch={max_epochs}.pt", weights_only=True)
    assert final["trainer"]["epoch"] == max_epochs
    assert final["trainer"]["iteration"] == max_epochs * final["trainer"]["epoch_length"]
    torch.load(models / "model.pt", weights_only=True)

    whole = tmp_path / "uninterrupted"
    whole.mkdir()
    run(command(whole), cwd=whole, env=env)
    reference = torch.load(whole / "models" / f"checkpoint_epoch={max_epochs}.pt", weights_only=True)
    assert final["model"].keys() == reference["model"].keys()
    differ = [k for k, v in reference["model"].items() if not torch.equal(final["model"][k], v)]
    assert not differ, f"{len(differ)} of {len(reference['model'])} tensors differ from the uninterrupted run's, e.g. {differ[:3]}"


def test_resume_refuses_the_checkpoint_of_another_network(tmp_path):
    trainer, net, optimizer = _trainer(torch.nn.MSELoss())
    other = torch.nn.Conv3d(1, 2, 3, padding=1)
    atomic_save({"model": other.state_dict(), "trainer": {"epoch": 1}}, tmp_path / "checkpoint_epoch=1.pt")
    TrainingCheckpointer(tmp_path, net, optimizer, resume=True).attach(trainer)
    with pytest.raises(InvalidInputError, match=r"checkpoint_epoch=1.pt: holds the weights of another network, not of the configured Conv3d"):
        trainer.run()
