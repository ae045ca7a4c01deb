# Copyright (c) dlka_monai contributors. Licensed under the Apache License, Version 2.0.
"""Pack this repository's bundle into a self-contained MONAI bundle for one network preset.

    python -m dlka_monai.bundle pack --preset dlka3d_synapse --out dist/dlka3d_synapse \
        [--checkpoint models/model.pt] [--zip] [--set ID=VALUE ...]

The packed folder holds ``configs/`` (the preset's overlays merged into one ``train.json`` and one
``inference.json``, as MONAI Label and ``python -m monai.bundle run`` read them, plus
``multi_gpu_train.json``, ``evaluate.json``, ``logging.conf`` and a ``metadata.json`` with the preset's
labels), ``models/model.pt`` when a checkpoint is given, ``docs/README.md`` and ``LICENSE``. ``--zip``
also writes ``<out>_v<version>.zip`` beside it, the model-zoo release form (one top folder named after
the bundle). The configs import the installed ``dlka_monai`` package (see bundle/README.md for why).
``--set ID=VALUE`` overrides a config id in both configs (VALUE is JSON, else a string), e.g.
``--set network_def#feature_size=4``.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser, ReferenceResolver
from monai.config import PathLike

import dlka_monai
from dlka_monai.weights import check_state_dict, safe_load

__all__ = ["BundlePreset", "BUNDLE_PRESETS", "merged_configs", "pack_bundle", "main"]

# the repository root, which is the bundle root of the unpacked bundle (present in an editable install)
_REPO_ROOT = Path(__file__).resolve().parents[1]
# overlays copied as they are: they apply on top of the packed train.json / inference.json
_COPIED_CONFIGS = ("multi_gpu_train.json", "evaluate.json", "logging.conf")
# ids of the packed configs that must not keep an overlay's value: MONAI Label reads models/model.pt
_BASE_TRAIN_IDS = ("ckpt_dir", "output_dir")
_BASE_INFERENCE_IDS = ("ckpt_path", "output_dir")
# ids the train and inference configs must agree on, for trained weights to fit the inference network
_SHARED_IDS = ("preset", "num_classes", "img_size", "pixdim", "hu_window", "axcodes", "network_def")


@dataclass(frozen=True)
class BundlePreset:
    """What the packed bundle of one network preset is made of.

    Args:
        train: files in ``configs/`` merged, in order, into the packed ``train.json``.
        inference: files in ``configs/`` merged, in order, into the packed ``inference.json``.
        spatial_dims: spatial dimensions of the network input (2 for the slice-wise network).
        name: metadata ``name``.
        task: metadata ``task``.
        description: metadata ``description``, completed with the input size and spacing.
        data_source: metadata ``data_source``; None keeps the repository's.
        eval_metrics: metadata ``eval_metrics``; None keeps the repository's.
    """

    train: tuple[str, ...]
    inference: tuple[str, ...]
    spatial_dims: int
    name: str
    task: str
    description: str
    data_source: str | None = None
    eval_metrics: dict[str, str] | None = None


_NOT_MEASURED = {"mean_dice": "not yet measured with this implementation"}

BUNDLE_PRESETS: dict[str, BundlePreset] = {
    "dlka3d_synapse": BundlePreset(
        train=("train.json",),
        inference=("inference.json",),
        spatial_dims=3,
        name="D-LKA Net multi-organ CT segmentation",
        task="Abdominal multi-organ segmentation in CT (Synapse / BTCV, 13 organs)",
        description="3D D-LKA Net (deformable large kernel attention) for abdominal CT: 13 organs of the "
        "Synapse/BTCV multi-organ dataset plus background.",
    ),
    "dlka3d_pancreas": BundlePreset(
        train=("train.json", "pancreas.json"),
        inference=("inference.json", "inference_pancreas.json"),
        spatial_dims=3,
        name="D-LKA Net pancreas CT segmentation",
        task="Pancreas segmentation in CT (NIH Pancreas-CT)",
        description="3D D-LKA Net (deformable large kernel attention) for the pancreas in abdominal CT "
        "(NIH Pancreas-CT) plus background.",
        data_source="NIH Pancreas-CT (The Cancer Imaging Archive): https://doi.org/10.7937/K9/TCIA.2016.tNB1kqBU",
        eval_metrics=_NOT_MEASURED,
    ),
    "dlka2d_synapse": BundlePreset(
        train=("train.json", "train_2d.json"),
        inference=("inference.json", "inference_2d.json"),
        spatial_dims=2,
        name="D-LKA Net 2D multi-organ CT segmentation",
        task="Abdominal multi-organ segmentation in CT, slice by slice (Synapse, 8 organs)",
        description="2D D-LKA Net (MaxViT-S encoder, deformable large kernel attention decoder) run on "
        "every axial slice of an abdominal CT: the 8 standard Synapse organs plus background; the output is "
        "a 3D label map.",
        eval_metrics=_NOT_MEASURED,
    ),
}


def _parse_value(text: str) -> Any:
    """A ``--set`` value: JSON (numbers, lists, true/false/null), else the string itself (e.g. ``$...``)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _apply_overrides(config: dict, overrides: Mapping[str, Any]) -> set[str]:
    """Set the ``overrides`` whose parent id exists in ``config``; returns the ids that were set."""
    parser = ConfigParser(config)
    applied = set()
    for id_, value in overrides.items():
        keys = ReferenceResolver.split_id(id_)
        try:
            parent = parser["#".join(keys[:-1])] if len(keys) > 1 else parser.get()
        except (KeyError, IndexError, ValueError):
            continue
        if isinstance(parent, dict) or (isinstance(parent, list) and keys[-1].isdigit()):
            parser[id_] = copy.deepcopy(value)
            applied.add(id_)
    return applied


def merged_configs(
    preset: str, overrides: Mapping[str, Any] | None = None, source: PathLike | None = None
) -> tuple[dict, dict]:
    """The packed ``train.json`` and ``inference.json`` of ``preset``, as dicts.

    The preset's overlays are merged with MONAI's rules (``a#b`` ids set nested items, ``+`` ids extend);
    the checkpoint and output paths are the base configs' (``models/model.pt``, what MONAI Label loads);
    training takes the real-data settings (``demo`` false, no demo dataset: data come from MONAI Label's
    datastore or ``--dataset_dir`` / ``--datalist``); then ``overrides`` are set in each config that has
    the id's parent.

    Args:
        preset: a key of :data:`BUNDLE_PRESETS`.
        overrides: config ids (``#``-separated) to values.
        source: the bundle root holding ``configs/``; defaults to this repository.

    Raises:
        ValueError: for an unknown preset, an override no config has, or train and inference configs
            that disagree on the network or the preprocessing.
    """
    if preset not in BUNDLE_PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(sorted(BUNDLE_PRESETS))}.")
    spec, configs = BUNDLE_PRESETS[preset], _configs_dir(source)
    overrides = dict(overrides or {})

    base_train = ConfigParser.load_config_file(configs / "train.json")
    train = ConfigParser.load_config_files([str(configs / f) for f in spec.train])
    train.update({k: base_train[k] for k in _BASE_TRAIN_IDS}, demo=False, demo_dir=None)
    base_inference = ConfigParser.load_config_file(configs / "inference.json")
    inference = ConfigParser.load_config_files([str(configs / f) for f in spec.inference])
    inference.update({k: base_inference[k] for k in _BASE_INFERENCE_IDS})

    unused = set(overrides) - _apply_overrides(train, overrides) - _apply_overrides(inference, overrides)
    if unused:
        raise ValueError(f"no config of preset {preset} has the id(s) {', '.join(sorted(unused))}.")
    train_values, inference_values = _resolve(train, source), _resolve(inference, source)
    for id_ in _SHARED_IDS:
        if train_values[id_] != inference_values[id_]:
            raise ValueError(
                f"train and inference configs of preset {preset} disagree on {id_!r}: "
                f"{train_values[id_]!r} vs {inference_values[id_]!r}; set it for both with --set {id_}=..."
            )
    return train, inference


def _root(source: PathLike | None) -> Path:
    return Path(_REPO_ROOT if source is None else source)


def _configs_dir(source: PathLike | None) -> Path:
    configs = _root(source) / "configs"
    if not (configs / "train.json").is_file():
        raise ValueError(f"no bundle configs in {configs}; pass the repository root (the bundle root) as source.")
    return configs


def _resolve(config: dict, source: PathLike | None) -> dict[str, Any]:
    """The values of the ids the packed configs must share; ``network_def`` as its raw config."""
    parser = ConfigParser(copy.deepcopy(config))
    parser["bundle_root"] = str(_root(source))
    values = {k: parser.get_parsed_content(k) for k in _SHARED_IDS if k != "network_def"}
    values["network_def"] = parser.get_parsed_content("network_def", instantiate=False).get_config()
    values["class_names"] = parser.get_parsed_content("class_names") if "class_names" in config else None
    return values


def _checked_weights(path: PathLike, inference: dict, source: PathLike | None) -> dict[str, torch.Tensor]:
    """The state dict in ``path`` (a training checkpoint's ``model`` item), loaded as weights only and
    checked name for name and shape for shape against the network of the ``inference`` config."""
    parser = ConfigParser(copy.deepcopy(inference))
    parser["bundle_root"] = str(_root(source))
    # the meta device gives the network's names and shapes without allocating its weights
    with torch.device("meta"):
        network = parser.get_parsed_content("network_def")
    state = safe_load(path)
    state = state.get("model", state) if isinstance(state, dict) else state
    check_state_dict(state, network, parser.get_parsed_content("preset"), path)
    return state


def _metadata(preset: str, inference: dict, source: PathLike | None) -> dict:
    spec, configs = BUNDLE_PRESETS[preset], _configs_dir(source)
    meta = ConfigParser.load_config_file(configs / "metadata.json")
    values = _resolve(inference, source)
    size = values["img_size"]
    size = list(size) if isinstance(size, Sequence) else [size] * spec.spatial_dims
    # the Synapse config reads its class names from metadata.json; the overlays list theirs
    names = values["class_names"] or meta["network_data_format"]["outputs"]["pred"]["channel_def"]
    channel_def = {str(k): v for k, v in names.items()}
    if len(channel_def) != values["num_classes"]:
        raise ValueError(f"preset {preset}: {len(channel_def)} class names for {values['num_classes']} classes.")
    spacing = " x ".join(f"{s:g}" for s in values["pixdim"] if s > 0)
    if spec.spatial_dims == 3:
        where = f"voxels in (z, y, x) order at {spacing} mm"
    else:
        where = f"pixels of axial slices, in-plane spacing {spacing} mm"
    classes = "; ".join(f"{k}: {v}" for k, v in channel_def.items())
    low, high = values["hu_window"]
    meta.update(
        name=spec.name,
        task=spec.task,
        description=f"{spec.description} Network input: {'x'.join(map(str, size))} {where}.",
        label_classes=classes,
        pred_classes=classes,
        image_classes=f"single channel CT, intensity in HU, windowed to [{low}, {high}] and scaled to [0, 1]",
        # the configs import the installed package: it is a requirement of the bundle
        required_packages_version={**meta.get("required_packages_version", {}), "dlka_monai": dlka_monai.__version__},
        supported_apps={"monailabel": "0.8.5"},
    )
    if spec.data_source is not None:
        meta["data_source"] = spec.data_source
    if spec.eval_metrics is not None:
        meta["eval_metrics"] = spec.eval_metrics
    fmt = meta["network_data_format"]
    fmt["inputs"]["image"]["spatial_shape"] = size
    fmt["outputs"]["pred"].update(num_channels=values["num_classes"], spatial_shape=size, channel_def=channel_def)
    return meta


def _readme(preset: str, name: str, source: PathLike | None) -> str:
    docs = (_configs_dir(source).parent / "docs" / "README.md").read_text(encoding="utf-8")
    header = f"""# {name}: packed `{preset}` bundle

Packed by `python -m dlka_monai.bundle pack --preset {preset}` (dlka_monai {dlka_monai.__version__}). The preset's
overlays are merged into `configs/train.json` and `configs/inference.json`; the configs import the
`dlka_monai` package, so install dlka_monai {dlka_monai.__version__} first (`pip install -e .` in its repository; in a
MONAI Label environment `pip install -e ".[label]"`). Weights: `models/model.pt`.

```bash
python -m monai.bundle run --config_file configs/inference.json --bundle_root . --input /data/ct.nii.gz
python -m monai.bundle run training --config_file configs/train.json --bundle_root . --dataset_dir /data/dataset
monailabel start_server --app apps/monaibundle --studies /data/images --conf models {name}
```

The last one with this folder as `apps/monaibundle/model/{name}`. The reference below is the repository's:
its `configs/*` overlay commands are already applied here.

"""
    return header + docs


def pack_bundle(
    preset: str,
    out: PathLike,
    checkpoint: PathLike | None = None,
    make_zip: bool = False,
    overrides: Mapping[str, Any] | None = None,
    source: PathLike | None = None,
    overwrite: bool = False,
) -> tuple[Path, Path | None]:
    """Write the self-contained bundle of ``preset`` into the folder ``out``.

    Args:
        preset: a key of :data:`BUNDLE_PRESETS`.
        out: the bundle folder to create; its name is the bundle's name (e.g. in MONAI Label).
        checkpoint: weights for ``models/model.pt``: a state dict, or a training checkpoint holding one as
            ``model``; loaded as weights only and checked against the preset's network.
        make_zip: also write ``<out>_v<version>.zip`` (top folder ``<out name>/``), the model-zoo form.
        overrides: config ids to values, set in both configs (see :func:`merged_configs`).
        source: the bundle root to pack; defaults to this repository.
        overwrite: replace an existing ``out`` (and zip) instead of refusing.

    Returns:
        the bundle folder and the zip file (None without ``make_zip``).

    Raises:
        ValueError: see :func:`merged_configs`; a checkpoint that is not weights only or is of another
            network; or ``out`` exists.
    """
    out = Path(out)
    train, inference = merged_configs(preset, overrides, source)
    state = None if checkpoint is None else _checked_weights(checkpoint, inference, source)
    meta = _metadata(preset, inference, source)
    zip_path = out.with_name(f"{out.name}_v{meta['version']}.zip") if make_zip else None
    for path in (out, zip_path):
        if path is not None and path.exists():
            if not overwrite:
                raise ValueError(f"{path} exists; remove it, or pass --overwrite (overwrite=True) to replace it.")
            shutil.rmtree(path) if path.is_dir() else path.unlink()

    configs = _configs_dir(source)
    (out / "configs").mkdir(parents=True)
    for name, config in (("train.json", train), ("inference.json", inference), ("metadata.json", meta)):
        (out / "configs" / name).write_text(json.dumps(config, indent=4) + "\n", encoding="utf-8")
    for name in _COPIED_CONFIGS:
        shutil.copyfile(configs / name, out / "configs" / name)
    if state is not None:
        (out / "models").mkdir()
        torch.save(state, out / "models" / "model.pt")
    (out / "docs").mkdir()
    (out / "docs" / "README.md").write_text(_readme(preset, out.name, source), encoding="utf-8")
    shutil.copyfile(configs.parent / "LICENSE", out / "LICENSE")

    if zip_path is not None:
        with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(out.rglob("*")):
                if path.is_file():
                    archive.write(path, Path(out.name) / path.relative_to(out))
    return out, zip_path


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit status (1 with a one-line error, no traceback)."""
    parser = argparse.ArgumentParser(
        prog="python -m dlka_monai.bundle", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    pack = sub.add_parser("pack", help="pack a self-contained bundle of one network preset")
    pack.add_argument("--preset", required=True, choices=sorted(BUNDLE_PRESETS))
    pack.add_argument("--out", required=True, help="the bundle folder to create (its name is the bundle's name)")
    pack.add_argument("--checkpoint", help="weights for models/model.pt (a state dict or a training checkpoint)")
    pack.add_argument("--zip", action="store_true", help="also write <out>_v<version>.zip, the model-zoo form")
    pack.add_argument("--set", action="append", default=[], metavar="ID=VALUE", help="override a config id (repeatable)")
    pack.add_argument("--source", help="the bundle root to pack (default: this repository)")
    pack.add_argument("--overwrite", action="store_true", help="replace an existing --out folder and zip")
    args = parser.parse_args(argv)
    try:
        bad = [s for s in args.set if "=" not in s]
        if bad:
            raise ValueError(f"--set takes ID=VALUE, got {bad[0]!r}.")
        overrides = {k: _parse_value(v) for k, v in (s.split("=", 1) for s in args.set)}
        folder, zip_path = pack_bundle(
            args.preset, args.out, args.checkpoint, args.zip, overrides, args.source, args.overwrite
        )
    except (ValueError, OSError) as e:
        print(f"bundle: error: {e}", file=sys.stderr)
        return 1
    weights = "models/model.pt" if args.checkpoint else "no weights"
    print(f"packed {args.preset} into {folder} ({weights})" + (f"; wrote {zip_path}" if zip_path else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
