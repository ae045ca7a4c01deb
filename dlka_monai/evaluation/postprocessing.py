# Copyright (c) dlka_monai contributors. Licensed under the Apache License, Version 2.0.
"""Connected-component postprocessing decided on validation, as nnU-Net's: a class is reduced to its largest
connected component (MONAI's ``KeepLargestConnectedComponent``) only where that raised the class's mean
validation Dice. The decision is the plan's ``postprocessing: {"largest_component": [classes]}``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.config import KeysCollection
from monai.metrics import compute_dice
from monai.transforms import KeepLargestConnectedComponent, KeepLargestConnectedComponentd

__all__ = ["largest_component_scores", "decide_largest_component", "keep_largest_component", "largest_component_transform"]


def _classes(postprocessing: Mapping[str, Any]) -> list[int]:
    """The classes of a plan's (or its ``postprocessing`` entry's) largest-component decision."""
    entry = postprocessing.get("postprocessing", postprocessing)
    return [int(c) for c in entry.get("largest_component", [])]


def keep_largest_component(label_map: torch.Tensor, classes: Sequence[int], connectivity: int | None = None) -> torch.Tensor:
    """``label_map`` with each of ``classes`` reduced to its largest connected component (the rest of the
    class becomes background); the input is not changed.

    Args:
        label_map: ``[1, *spatial]`` integer label map.
        classes: label values to reduce.
        connectivity: neighbourhood (MONAI's: None is full, 26 neighbours in 3D).
    """
    if not classes:
        return label_map
    # MONAI's transform writes into the tensor it is given
    keep = KeepLargestConnectedComponent(applied_labels=list(classes), is_onehot=False, independent=True, connectivity=connectivity)
    return keep(label_map.clone())


def _dice(pred: torch.Tensor, label: torch.Tensor, c: int) -> float:
    # MONAI's convention with ignore_empty=False: 1 when the class is in neither, 0 when in one only
    p, y = (torch.as_tensor(t == c).reshape(1, 1, *t.shape[-(t.ndim - 1):]).float() for t in (pred, label))
    return float(compute_dice(p, y, include_background=True, ignore_empty=False)[0, 0])


def largest_component_scores(
    predictions: Sequence[torch.Tensor],
    labels: Sequence[torch.Tensor],
    num_classes: int,
    connectivity: int | None = None,
) -> dict[int, tuple[float, float]]:
    """Each foreground class's mean Dice over the cases as predicted and with the class reduced to its largest
    connected component.

    Args:
        predictions: validation label maps, ``[1, *spatial]`` each.
        labels: their ground truth, same shapes.
        num_classes: classes including background.
        connectivity: see :func:`keep_largest_component`.

    Returns:
        class -> ``(dice_before, dice_after)``. Reducing one class changes no other class's voxels but to
        background, so each class is decided on its own Dice.
    """
    if len(predictions) != len(labels) or not predictions:
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} label maps; at least one case is needed.")
    scores = {}
    for c in range(1, num_classes):
        before = [_dice(p, y, c) for p, y in zip(predictions, labels)]
        after = [_dice(keep_largest_component(p, [c], connectivity), y, c) for p, y in zip(predictions, labels)]
        scores[c] = (sum(before) / len(before), sum(after) / len(after))
    return scores


def decide_largest_component(
    predictions: Sequence[torch.Tensor],
    labels: Sequence[torch.Tensor],
    num_classes: int,
    connectivity: int | None = None,
) -> list[int]:
    """The classes whose mean validation Dice rises (strictly) when reduced to their largest connected
    component: the value of a plan's ``postprocessing["largest_component"]``. Arguments as
    :func:`largest_component_scores`."""
    scores = largest_component_scores(predictions, labels, num_classes, connectivity)
    return [c for c, (before, after) in scores.items() if after > before]


def largest_component_transform(postprocessing: Mapping[str, Any], keys: KeysCollection | None = None):
    """The MONAI transform applying a plan's decision to a ``[1, *spatial]`` label map.

    Args:
        postprocessing: a plan, or its ``postprocessing`` entry.
        keys: if given, the dictionary transform on these keys (e.g. ``"pred"`` after the argmax).
    """
    classes = _classes(postprocessing)
    if keys is not None:
        return KeepLargestConnectedComponentd(keys, applied_labels=classes, is_onehot=False, independent=True)
    return KeepLargestConnectedComponent(applied_labels=classes, is_onehot=False, independent=True)
