# Copyright (c) dlka_monai contributors. Licensed under the Apache License, Version 2.0.
"""SNOMED-CT codes of the presets' class names (:mod:`dlka_monai.networks.presets`), for coded outputs
such as DICOM Segmentation objects. Plain data: the codes and meanings are those of the DICOM standard's
context groups (CID 7150 categories, CID 7154 abdominal structures, CID 244 laterality)."""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["SegmentCode", "ANATOMICAL_STRUCTURE", "SNOMED_CODES", "segment_code"]


class SegmentCode(NamedTuple):
    """A SNOMED-CT (``SCT``) coded segment: its property category, type and laterality modifier."""

    category: tuple[str, str]  # (code value, meaning)
    type: tuple[str, str]
    laterality: tuple[str, str] | None = None


ANATOMICAL_STRUCTURE = ("91723000", "Anatomical Structure")
_TISSUE = ("85756007", "Tissue")
_RIGHT, _LEFT = ("24028007", "Right"), ("7771000", "Left")


def _organ(code: str, meaning: str, laterality: tuple[str, str] | None = None) -> SegmentCode:
    return SegmentCode(ANATOMICAL_STRUCTURE, (code, meaning), laterality)


SNOMED_CODES: dict[str, SegmentCode] = {
    "spleen": _organ("78961009", "Spleen"),
    "right kidney": _organ("64033007", "Kidney", _RIGHT),
    "left kidney": _organ("64033007", "Kidney", _LEFT),
    "gallbladder": _organ("28231008", "Gallbladder"),
    "esophagus": _organ("32849002", "Esophagus"),
    "liver": _organ("10200004", "Liver"),
    "stomach": _organ("69695003", "Stomach"),
    "aorta": _organ("15825003", "Aorta"),
    "inferior vena cava": _organ("64131007", "Inferior vena cava"),
    # SNOMED-CT has no concept for the two veins together: the portal vein's code, the segment's label
    # names both
    "portal and splenic vein": _organ("32764006", "Portal vein"),
    "pancreas": _organ("15776009", "Pancreas"),
    "right adrenal gland": _organ("23451007", "Adrenal gland", _RIGHT),
    "left adrenal gland": _organ("23451007", "Adrenal gland", _LEFT),
}
"""Class name (as the presets name the BTCV / Synapse organs and the pancreas) -> SNOMED-CT code."""


def segment_code(name: str) -> SegmentCode:
    """The code of class ``name``; a class the table does not know (a user's own dataset) is coded as
    generic tissue, and its label keeps the name."""
    return SNOMED_CODES.get(name.lower(), SegmentCode(_TISSUE, _TISSUE))
