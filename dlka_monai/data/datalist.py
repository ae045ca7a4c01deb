# Copyright (c) dlka_monai contributors. Licensed under the Apache License, Version 2.0.
"""Datalists (lists of ``{"image": path, "label": path}`` dicts) for the D-LKA datasets: the Synapse/BTCV
raw layout with the TransUNet train/test split, Decathlon/MONAI json files, the synthetic demo dataset,
and the authors' preprocessed NIH Pancreas h5 files."""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from monai.config import PathLike
from monai.data import load_decathlon_datalist

from dlka_monai.data.readers import NIFTI_SUFFIXES
from dlka_monai.data.validation import InvalidInputError, check_datalist, read_json_object

__all__ = [
    "inference_datalist",
    "BTCV_TRAIN_CASES",
    "BTCV_TEST_CASES",
    "btcv_datalist",
    "split_validation",
    "split_folds",
    "load_datalist",
    "pancreas_h5_datalist",
]

BTCV_TRAIN_CASES = (5, 6, 7, 9, 10, 21, 23, 24, 26, 27, 28, 30, 31, 33, 34, 37, 39, 40)
"""The 18 Synapse (BTCV) training cases of the TransUNet split, used by D-LKA Net."""
BTCV_TEST_CASES = (1, 2, 3, 4, 8, 22, 25, 29, 32, 35, 36, 38)
"""The 12 Synapse (BTCV) test cases of the TransUNet split."""


def _btcv_training_dir(dataset_dir: PathLike) -> Path | None:
    """The ``RawData/Training`` folder of a BTCV download, given it or one of its parents; None if absent."""
    root = Path(dataset_dir)
    for candidate in (root / "RawData" / "Training", root / "Training", root):
        if (candidate / "img").is_dir():
            return candidate
    return None


def btcv_datalist(dataset_dir: PathLike) -> dict[str, list[dict[str, str]]]:
    """The Synapse (BTCV) multi-organ datalist of the TransUNet split: 18 training and 12 test cases, all
    from the labelled ``RawData/Training`` set.

    Args:
        dataset_dir: the BTCV folder holding ``RawData/Training/img/img00NN.nii.gz`` and
            ``RawData/Training/label/label00NN.nii.gz``, or its ``RawData`` or ``RawData/Training`` folder.

    Returns:
        ``{"training": [...], "test": [...]}``, lists of ``{"image", "label"}`` dicts of absolute paths.

    Raises:
        FileNotFoundError: when the layout is not there or any of its 60 files is missing (all are named).
    """
    training_dir = _btcv_training_dir(dataset_dir)
    if training_dir is None:
        raise FileNotFoundError(
            f"no BTCV raw layout in {dataset_dir}: expected RawData/Training/img/img00NN.nii.gz "
            "(the folder given may also be RawData or RawData/Training)."
        )
    training_dir = Path(os.path.abspath(training_dir))

    def entries(cases: Sequence[int]) -> list[dict[str, str]]:
        return [
            {
                "image": str(training_dir / "img" / f"img{case:04d}.nii.gz"),
                "label": str(training_dir / "label" / f"label{case:04d}.nii.gz"),
            }
            for case in cases
        ]

    datalist = {"training": entries(BTCV_TRAIN_CASES), "test": entries(BTCV_TEST_CASES)}
    missing = [path for split in datalist.values() for e in split for path in e.values() if not os.path.isfile(path)]
    if missing:
        raise FileNotFoundError(f"the BTCV dataset lacks {len(missing)} file(s): {', '.join(missing)}.")
    return datalist


def _image_paths(entry: dict) -> tuple[str, ...]:
    """The image path(s) of a datalist entry (a multi-channel entry lists several)."""
    image = entry["image"]
    return tuple(str(p) for p in image) if isinstance(image, (list, tuple)) else (str(image),)


def split_validation(
    training: Sequence[dict],
    val_fraction: float = 0.2,
    val_cases: Sequence[str] | str | None = None,
    seed: int = 0,
) -> tuple[list[dict], list[dict]]:
    """Carve a validation list out of a training list (never out of test data: only ``training`` is seen).

    Args:
        training: datalist entries with an ``"image"`` path.
        val_fraction: used when ``val_cases`` is None: the fraction of cases drawn at random (with ``seed``)
            for validation, rounded, at least one when it is positive and there are two or more cases, and
            at most all but one.
        val_cases: if given, the validation cases are those whose image file name contains one of these
            strings (e.g. ``["img0035", "img0036"]``); every string must match some case.
        seed: seed of the random draw.

    Returns:
        ``(training, validation)``, both in the original order.
    """
    names = [" ".join(os.path.basename(p) for p in _image_paths(e)) for e in training]
    if val_cases is not None:
        patterns = (val_cases,) if isinstance(val_cases, str) else tuple(val_cases)
        unmatched = [p for p in patterns if not any(p in name for name in names)]
        if unmatched:
            raise ValueError(f"val_cases {unmatched} match no training image file name.")
        is_val = [any(p in name for p in patterns) for name in names]
    else:
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}.")
        n = len(training)
        n_val = 0 if val_fraction == 0 or n < 2 else min(n - 1, max(1, round(val_fraction * n)))
        chosen = set(np.random.default_rng(seed).permutation(n)[:n_val].tolist())
        is_val = [i in chosen for i in range(n)]
    train = [e for e, v in zip(training, is_val) if not v]
    validation = [e for e, v in zip(training, is_val) if v]
    return train, validation


def split_folds(
    training: Sequence[dict],
    num_folds: int = 5,
    fold: int = 0,
    seed: int = 0,
    case_of: Callable[[dict], str] | None = None,
) -> tuple[list[dict], list[dict]]:
    """Fold ``fold`` of a ``num_folds``-fold cross-validation of a training list (only ``training`` is seen,
    so test cases never enter a fold), as nnU-Net's 5-fold split: the cases are shuffled with ``seed`` and
    dealt into ``num_folds`` groups of sizes differing by at most one; fold ``k`` validates on group ``k``.

    The split is by case: entries of the same case (``case_of``) are always in the same group. It depends
    only on the set of cases and ``seed``, not on the order of ``training``, so the folds stay the same
    when a datalist is reordered and the ``num_folds`` validation lists are disjoint and cover every case.

    Args:
        training: datalist entries with an ``"image"`` path (or list of paths).
        num_folds: number of folds, at least 2 and at most the number of cases.
        fold: the fold, ``0 .. num_folds - 1``.
        seed: seed of the shuffle.
        case_of: the case of an entry; default: its image file path(s), so each entry is a case.

    Returns:
        ``(training, validation)``, both in the original order.
    """
    case_of = case_of or (lambda e: " ".join(os.path.normpath(p) for p in _image_paths(e)))
    cases = sorted({case_of(e) for e in training})
    if num_folds < 2 or num_folds > len(cases):
        raise ValueError(f"num_folds must be between 2 and the number of training cases ({len(cases)}), got {num_folds}.")
    if not 0 <= fold < num_folds:
        raise ValueError(f"fold must be in 0..{num_folds - 1}, got {fold}.")
    order = np.random.default_rng(seed).permutation(len(cases))
    held_out = {cases[i] for i in np.array_split(order, num_folds)[fold].tolist()}
    train = [e for e in training if case_of(e) not in held_out]
    validation = [e for e in training if case_of(e) in held_out]
    return train, validation


def _decathlon_datalist(
    json_path: Path, base_dir: PathLike, val_fraction: float, val_cases: Sequence[str] | str | None, seed: int
) -> dict[str, list[dict]]:
    keys = read_json_object(json_path, "datalist file")
    base_dir = os.path.abspath(base_dir)

    def load(key: str) -> list[dict]:
        # load_decathlon_datalist cannot take an empty "test" list
        return load_decathlon_datalist(json_path, True, key, base_dir) if keys.get(key) else []

    if "training" not in keys:
        raise ValueError(f"datalist {json_path} has no 'training' list.")
    training = load("training")
    if "validation" in keys:
        if val_cases is not None:
            raise ValueError(f"val_cases is given but datalist {json_path} has its own 'validation' list.")
        validation = load("validation")
    else:
        training, validation = split_validation(training, val_fraction, val_cases, seed)
    return {"training": training, "validation": validation, "test": load("test")}


def _carve_validation(lists: dict, val_fraction: float, val_cases, seed: int) -> dict[str, list[dict]]:
    training, validation = split_validation(lists["training"], val_fraction, val_cases, seed)
    return {"training": training, "validation": validation, "test": lists["test"]}


def load_datalist(
    dataset_dir: PathLike | None = None,
    datalist: PathLike | None = None,
    val_fraction: float = 0.2,
    val_cases: Sequence[str] | str | None = None,
    seed: int = 0,
    demo_dir: PathLike | None = None,
    h5_fold: int | None = None,
    label_values: Sequence[int] | None = None,
    check: bool = True,
    fold: int | None = None,
    num_folds: int = 5,
) -> dict[str, list[dict]]:
    """The training, validation and test datalists of a dataset, whichever layout it is in.

    In order of precedence:

    - ``h5_fold``: the NIH Pancreas h5 files in ``dataset_dir`` with that fold's lists
      (:func:`pancreas_h5_datalist`);
    - ``datalist``: a Decathlon/MONAI datalist json, read with ``monai.data.load_decathlon_datalist``
      (relative paths are relative to ``dataset_dir``, or to the json's folder when that is None);
    - ``dataset_dir`` holding a ``dataset.json``: the same, relative to ``dataset_dir``;
    - ``dataset_dir`` in the BTCV raw layout: :func:`btcv_datalist`;
    - neither given: the synthetic demo dataset, generated into ``demo_dir`` if not already there.

    A json without a ``validation`` list, and BTCV, get one carved out of the training list with
    :func:`split_validation`; a json without a ``test`` list gets an empty one.

    Args:
        dataset_dir: dataset folder.
        datalist: Decathlon/MONAI datalist json file.
        val_fraction: see :func:`split_validation`.
        val_cases: see :func:`split_validation`; not allowed with a json that has a validation list.
        seed: see :func:`split_validation`.
        demo_dir: where to generate the demo dataset; required when neither of the above is given.
        h5_fold: cross-validation fold of the NIH Pancreas h5 layout.
        label_values: the label values the configured classes use (e.g. ``range(14)``), checked in every
            training and validation label map; None not to check them.
        check: check the training and validation images and label maps with
            :func:`dlka_monai.data.check_datalist` before any training starts.
        fold: if given, the training and validation lists are fold ``fold`` of a ``num_folds``-fold
            cross-validation (:func:`split_folds` with ``seed``) of all the labelled cases (the training list
            and a json's own validation list together); ``val_fraction`` is then unused, ``val_cases`` not allowed.
        num_folds: see ``fold``.

    Returns:
        ``{"training", "validation", "test"}`` lists of dicts with absolute paths; the validation and
        test lists never share an image.

    Raises:
        InvalidInputError: an image or label map of the training or validation list is unusable.
    """
    if fold is not None and val_cases is not None:
        raise ValueError("val_cases and fold are exclusive: a fold's validation cases are drawn by split_folds.")
    if datalist is None and dataset_dir is not None and not Path(dataset_dir).is_dir():
        raise InvalidInputError(f"{dataset_dir}: no such dataset folder.")
    if h5_fold is not None:
        if dataset_dir is None:
            raise ValueError("h5_fold needs dataset_dir, the folder of the NIH Pancreas h5 files and Flods/.")
        result = _carve_validation(pancreas_h5_datalist(dataset_dir, h5_fold), val_fraction, val_cases, seed)
    elif datalist is not None:
        json_path = Path(datalist)
        result = _decathlon_datalist(
            json_path, json_path.parent if dataset_dir is None else dataset_dir, val_fraction, val_cases, seed
        )
    elif dataset_dir is not None and (Path(dataset_dir) / "dataset.json").is_file():
        result = _decathlon_datalist(Path(dataset_dir) / "dataset.json", dataset_dir, val_fraction, val_cases, seed)
    elif dataset_dir is not None and _btcv_training_dir(dataset_dir) is not None:
        result = _carve_validation(btcv_datalist(dataset_dir), val_fraction, val_cases, seed)
    elif dataset_dir is None:
        if demo_dir is None:
            raise ValueError("load_datalist needs dataset_dir, datalist, or demo_dir to generate the demo dataset in.")
        # imported here, not at the top, for the reason given in dlka_monai/data/__init__.py
        from dlka_monai.data.demo import generate_demo_dataset

        json_path = generate_demo_dataset(demo_dir)
        result = _decathlon_datalist(json_path, json_path.parent, val_fraction, val_cases, seed)
    else:
        raise ValueError(
            f"unrecognised dataset layout in {dataset_dir}: expected a Decathlon/MONAI dataset.json in it, "
            "or the BTCV raw layout (RawData/Training/img/img00NN.nii.gz and label/label00NN.nii.gz, "
            "the folder given may also be RawData or RawData/Training), or pass datalist=<json file>."
        )
    if fold is not None:
        training, validation = split_folds(result["training"] + result["validation"], num_folds, fold, seed)
        result = {"training": training, "validation": validation, "test": result["test"]}
    test_images = {os.path.normpath(p) for e in result["test"] for p in _image_paths(e)}
    leaked = sorted({os.path.normpath(p) for e in result["validation"] for p in _image_paths(e)} & test_images)
    if leaked:
        raise ValueError(f"validation and test lists share {len(leaked)} image(s): {', '.join(leaked)}.")
    if check:
        check_datalist(result["training"] + result["validation"], label_values)
    return result


def pancreas_h5_datalist(dataset_dir: PathLike, fold: int = 0) -> dict[str, list[dict[str, str]]]:
    """The NIH Pancreas datalist of one fold of the D-LKA authors' preprocessed h5 files.

    Args:
        dataset_dir: folder with the fold lists ``Flods/train{fold}.list`` and ``Flods/test{fold}.list``
            (one case per line, ``PANCREAS_0001`` or ``PANCREAS_0001.h5``) and the ``PANCREAS_00NN.h5``
            files, directly in it or in its ``data`` subfolder.
        fold: cross-validation fold.

    Returns:
        ``{"training": [...], "test": [...]}``, lists of ``{"image", "label"}`` dicts, both the absolute
        path of the case's h5 file (read them with ``LoadPancreasH5d``).

    Raises:
        FileNotFoundError: when a fold list or any listed h5 file is missing (all are named).
    """
    root = Path(os.path.abspath(dataset_dir))
    missing: list[str] = []

    def entries(split: str) -> list[dict[str, str]]:
        list_path = root / "Flods" / f"{split}{fold}.list"
        if not list_path.is_file():
            raise FileNotFoundError(f"NIH Pancreas fold list {list_path} does not exist.")
        result = []
        for line in list_path.read_text(encoding="utf-8").splitlines():
            name = line.strip()
            if not name:
                continue
            file_name = name if name.endswith(".h5") else f"{name}.h5"
            found = next((p for p in (root / file_name, root / "data" / file_name) if p.is_file()), None)
            if found is None:
                missing.append(file_name)
            else:
                result.append({"image": str(found), "label": str(found)})
        return result

    datalist = {"training": entries("train"), "test": entries("test")}
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} h5 file(s) of fold {fold} are neither in {root} nor in {root / 'data'}: "
            f"{', '.join(missing)}."
        )
    return datalist


def inference_datalist(
    input: PathLike | None = None,
    dataset_dir: PathLike | None = None,
    datalist: PathLike | None = None,
    split: str = "test",
    series_uid: str | None = None,
    check: bool = True,
    fold: int | None = None,
    num_folds: int = 5,
) -> list[dict[str, str]]:
    """The images to segment, as ``[{"image": path}, ...]`` (other keys of datalist entries are kept).

    Args:
        input: a NIfTI (or other SimpleITK-readable) file, a folder of NIfTI files, a DICOM series
            folder (a folder without NIfTI files), or a glob pattern of files.
        dataset_dir, datalist: used when ``input`` is None: the ``split`` list of :func:`load_datalist`.
        split: ``"test"``, ``"validation"`` or ``"training"``.
        series_uid: the DICOM series to read from a folder holding several.
        check: check every image with :func:`dlka_monai.data.check_image` first.
        fold, num_folds: the cross-validation fold whose ``split`` list is wanted (see :func:`load_datalist`).

    Raises:
        FileNotFoundError: nothing matches ``input``.
        ValueError: neither ``input`` nor a dataset is given.
        InvalidInputError: an image is unusable (the message names it and the problem).
    """
    entries = _inference_entries(input, dataset_dir, datalist, split, fold, num_folds)
    if check:
        check_datalist([{"image": e["image"]} for e in entries], series_uid=series_uid)
    return entries


def _inference_entries(input, dataset_dir, datalist, split: str, fold: int | None, num_folds: int) -> list[dict[str, str]]:
    if input is None:
        if dataset_dir is None and datalist is None:
            raise ValueError("nothing to segment: give input (a file, folder or glob) or dataset_dir / datalist.")
        entries = load_datalist(dataset_dir=dataset_dir, datalist=datalist, check=False, fold=fold, num_folds=num_folds)[split]
        if not entries:
            raise ValueError(f"the {split!r} list of the dataset is empty.")
        return entries
    path = Path(input)
    if path.is_symlink() and not path.exists():
        raise InvalidInputError(f"{path}: a broken symbolic link, or a loop of them.")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(NIFTI_SUFFIXES))
        return [{"image": str(p.resolve())} for p in files] if files else [{"image": str(path.resolve())}]
    if path.exists():
        return [{"image": str(path.resolve())}]
    matches = sorted(glob.glob(str(input)))
    if not matches:
        raise FileNotFoundError(f"input {input} does not exist and matches no file.")
    return [{"image": str(Path(m).resolve())} for m in matches]
