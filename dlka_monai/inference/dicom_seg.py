# Copyright (c) dlka_monai contributors. Licensed under the Apache License, Version 2.0.
"""A label map as a DICOM Segmentation object (highdicom) that references its source series: one
segment per class present, named as the model's plan names the classes and coded in SNOMED-CT
(:mod:`dlka_monai.networks.terminology`). Needs the ``dicom`` extra (``pip install "dlka_monai[dicom]"``)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

import dlka_monai
from dlka_monai.networks.terminology import segment_code

__all__ = ["DICOM_EXTRA_MISSING", "check_highdicom", "plan_sha256", "write_dicom_seg"]

DICOM_EXTRA_MISSING = "DICOM SEG output needs highdicom: pip install \"dlka_monai[dicom]\"."
ALGORITHM_NAME = "D-LKA Net (dlka_monai)"


def check_highdicom() -> None:
    """Raise ``ImportError`` with :data:`DICOM_EXTRA_MISSING` unless highdicom imports."""
    try:
        import highdicom  # noqa: F401
    except ImportError as e:
        raise ImportError(DICOM_EXTRA_MISSING) from e


def plan_sha256(plan: Mapping) -> str:
    """The SHA-256 of ``plan`` as canonical JSON (sorted keys, no spaces): the plan's identity in the
    algorithm parameters, whose ``key=value,...`` text cannot hold the plan's own commas."""
    return hashlib.sha256(json.dumps(plan, separators=(",", ":"), sort_keys=True).encode()).hexdigest()


def _code(value: tuple[str, str]):
    from highdicom.sr import CodedConcept

    return CodedConcept(value=value[0], scheme_designator="SCT", meaning=value[1])


def write_dicom_seg(
    label_map: np.ndarray,
    source_files: Sequence[str | Path],
    class_names: Mapping[int, str],
    path: str | Path,
    plan: Mapping | None = None,
) -> Path | None:
    """Write ``label_map`` as a DICOM Segmentation object of the series ``source_files``.

    Args:
        label_map: integer ``(x, y, z)`` array on the series' voxel grid, as ``SITKReader`` reads the series
            (``x`` along the rows of a slice, i.e. the columns; ``z`` along ``source_files``).
        source_files: the series' slice files in ``SITKReader``'s order (ImageSeriesReader's sorting).
        class_names: label value -> name; the segment of a value not in it is named by the value.
        path: the file to write.
        plan: the model's plan: its preset and :func:`plan_sha256` go into the algorithm identification's
            parameters.

    Returns:
        ``path``, or ``None`` (nothing written) when the label map holds no class.

    Raises:
        ValueError: a label map whose shape is not the series'.
    """
    check_highdicom()
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    sources = [pydicom.dcmread(str(f)) for f in source_files]
    rows, cols = int(sources[0].Rows), int(sources[0].Columns)
    if label_map.shape != (cols, rows, len(sources)):
        raise ValueError(f"label map {label_map.shape} is not on the grid of the series ({cols}, {rows}, {len(sources)}).")
    frames = np.ascontiguousarray(np.transpose(label_map, (2, 1, 0))).astype(np.int64)  # (slice, row, column)
    present = [int(v) for v in np.unique(frames) if v > 0]
    if not present:
        return None
    # segment numbers count from 1 without gaps; the class value is kept as the segment's tracking id
    segments = np.zeros(frames.shape, dtype=np.uint8)
    parameters = None if plan is None else {"preset": str(plan.get("preset")), "plan_sha256": plan_sha256(plan)}
    algorithm = hd.AlgorithmIdentificationSequence(
        name=ALGORITHM_NAME, family=codes.cid7162.ArtificialIntelligence, version=dlka_monai.__version__,
        parameters=parameters,
    )
    descriptions = []
    for number, value in enumerate(present, start=1):
        segments[frames == value] = number
        code = segment_code(class_names.get(value, str(value)))
        description = hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=class_names.get(value, str(value)),
            segmented_property_category=_code(code.category),
            segmented_property_type=_code(code.type),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            tracking_id=f"class {value}",
            tracking_uid=hd.UID(),
        )
        if code.laterality is not None:
            description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [_code(code.laterality)]
        descriptions.append(description)
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=segments,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=int(getattr(sources[0], "SeriesNumber", None) or 0) + 1000,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="dlka_monai",
        manufacturer_model_name=ALGORITHM_NAME if plan is None else f"{ALGORITHM_NAME} {plan.get('preset')}",
        software_versions=dlka_monai.__version__,
        device_serial_number="0",
        series_description="D-LKA Net segmentation",
    )
    seg.save_as(str(path))
    return Path(path)
