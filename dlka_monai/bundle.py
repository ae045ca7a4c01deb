# Copyright (c) dlka_monai contributors. Licensed under the Apache License, Version 2.0.
"""Pack this repository's bundle into a self-contained MONAI bundle for one network preset.

    python -m dlka_monai.bundle pack --out dist/dlka3d_synapse --checkpoint models/model.pt [--zip]
    python -m dlka_monai.bundle pack --preset dlka3d_pancreas --out dist/dlka3d_pancreas [--set ID=VALUE ...]

The packed folder holds ``configs/`` (the preset's training overlay merged into one ``train.json``, and
``inference.json``, as MONAI Label and ``python -m monai.bundle run`` read them, plus ``plan.json``,
``multi_gpu_train.json``, ``evaluate.json``, ``logging.conf`` and a ``metadata.json`` with the model's
labels), ``models/model.pt`` when a model is given, ``docs/README.md`` and ``LICENSE``. The preset and its
plan come from the model file (``--checkpoint``), or from ``--preset``. ``--zip`` also writes
``<out>_v<version>.zip`` beside it, the model-zoo release form (one top folder named after the bundle).
The configs import the installed ``dlka_monai`` package (see bundle/README.md for why). ``--set
ID=VALUE`` is a config override, as MONAI's own ``--ID VALUE``: it sets a config id in both configs
(VALUE is JSON, else a string, and a string starting with ``$``, ``@`` or ``%`` is code or a reference
that MONAI evaluates when the bundle runs), e.g. ``--set val_interval=5``.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import sys
import tempfile
import zipfile
from argparse import RawDescriptionHelpFormatter
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import torch
from monai.bundle import ConfigParser, ReferenceResolver
from monai.config import PathLike

import dlka_monai
from dlka_monai.bundle_files import bundle_root
from dlka_monai.cli import ArgumentParser
from dlka_monai.networks import get_preset, list_networks
from dlka_monai.plan import preset_plan, write_plan_file
from dlka_monai.training.recipe import list_recipes
from dlka_monai.weights import read_model

__all__ = ["MARKER", "training_overlays", "merged_configs", "pack_bundle", "main"]

# overlays copied as they are: they apply on top of the packed train.json / inference.json
_COPIED_CONFIGS = ("multi_gpu_train.json", "evaluate.json", "logging.conf")
# ids of the packed configs that must not keep an overlay's value: MONAI Label reads models/model.pt
_BASE_TRAIN_IDS = ("ckpt_dir", "output_dir")
MARKER = ".dlka_monai_bundle"
"""File the packer writes into every bundle folder it makes, listing the files it wrote (JSON,
``{"packed_by": ..., "files": [...]}``): ``--overwrite`` replaces only those."""
# what a pack of earlier versions wrote, whose marker is one line of text
_LEGACY_FILES = (
    "configs/train.json", "configs/inference.json", "configs/metadata.json", "configs/plan.json",
    *(f"configs/{name}" for name in _COPIED_CONFIGS), "models/model.pt", "docs/README.md", "LICENSE",
)


def training_overlays(preset: str, source: PathLike | None = None) -> list[str]:
    """The config files merged into the packed ``train.json`` of ``preset``: ``train.json``, then the
    overlay of ``configs/`` that selects the preset (sets ``preset`` to it), if ``train.json`` does not."""
    configs = _configs_dir(source)
    base = ConfigParser.load_config_file(configs / "train.json")
    if base.get("preset") == preset:
        return ["train.json"]
    found = []
    for path in sorted(configs.glob("*.json")):
        config = ConfigParser.load_config_file(path)
        if isinstance(config, Mapping) and config.get("preset") == preset:
            found.append(path.name)
    if len(found) != 1:
        what = "no training overlay" if not found else f"several training overlays ({', '.join(found)})"
        raise ValueError(f"{configs} has {what} for preset {preset} (a config setting \"preset\": \"{preset}\").")
    return ["train.json", found[0]]


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

    The preset's training overlay is merged onto ``train.json`` with MONAI's rules (``a#b`` ids set nested
    items, ``+`` ids extend); the checkpoint and output paths are the base config's (``models/model.pt``,
    what MONAI Label loads); training takes the real-data settings (``demo`` false, no demo dataset: data
    come from MONAI Label's datastore or ``--dataset_dir`` / ``--datalist``) and the packed ``plan.json``.
    The inference config is the repository's, which reads the network and its preprocessing from the
    model's plan, with ``preset`` set for a bundle packed without a model. Then ``overrides`` are set in
    each config that has the id's parent.

    Raises:
        ValueError: for an unknown preset or an override no config has.
    """
    if preset not in list_networks():
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(list_networks())}.")
    configs = _configs_dir(source)
    overrides = dict(overrides or {})

    base_train = ConfigParser.load_config_file(configs / "train.json")
    train = ConfigParser.load_config_files([str(configs / f) for f in training_overlays(preset, source)])
    train.update({k: base_train[k] for k in _BASE_TRAIN_IDS}, demo=False, demo_dir=None)
    train["plan_file"] = "$os.path.join(@bundle_root, 'configs', 'plan.json')"
    inference = ConfigParser.load_config_file(configs / "inference.json")
    inference["preset"] = preset

    unused = set(overrides) - _apply_overrides(train, overrides) - _apply_overrides(inference, overrides)
    if unused:
        raise ValueError(f"no config of preset {preset} has the id(s) {', '.join(sorted(unused))}.")
    return train, inference


def _configs_dir(source: PathLike | None) -> Path:
    configs = (bundle_root() if source is None else Path(source)) / "configs"
    if not (configs / "train.json").is_file():
        raise ValueError(f"no bundle configs in {configs}; pass the repository root (the bundle root) as source.")
    return configs


def _metadata(plan: Mapping[str, Any], source: PathLike | None) -> dict:
    preset = get_preset(plan["preset"])
    meta = ConfigParser.load_config_file(_configs_dir(source) / "metadata.json")
    size = plan["network"]["img_size"]
    size = list(size) if isinstance(size, Sequence) else [size] * plan["spatial_dims"]
    channel_def = dict(plan["class_names"])
    spacing = " x ".join(f"{s:g}" for s in (plan["pixdim"] or []) if s > 0)
    if plan["spatial_dims"] == 3:
        where = f"voxels in (z, y, x) order at {spacing} mm"
    else:
        where = f"pixels of axial slices, in-plane spacing {spacing} mm"
    classes = "; ".join(f"{k}: {v}" for k, v in channel_def.items())
    norm = plan["normalization"]
    if norm["scheme"] == "window":
        intensity = (
            f"intensity in HU, windowed to [{norm['a_min']:g}, {norm['a_max']:g}] and scaled to "
            f"[{norm.get('b_min', 0.0):g}, {norm.get('b_max', 1.0):g}]"
        )
    elif norm["scheme"] == "ct":
        intensity = (
            f"intensity in HU, clipped to [{norm['clip'][0]:g}, {norm['clip'][1]:g}] and z-scored with mean "
            f"{norm['mean']:g} and std {norm['std']:g}"
        )
    else:
        intensity = f"intensity normalised with the '{norm['scheme']}' scheme of its plan (configs/plan.json)"
    meta.update(
        name=f"D-LKA Net {plan['preset']}",
        task=preset.description,
        description=f"D-LKA Net (deformable large kernel attention), preset {plan['preset']}: {preset.description}. "
        f"Network input: {'x'.join(map(str, size))} {where}.",
        label_classes=classes,
        pred_classes=classes,
        image_classes=f"single channel {plan['modality']}, {intensity}",
        # the configs import the installed package: it is a requirement of the bundle
        required_packages_version={**meta.get("required_packages_version", {}), "dlka_monai": dlka_monai.__version__},
        supported_apps={"monailabel": "0.8.5"},
    )
    if plan["preset"] != "dlka3d_synapse":
        meta["eval_metrics"] = {"mean_dice": "not yet measured with this implementation"}
    fmt = meta["network_data_format"]
    fmt["inputs"]["image"]["spatial_shape"] = size
    fmt["inputs"]["image"]["modality"] = plan["modality"]
    fmt["outputs"]["pred"].update(num_channels=len(channel_def), spatial_shape=size, channel_def=channel_def)
    return meta


def _readme(preset: str, name: str, source: PathLike | None) -> str:
    docs = (_configs_dir(source).parent / "docs" / "README.md").read_text(encoding="utf-8")
    header = f"""# {name}: packed `{preset}` bundle

Packed by `python -m dlka_monai.bundle pack` (dlka_monai {dlka_monai.__version__}). The preset's
training overlay is merged into `configs/train.json`; `configs/inference.json` reads the network and its
preprocessing from the plan stored in `models/model.pt` (`configs/plan.json` holds the same plan for
training). The configs import the `dlka_monai` package, so install dlka_monai {dlka_monai.__version__} first
(`pip install dlka_monai`, or `pip install -e ".[label]"` in its repository for MONAI Label).

```bash
python -m monai.bundle run --config_file configs/inference.json --bundle_root . --input /data/ct.nii.gz
python -m monai.bundle run training --config_file configs/train.json --bundle_root . --dataset_dir /data/dataset
monailabel start_server --app apps/monaibundle --studies /data/images --conf models {name}
```

The last one with this folder as `apps/monaibundle/model/{name}`. The reference below is the repository's:
its `configs/*` overlay commands are already applied here.

"""
    return header + docs


def _replaceable_zip(path: Path) -> bool:
    """Whether ``--overwrite`` may replace the file ``path``: the zip of a packed bundle (its top folder
    holds the marker)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(Path(n).name == MARKER and len(Path(n).parts) == 2 for n in archive.namelist())


def _packed_files(out: Path) -> set[str] | None:
    """The files (POSIX paths relative to ``out``, the marker included) that the marker of the bundle
    folder ``out`` says a pack wrote; None without a marker. A marker of an earlier version (one line of
    text) stands for the files such a pack writes."""
    marker = out / MARKER
    if not marker.is_file():
        return None
    try:
        files = json.loads(marker.read_text(encoding="utf-8"))["files"]
        if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
            raise TypeError
    except (ValueError, KeyError, TypeError, OSError):
        files = _LEGACY_FILES
    return {*files, MARKER}


def _foreign_entries(out: Path, known: set[str]) -> list[str]:
    """The files (and empty folders) in ``out`` that are not among the ``known`` files."""
    folders = {p.as_posix() for f in known for p in PurePosixPath(f).parents}
    foreign = []
    for dirpath, dirnames, filenames in os.walk(out):  # symbolic links are not followed
        rel = Path(dirpath).relative_to(out)
        for name in sorted(dirnames):
            path = Path(dirpath) / name
            if path.is_symlink():
                filenames.append(name)
            elif (rel / name).as_posix() not in folders and not any(path.iterdir()):
                foreign.append((rel / name).as_posix() + "/")
        foreign += [(rel / name).as_posix() for name in sorted(filenames) if (rel / name).as_posix() not in known]
    return sorted(foreign)


def _check_replaceable(out: Path, zip_path: Path | None, overwrite: bool) -> None:
    """Raise unless ``out`` (and ``zip_path``) may be written: absent, or with ``overwrite`` an empty folder
    (filled in place, its owner and mode kept), a folder holding only what a pack wrote (its marker lists
    it), the zip of a pack."""
    for path in (out, zip_path):
        if path is not None and os.path.lexists(path) and not overwrite:
            raise ValueError(f"{path} exists; remove it, or pass --overwrite (overwrite=True) to replace it.")
    if zip_path is not None and os.path.lexists(zip_path) and not _replaceable_zip(zip_path):
        raise ValueError(f"{zip_path} exists and is not the zip of a packed bundle (no {MARKER}): not replaced; remove it yourself.")
    if not os.path.lexists(out):
        return
    if out.is_symlink() or not out.is_dir():
        raise ValueError(f"{out} exists and is not a folder: not replaced; remove it yourself.")
    known = _packed_files(out)
    if known is None:
        if any(out.iterdir()):
            raise ValueError(f"{out} exists and was not made by the packer (no {MARKER}): not replaced; remove it yourself.")
        return
    foreign = _foreign_entries(out, known)
    if foreign:
        more = f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
        raise ValueError(
            f"{out} holds files the packer did not write ({', '.join(foreign[:5])}{more}): not replaced; "
            "move them out of it first."
        )


def _swap_in(staging: Path, out: Path) -> None:
    """Put the complete bundle built in ``staging`` at ``out``: a rename when ``out`` is absent, else the
    entries of ``out`` (checked to be the packer's, or none) are exchanged for the new ones, so that the
    folder ``out`` itself, its owner and mode, stay as they are."""
    if not os.path.lexists(out):
        os.rename(staging, out)
        return
    trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    moved: list[str] = []
    placed: list[str] = []
    try:
        for entry in sorted(out.iterdir()):
            os.rename(entry, trash / entry.name)
            moved.append(entry.name)
        for entry in sorted(staging.iterdir()):
            os.rename(entry, out / entry.name)
            placed.append(entry.name)
    except OSError:
        for name in placed:  # back as it was
            os.rename(out / name, staging / name)
        for name in moved:
            os.rename(trash / name, out / name)
        trash.rmdir()
        raise
    shutil.rmtree(trash)
    staging.rmdir()


def pack_bundle(
    preset: str | None,
    out: PathLike,
    checkpoint: PathLike | None = None,
    make_zip: bool = False,
    overrides: Mapping[str, Any] | None = None,
    source: PathLike | None = None,
    overwrite: bool = False,
) -> tuple[Path, Path | None]:
    """Write the self-contained bundle of a model, or of ``preset``, into the folder ``out``.

    The bundle is built in a temporary folder beside ``out`` and put in place only when complete, so a
    failed pack leaves ``out`` as it was. The marker file (:data:`MARKER`) lists the files the pack wrote.

    Args:
        preset: a registered preset; None takes the model's (then ``checkpoint`` is needed).
        out: the bundle folder to create; its name is the bundle's name (e.g. in MONAI Label).
        checkpoint: the model for ``models/model.pt``: a model file, a training checkpoint or a bare state
            dict of a preset's default network; loaded as weights only and checked against its plan.
        make_zip: also write ``<out>_v<version>.zip`` (top folder ``<out name>/``), the model-zoo form.
        overrides: config ids to values, set in both configs (see :func:`merged_configs`).
        source: the bundle root to pack; defaults to this package's.
        overwrite: replace an existing ``out`` (and zip) that holds only files a pack wrote, or fill an
            empty folder (its owner and mode are kept).

    Returns:
        the bundle folder and the zip file (None without ``make_zip``).

    Raises:
        ValueError: see :func:`merged_configs`; a model that is not weights only, does not fit its plan or
            is of another preset than ``preset``; ``out`` exists (and, with ``overwrite``, holds files a pack
            did not write, which are named).
    """
    out = Path(out)
    if checkpoint is None and preset is None:
        raise ValueError("give the model to pack (--checkpoint) or the preset of an untrained bundle (--preset).")
    state, plan = (None, None) if checkpoint is None else read_model(checkpoint, preset)
    if plan is not None and preset is not None and plan["preset"] != preset:
        raise ValueError(f"{checkpoint} is a model of {plan['preset']}, not of --preset {preset}.")
    plan = plan or preset_plan(preset)
    preset = plan["preset"]
    train, inference = merged_configs(preset, overrides, source)
    recipe = (plan.get("recipe") or {}).get("name")
    # retraining the packed model (e.g. MONAI Label's train task) continues with the recipe it was trained
    # with; only a registered name is written, never a string from the model file
    if "recipe_name" not in (overrides or {}) and isinstance(recipe, str) and recipe in list_recipes():
        train["recipe_name"] = recipe
    meta = _metadata(plan, source)
    zip_path = out.with_name(f"{out.name}_v{meta['version']}.zip") if make_zip else None
    _check_replaceable(out, zip_path, overwrite)

    configs = _configs_dir(source)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.packing-", dir=out.parent))
    os.chmod(staging, 0o777 & ~_umask())  # the mode a new folder gets; mkdtemp's is 0700
    zip_tmp = None
    try:
        (staging / "configs").mkdir()
        for name, config in (("train.json", train), ("inference.json", inference), ("metadata.json", meta)):
            (staging / "configs" / name).write_text(json.dumps(config, indent=4) + "\n", encoding="utf-8")
        write_plan_file(plan, staging / "configs" / "plan.json")
        for name in _COPIED_CONFIGS:
            shutil.copyfile(configs / name, staging / "configs" / name)
        if state is not None:
            (staging / "models").mkdir()
            torch.save({"model": state, "plan": plan}, staging / "models" / "model.pt")
        (staging / "docs").mkdir()
        (staging / "docs" / "README.md").write_text(_readme(preset, out.name, source), encoding="utf-8")
        shutil.copyfile(configs.parent / "LICENSE", staging / "LICENSE")
        files = sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file())
        marker = {"packed_by": f"dlka_monai {dlka_monai.__version__}", "files": files}
        (staging / MARKER).write_text(json.dumps(marker, indent=1) + "\n", encoding="utf-8")

        if zip_path is not None:
            zip_tmp = zip_path.with_name(f".{zip_path.name}.{os.getpid()}.tmp")
            with zipfile.ZipFile(zip_tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
                for path in sorted(staging.rglob("*")):
                    if path.is_file():
                        archive.write(path, Path(out.name) / path.relative_to(staging))
        _swap_in(staging, out)
        if zip_tmp is not None:
            os.replace(zip_tmp, zip_path)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
        if zip_tmp is not None:
            zip_tmp.unlink(missing_ok=True)
    return out, zip_path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit status (1 with a one-line error, no traceback)."""
    parser = ArgumentParser(
        prog="python -m dlka_monai.bundle", description=__doc__, formatter_class=RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    pack = sub.add_parser("pack", help="pack a self-contained bundle of one model or network preset")
    pack.add_argument("--preset", choices=list_networks(), help="the preset (default: the --checkpoint model's)")
    pack.add_argument("--out", required=True, help="the bundle folder to create (its name is the bundle's name)")
    pack.add_argument("--checkpoint", help="the model for models/model.pt (a model file or a training checkpoint)")
    pack.add_argument("--zip", action="store_true", help="also write <out>_v<version>.zip, the model-zoo form")
    pack.add_argument(
        "--set", action="append", default=[], metavar="ID=VALUE",
        help="config override, set in both configs (repeatable; VALUE is JSON or a string; $/@/%% strings are "
        "config code that MONAI runs when the bundle runs)",
    )
    pack.add_argument("--source", help="the bundle root to pack (default: this package's)")
    pack.add_argument("--overwrite", action="store_true", help="replace an --out folder (and zip) the packer made earlier, if it holds nothing else")
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
    print(f"packed into {folder} ({weights})" + (f"; wrote {zip_path}" if zip_path else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
