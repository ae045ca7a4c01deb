import json
import re
from pathlib import Path

import h5py
import numpy as np
import pytest

from dlka_monai.data import (
    BTCV_TEST_CASES,
    BTCV_TRAIN_CASES,
    btcv_datalist,
    load_datalist,
    pancreas_h5_datalist,
    split_validation,
)


def _case_number(path: str) -> int:
    return int(re.search(r"(\d{4})\.nii\.gz$", path).group(1))


@pytest.fixture
def btcv_root(tmp_path) -> Path:
    """A BTCV download with empty files: only the paths matter to the datalist."""
    training = tmp_path / "BTCV" / "RawData" / "Training"
    for sub in ("img", "label"):
        (training / sub).mkdir(parents=True)
    for case in range(1, 41):
        (training / "img" / f"img{case:04d}.nii.gz").touch()
        (training / "label" / f"label{case:04d}.nii.gz").touch()
    return tmp_path / "BTCV"


def _write_json(path: Path, **lists) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"name": "toy", **lists}))
    return path


def _entries(prefix: str, cases) -> list[dict[str, str]]:
    return [{"image": f"./imagesTr/{prefix}_{c}.nii.gz", "label": f"./labelsTr/{prefix}_{c}.nii.gz"} for c in cases]


def test_btcv_datalist(btcv_root):
    assert len(BTCV_TRAIN_CASES) == 18 and len(BTCV_TEST_CASES) == 12
    assert not set(BTCV_TRAIN_CASES) & set(BTCV_TEST_CASES)
    for dataset_dir in (btcv_root, btcv_root / "RawData", btcv_root / "RawData" / "Training"):
        lists = btcv_datalist(dataset_dir)
        assert set(lists) == {"training", "test"}
        for split, cases in (("training", BTCV_TRAIN_CASES), ("test", BTCV_TEST_CASES)):
            assert [_case_number(e["image"]) for e in lists[split]] == list(cases)
            assert [_case_number(e["label"]) for e in lists[split]] == list(cases)
            for e in lists[split]:
                assert Path(e["image"]).is_absolute() and Path(e["image"]).is_file()
                assert Path(e["label"]).parent.name == "label" and Path(e["label"]).is_file()


def test_btcv_missing_files(btcv_root, tmp_path):
    training = btcv_root / "RawData" / "Training"
    (training / "img" / "img0005.nii.gz").unlink()
    (training / "label" / "label0038.nii.gz").unlink()
    with pytest.raises(FileNotFoundError) as err:
        btcv_datalist(btcv_root)
    message = str(err.value)
    assert "2 file(s)" in message and "img0005.nii.gz" in message and "label0038.nii.gz" in message
    assert "\n" not in message
    with pytest.raises(FileNotFoundError, match="RawData/Training/img"):
        btcv_datalist(tmp_path / "nowhere")


def test_split_validation_by_fraction():
    training = [{"image": f"/data/img{c:04d}.nii.gz", "label": f"/data/label{c:04d}.nii.gz"} for c in BTCV_TRAIN_CASES]
    train, val = split_validation(training, val_fraction=0.2, seed=0)
    assert len(val) == 4 and len(train) == 14  # round(0.2 * 18)
    assert sorted(train + val, key=training.index) == training
    assert train == [e for e in training if e not in val] and val == [e for e in training if e in val]  # order kept
    assert split_validation(training, val_fraction=0.2, seed=0) == (train, val)
    assert any(split_validation(training, val_fraction=0.2, seed=s)[1] != val for s in range(1, 4))
    assert len(split_validation(training, val_fraction=0.01)[1]) == 1  # at least one case
    assert len(split_validation(training, val_fraction=0.99)[0]) == 1  # at least one training case left
    assert split_validation(training, val_fraction=0.0) == (training, [])
    assert split_validation(training[:1], val_fraction=0.5) == (training[:1], [])
    with pytest.raises(ValueError, match="val_fraction"):
        split_validation(training, val_fraction=1.0)


def test_split_validation_by_names():
    training = [{"image": f"/data/img{c:04d}.nii.gz", "label": f"/data/label{c:04d}.nii.gz"} for c in BTCV_TRAIN_CASES]
    train, val = split_validation(training, val_cases=["img0037", "img0040"])
    assert [_case_number(e["image"]) for e in val] == [37, 40]
    assert len(train) == 16 and not {id(e) for e in train} & {id(e) for e in val}
    assert split_validation(training, val_cases="img0005")[1] == training[:1]  # a single string is one name
    with pytest.raises(ValueError, match="img0099"):
        split_validation(training, val_cases=["img0037", "img0099"])


def test_load_datalist_btcv(btcv_root):
    lists = load_datalist(btcv_root, val_cases=["img0039", "img0040"], check=False)
    assert [len(lists[k]) for k in ("training", "validation", "test")] == [16, 2, 12]
    assert [_case_number(e["image"]) for e in lists["validation"]] == [39, 40]
    assert [_case_number(e["image"]) for e in lists["test"]] == list(BTCV_TEST_CASES)
    lists = load_datalist(btcv_root / "RawData", val_fraction=0.2, check=False)
    assert [len(lists[k]) for k in ("training", "validation", "test")] == [14, 4, 12]
    test_images = {e["image"] for e in lists["test"]}
    assert not test_images & {e["image"] for e in lists["training"] + lists["validation"]}


def test_load_datalist_json_without_validation(tmp_path):
    # the test list in the classic Decathlon form: plain image paths
    _write_json(tmp_path / "ds" / "dataset.json", training=_entries("a", range(5)), test=["./imagesTs/t_0.nii.gz"])
    lists = load_datalist(tmp_path / "ds", val_fraction=0.2, seed=0, check=False)
    assert [len(lists[k]) for k in ("training", "validation", "test")] == [4, 1, 1]
    assert lists["test"] == [{"image": str(tmp_path / "ds" / "imagesTs" / "t_0.nii.gz")}]
    for e in lists["training"] + lists["validation"]:
        assert Path(e["image"]).is_absolute() and Path(e["image"]).parent == tmp_path / "ds" / "imagesTr"
    # the same json given as datalist: paths relative to its folder, or to dataset_dir when given
    assert load_datalist(datalist=tmp_path / "ds" / "dataset.json", check=False) == lists
    moved = load_datalist(tmp_path / "data", datalist=tmp_path / "ds" / "dataset.json", check=False)
    assert moved["training"][0]["image"] == str(tmp_path / "data" / "imagesTr" / "a_0.nii.gz")
    # no test list, or an empty one
    _write_json(tmp_path / "nt.json", training=_entries("a", range(5)))
    assert load_datalist(datalist=tmp_path / "nt.json", check=False)["test"] == []
    _write_json(tmp_path / "et.json", training=_entries("a", range(5)), test=[])
    assert load_datalist(datalist=tmp_path / "et.json", check=False)["test"] == []


def test_load_datalist_json_with_validation(tmp_path):
    path = _write_json(
        tmp_path / "list.json",
        training=_entries("a", range(4)),
        validation=_entries("v", range(2)),
        test=_entries("t", [0]),
    )
    lists = load_datalist(datalist=path, check=False)
    assert [Path(e["image"]).name for e in lists["validation"]] == ["v_0.nii.gz", "v_1.nii.gz"]
    assert len(lists["training"]) == 4
    assert lists["test"] == [
        {"image": str(tmp_path / "imagesTr" / "t_0.nii.gz"), "label": str(tmp_path / "labelsTr" / "t_0.nii.gz")}
    ]
    with pytest.raises(ValueError, match="own 'validation' list"):
        load_datalist(datalist=path, val_cases=["a_0"], check=False)
    # a validation case that is also a test case is refused
    test = _entries("t", [0])
    leaky = _write_json(tmp_path / "leaky.json", training=_entries("a", range(4)), validation=test, test=test)
    with pytest.raises(ValueError, match="share 1 image"):
        load_datalist(datalist=leaky, check=False)
    with pytest.raises(ValueError, match="no 'training' list"):
        load_datalist(datalist=_write_json(tmp_path / "empty.json", test=_entries("t", [0])), check=False)


def test_load_datalist_demo_and_errors(tmp_path):
    lists = load_datalist(demo_dir=tmp_path / "demo", val_fraction=0.2)
    assert [len(lists[k]) for k in ("training", "validation", "test")] == [5, 1, 2]
    everything = lists["training"] + lists["validation"] + lists["test"]
    assert all(Path(e["image"]).is_file() and Path(e["label"]).is_file() for e in everything)
    assert len({e["image"] for e in everything}) == 8
    with pytest.raises(ValueError, match="demo_dir"):
        load_datalist(check=False)
    (tmp_path / "unknown").mkdir()
    with pytest.raises(ValueError, match="dataset.json.*RawData/Training"):
        load_datalist(tmp_path / "unknown", check=False)


def _write_h5(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f["image"] = np.zeros((4, 4, 4), np.float32)
        f["label"] = np.zeros((4, 4, 4), np.uint8)


@pytest.mark.parametrize("subfolder", ["", "data"])
def test_pancreas_h5_datalist(tmp_path, subfolder):
    (tmp_path / "Flods").mkdir()
    (tmp_path / "Flods" / "train1.list").write_text("PANCREAS_0001\nPANCREAS_0002.h5\n\n  PANCREAS_0004  \n")
    (tmp_path / "Flods" / "test1.list").write_text("PANCREAS_0003\n")
    for case in range(1, 5):
        _write_h5(tmp_path / subfolder / f"PANCREAS_{case:04d}.h5")
    lists = pancreas_h5_datalist(tmp_path, fold=1)
    expected = {"training": [1, 2, 4], "test": [3]}
    for split, cases in expected.items():
        paths = [str(tmp_path / subfolder / f"PANCREAS_{c:04d}.h5") for c in cases]
        assert lists[split] == [{"image": p, "label": p} for p in paths]
    with pytest.raises(FileNotFoundError, match="Flods/train0.list does not exist"):
        pancreas_h5_datalist(tmp_path, fold=0)
    (tmp_path / subfolder / "PANCREAS_0002.h5").unlink()
    (tmp_path / subfolder / "PANCREAS_0003.h5").unlink()
    with pytest.raises(FileNotFoundError, match="2 h5 file.*PANCREAS_0002.h5, PANCREAS_0003.h5"):
        pancreas_h5_datalist(tmp_path, fold=1)
