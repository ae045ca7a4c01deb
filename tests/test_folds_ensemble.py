# Copyright (c) dlka_monai contributors. Licensed under the Apache License, Version 2.0.
"""k-fold splits, fold ensembles (the mean of the models' softmax, with TTA composing) and the folds'
summary."""

import csv
import json
import random

import pytest
import torch
from monai.inferers import SlidingWindowInferer

from dlka_monai.data import InvalidInputError, load_datalist, split_folds
from dlka_monai.evaluation import case_metrics, summarize_folds
from dlka_monai.evaluation.metrics import METRICS
from dlka_monai.inference import EnsembleInferer, FlipTTAInferer, load_ensemble
from dlka_monai.networks import create_network
from dlka_monai.plan import network_plan
from dlka_monai.weights import save_model

from utils import TINY_3D


def _entries(n):
    return [{"image": f"/data/img{i:02d}.nii.gz", "label": f"/data/seg{i:02d}.nii.gz"} for i in range(n)]


def test_split_folds_deterministic_disjoint_by_case():
    training = _entries(23)
    folds = [split_folds(training, 5, k, seed=0) for k in range(5)]
    assert folds == [split_folds(training, 5, k, seed=0) for k in range(5)]  # deterministic
    validations = [[e["image"] for e in v] for _, v in folds]
    assert sorted(sum(validations, [])) == sorted(e["image"] for e in training)  # disjoint and covering
    assert sorted(len(v) for v in validations) == [4, 4, 5, 5, 5]
    for train, val in folds:
        assert not {e["image"] for e in train} & {e["image"] for e in val} and len(train) + len(val) == 23
    # the order of the datalist does not matter; another seed gives other folds
    shuffled = training[:]
    random.Random(1).shuffle(shuffled)
    assert [sorted(e["image"] for e in split_folds(shuffled, 5, k)[1]) for k in range(5)] == [sorted(v) for v in validations]
    assert [e["image"] for e in split_folds(training, 5, 0, seed=1)[1]] != validations[0]
    # entries of one case (e.g. the slices of a volume) stay together
    slices = [{"image": f"/npz/case{c}_slice{s:03d}.npz", "case": c} for c in range(6) for s in range(4)]
    for k in range(3):
        train, val = split_folds(slices, 3, k, case_of=lambda e: e["case"])
        assert len(val) == 8 and not {e["case"] for e in train} & {e["case"] for e in val}
    with pytest.raises(ValueError, match="fold must be in 0..4"):
        split_folds(training, 5, 5)
    with pytest.raises(ValueError, match="num_folds must be between 2 and the number of training cases \\(23\\)"):
        split_folds(training, 24, 0)


def test_load_datalist_folds_never_touch_test(tmp_path):
    meta = {
        "training": [{"image": f"imagesTr/c{i}.nii.gz", "label": f"labelsTr/c{i}.nii.gz"} for i in range(10)],
        "validation": [{"image": "imagesTr/v0.nii.gz", "label": "labelsTr/v0.nii.gz"}],
        "test": [f"imagesTs/t{i}.nii.gz" for i in range(3)],
    }
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    seen = []
    for k in range(5):
        lists = load_datalist(datalist=tmp_path / "dataset.json", fold=k, num_folds=5, check=False)
        assert len(lists["training"]) + len(lists["validation"]) == 11 and len(lists["test"]) == 3
        assert not any("imagesTs" in e["image"] for e in lists["training"] + lists["validation"])
        seen += [e["image"] for e in lists["validation"]]
    assert len(seen) == len(set(seen)) == 11  # the json's own validation case is pooled into the folds
    with pytest.raises(ValueError, match="val_cases and fold are exclusive"):
        load_datalist(datalist=tmp_path / "dataset.json", fold=0, val_cases=["c1"], check=False)


def _convs(n):
    torch.manual_seed(0)
    return [torch.nn.Conv3d(1, 3, 3, padding=1).eval() for _ in range(n)]


def test_ensemble_is_mean_of_probabilities():
    x = torch.randn(1, 1, 12, 20, 20)
    nets = _convs(3)
    window = SlidingWindowInferer(roi_size=(8, 16, 16), overlap=0.5, mode="gaussian")
    for inner in (window, FlipTTAInferer(window)):
        with torch.no_grad():
            expected = torch.stack([torch.softmax(inner(x, n), 1) for n in nets]).mean(0)
            ensemble = EnsembleInferer(inner)(x, torch.nn.ModuleList(nets))  # as a config passes its network
            given = EnsembleInferer(inner, networks=nets)(x)
            logged = EnsembleInferer(inner, log_output=True)(x, nets)
        assert ensemble.shape == (1, 3, 12, 20, 20)
        assert torch.allclose(ensemble, expected, atol=1e-6) and torch.allclose(given, expected, atol=1e-6)
        assert torch.allclose(ensemble.sum(1), torch.ones(1, 12, 20, 20), atol=1e-5)
        # a config's softmax on the log output gives back the mean probability
        assert torch.allclose(torch.softmax(logged, 1), expected, atol=1e-6)
    # the mean differs from each model's own probabilities: the models do disagree
    single = torch.softmax(window(x, nets[0]), 1)
    assert not torch.allclose(single, ensemble, atol=1e-3)
    with pytest.raises(ValueError, match="2 inferers for 3 networks"):
        EnsembleInferer([window, window])(x, nets)


def test_load_ensemble_of_fold_models(tmp_path):
    x = torch.randn(1, 1, *TINY_3D["img_size"])
    nets = []
    for k in range(2):
        torch.manual_seed(k)
        net = create_network("dlka3d_synapse", out_channels=3, **TINY_3D).eval()
        plan = network_plan(net, class_names={0: "background", 1: "a", 2: "b"})
        (tmp_path / f"fold_{k}").mkdir()
        save_model(tmp_path / f"fold_{k}" / "model.pt", net, plan)
        nets.append(net)
    loaded, plan = load_ensemble(str(tmp_path / "fold_*" / "model.pt"))
    assert len(loaded) == 2 and plan["network"]["out_channels"] == 3
    window = SlidingWindowInferer(roi_size=TINY_3D["img_size"])
    with torch.no_grad():
        expected = (torch.softmax(nets[0](x), 1) + torch.softmax(nets[1](x), 1)) / 2
        assert torch.allclose(EnsembleInferer(window)(x, loaded), expected, atol=1e-5)
    other = network_plan(nets[1], class_names={0: "background", 1: "a", 2: "b"}, pixdim=[1.0, 1.0, 1.0])
    save_model(tmp_path / "fold_1" / "model.pt", nets[1], other)
    with pytest.raises(InvalidInputError, match=r"fold_1/model.pt: its plan differs from .*fold_0/model.pt's in pixdim"):
        load_ensemble(str(tmp_path / "fold_*" / "model.pt"))
    with pytest.raises(InvalidInputError, match="no model file matches"):
        load_ensemble(str(tmp_path / "nothing_*.pt"))


def _cube(lo, hi, value=1, size=12):
    t = torch.zeros(1, size, size, size, dtype=torch.long)
    t[0, lo:hi, lo:hi, lo:hi] = value
    return t


def test_summarize_folds(tmp_path):
    label = _cube(2, 6)  # 64 voxels
    perfect, half = _cube(2, 6), _cube(2, 4)  # Dice 1, and 8 of 64 voxels: 2 * 8 / 72
    rows = lambda case, pred: [{"case": case, **r} for r in case_metrics(pred, label, 2, (1.0, 1.0, 1.0))]  # noqa: E731
    fold0 = rows("a", perfect) + rows("b", half)
    fold1 = rows("c", perfect)
    # fold 1 from a metrics.csv as MetricsWriter writes it
    with open(tmp_path / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["case", "class", "name", *METRICS])
        writer.writeheader()
        writer.writerows({"name": "organ", **r} for r in fold1)
    summary = summarize_folds({0: fold0, 1: tmp_path / "metrics.csv"}, {0: "background", 1: "organ"}, tmp_path / "s" / "summary.json")
    d = 16 / 72
    assert summary["folds"]["0"]["mean_dice"] == pytest.approx((1 + d) / 2) and summary["folds"]["1"]["mean_dice"] == 1.0
    assert summary["folds"]["0"]["cases"] == ["a", "b"] and summary["num_folds"] == 2
    assert summary["mean_dice"] == pytest.approx(((1 + d) / 2 + 1) / 2)
    assert summary["cross_validation"]["all_classes"]["dice"]["mean"] == pytest.approx((2 + d) / 3)
    assert json.loads((tmp_path / "s" / "summary.json").read_text())["mean_dice"] == pytest.approx(summary["mean_dice"])
    with pytest.raises(ValueError, match="case a is in the validation of folds 0 and 1"):
        summarize_folds({0: fold0, 1: rows("a", perfect)}, {0: "background", 1: "organ"})


def test_ensemble_in_a_supervised_evaluator():
    """The wiring of a bundle config: the evaluator's network is the ModuleList of the folds, its inferer the
    ensemble with log output, and its postprocessing the single-model softmax, unchanged."""
    from monai.data import DataLoader, Dataset
    from monai.engines import SupervisedEvaluator
    from monai.transforms import Activationsd

    nets = _convs(2)
    window = SlidingWindowInferer(roi_size=(8, 16, 16))
    data = [{"image": torch.randn(1, 12, 20, 20), "label": torch.zeros(1, 12, 20, 20)}]
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader(Dataset(data), batch_size=1),
        network=torch.nn.ModuleList(nets),
        inferer=EnsembleInferer(window, log_output=True),
        postprocessing=Activationsd("pred", softmax=True),
    )
    evaluator.run()
    (out,) = evaluator.state.output
    with torch.no_grad():
        expected = sum(torch.softmax(window(data[0]["image"][None], n), 1) for n in nets)[0] / 2
    assert torch.allclose(out["pred"], expected, atol=1e-5)
