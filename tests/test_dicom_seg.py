"""dlka-segment --output-type dicom_seg --statistics on a DICOM series the test writes, read back with pydicom
and highdicom and compared voxel for voxel with the NIfTI output; series that are not a volume are refused."""

import contextlib
import io
import json
import re
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from dlka_monai.data import InvalidInputError, SITKReader, check_image
from dlka_monai.segment import main

pydicom = pytest.importorskip("pydicom")
hd = pytest.importorskip("highdicom")

from utils import STUDY_UID, series_volume, write_series  # noqa: E402

SERIES_UID = f"{STUDY_UID}.700"


@pytest.fixture(scope="module")
def series_outputs(tiny_bundle, demo_dataset, tmp_path_factory):
    """A demo volume as a DICOM series, segmented once into NIfTI and once into DICOM SEG with statistics
    (folder, the lines that printed)."""
    tmp = tmp_path_factory.mktemp("dicom_seg")
    image = sitk.ReadImage(str(demo_dataset / "imagesTr" / "demo_006.nii.gz"))
    write_series(image, tmp / "ct", SERIES_UID)
    assert main(["-i", str(tmp / "ct"), "-o", str(tmp / "nifti"), "--model", str(tiny_bundle)]) == 0
    args = ["-i", str(tmp / "ct"), "-o", str(tmp / "seg"), "--model", str(tiny_bundle), "--output-type", "dicom_seg", "--statistics"]
    with contextlib.redirect_stdout(io.StringIO()) as out:
        assert main(args) == 0
    return tmp, out.getvalue().splitlines()


def _seg_label_map(seg, sources: list) -> np.ndarray:
    """The SEG's frames as one (x, y, z) label map of class values, placed by their referenced source slices."""
    slice_of = {ds.SOPInstanceUID: k for k, ds in enumerate(sources)}
    class_of = {int(s.SegmentNumber): int(s.TrackingID.split()[-1]) for s in seg.SegmentSequence}
    volume = np.zeros((len(sources), int(seg.Rows), int(seg.Columns)), dtype=np.int64)
    frames = seg.pixel_array.reshape(-1, int(seg.Rows), int(seg.Columns))
    for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence):
        uid = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        segment = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        k = slice_of[uid]
        assert not (volume[k][frame > 0]).any(), "two segments claim one voxel"
        volume[k][frame > 0] = class_of[segment]
    return volume.transpose(2, 1, 0)


def test_dicom_seg_matches_the_nifti_output_and_references_the_series(series_outputs):
    tmp, out = series_outputs
    seg_file = tmp / "seg" / "ct_seg.dcm"
    assert sorted(p.name for p in (tmp / "seg").iterdir()) == ["ct_seg.dcm", "ct_statistics.json"]
    assert out[-1] == "dlka-segment: wrote 1 DICOM SEG file(s)."

    nifti = np.asanyarray(nib.load(tmp / "nifti" / "ct_seg.nii.gz").dataobj).astype(np.int64)
    sources = [pydicom.dcmread(f) for f in SITKReader().series_files(str(tmp / "ct"))]
    seg = pydicom.dcmread(seg_file)
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4" and seg.Modality == "SEG"
    np.testing.assert_array_equal(_seg_label_map(seg, sources), nifti)

    # the source series: same study, frame of reference, and every one of its instances referenced
    assert seg.StudyInstanceUID == STUDY_UID and seg.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
    (ref,) = seg.ReferencedSeriesSequence
    assert ref.SeriesInstanceUID == SERIES_UID
    assert {r.ReferencedSOPInstanceUID for r in ref.ReferencedInstanceSequence} == {ds.SOPInstanceUID for ds in sources}
    referenced = {i.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID for i in seg.PerFrameFunctionalGroupsSequence}
    assert referenced <= {ds.SOPInstanceUID for ds in sources}

    # one segment per class present, named and coded, with the algorithm (name, version, preset)
    names = {1: "spleen", 2: "right kidney", 3: "left kidney", 6: "liver", 11: "pancreas"}
    present = sorted(int(v) for v in np.unique(nifti) if v)
    assert len(present) >= 2
    segments = {int(s.TrackingID.split()[-1]): s for s in seg.SegmentSequence}
    assert sorted(segments) == present and [int(s.SegmentNumber) for s in seg.SegmentSequence] == list(range(1, len(present) + 1))
    for value, segment in segments.items():
        if value in names:
            assert segment.SegmentLabel == names[value]
        assert segment.SegmentedPropertyCategoryCodeSequence[0].CodingSchemeDesignator == "SCT"
        algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
        assert algorithm.AlgorithmName == "D-LKA Net (dlka_monai)" and algorithm.AlgorithmVersion
        assert algorithm.AlgorithmParameters.startswith("preset=dlka3d_synapse,plan_sha256=")
    if 6 in segments:
        assert segments[6].SegmentedPropertyTypeCodeSequence[0].CodeValue == "10200004"  # SNOMED-CT liver
    if 2 in segments:
        kidney = segments[2].SegmentedPropertyTypeCodeSequence[0]
        assert kidney.CodeValue == "64033007" and kidney.SegmentedPropertyTypeModifierCodeSequence[0].CodeMeaning == "Right"

    # highdicom reads it as a valid segmentation of the series
    read = hd.seg.segread(seg_file)
    assert read.number_of_segments == len(present)
    assert {uid for _, _, uid in read.get_source_image_uids()} <= {ds.SOPInstanceUID for ds in sources}


def test_statistics_are_the_printed_numbers(series_outputs):
    tmp, out = series_outputs
    line = out[-2]
    assert line.startswith(f"ct -> {tmp / 'seg' / 'ct_seg.dcm'}: ")
    stats = json.loads((tmp / "seg" / "ct_statistics.json").read_text(encoding="utf-8"))
    nifti_image = nib.load(tmp / "nifti" / "ct_seg.nii.gz")
    labels = np.asanyarray(nifti_image.dataobj).astype(np.int64)
    series = sitk.ReadImage(SITKReader().series_files(str(tmp / "ct")))
    intensities = sitk.GetArrayFromImage(series).T.astype(np.float64)
    voxel_ml = abs(np.linalg.det(nifti_image.affine[:3, :3])) / 1000
    assert stats["voxel_volume_ml"] == pytest.approx(voxel_ml, rel=1e-5) and stats["preset"] == "dlka3d_synapse"
    assert stats["segmentation"] == str(tmp / "seg" / "ct_seg.dcm")
    assert len(stats["classes"]) == 13  # every class of the model, found or not
    printed = {part.rsplit(" ", 2)[0]: part.rsplit(" ", 2)[1] for part in line.split(": ", 1)[1].split(", ")}
    for name, c in stats["classes"].items():
        mask = labels == c["label"]
        assert c["voxels"] == int(mask.sum())
        assert c["volume_ml"] == pytest.approx(mask.sum() * voxel_ml, rel=1e-5)
        if not c["voxels"]:
            assert name not in printed and c["intensity_mean"] is None and c["bounding_box_lps_mm"] is None
            continue
        assert printed[name] == f"{c['volume_ml']:.1f}"
        assert c["intensity_mean"] == pytest.approx(intensities[mask].mean(), rel=1e-6)
        assert c["intensity_std"] == pytest.approx(intensities[mask].std(), rel=1e-5, abs=1e-6)
        index = np.argwhere(mask)
        assert c["bounding_box_voxels"] == {"first": index.min(0).tolist(), "last": index.max(0).tolist()}
        # every voxel centre of the class lies in the box, in LPS patient coordinates; the box is tight
        lps = (np.c_[index, np.ones(len(index))] @ nifti_image.affine.T)[:, :3] * [-1, -1, 1]
        box = c["bounding_box_lps_mm"]
        assert (lps >= np.array(box["min"]) - 1e-3).all() and (lps <= np.array(box["max"]) + 1e-3).all()
        np.testing.assert_allclose(lps.min(0), box["min"], atol=1e-3)
        np.testing.assert_allclose(lps.max(0), box["max"], atol=1e-3)


def test_dicom_seg_refuses_a_nifti_input(tiny_bundle, demo_dataset, tmp_path, capsys):
    image = demo_dataset / "imagesTr" / "demo_006.nii.gz"
    assert main(["-i", str(image), "-o", str(tmp_path / "out"), "--model", str(tiny_bundle), "--output-type", "dicom_seg"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"dlka-segment: error: --output-type dicom_seg needs DICOM series folders as input, not {image}."
    assert not (tmp_path / "out").exists()


def _edit_slice(folder: Path, number: int, **tags) -> None:
    path = sorted(folder.iterdir())[number]
    ds = pydicom.dcmread(path)
    for tag, value in tags.items():
        setattr(ds, tag, value)
    ds.save_as(path)


def _bad_series(kind: str, folder: Path) -> tuple[Path, str]:
    """A series of the reader tests' volume (5 slices, 2.5 mm apart) broken as ``kind``; the error's text."""
    _, image = series_volume()
    series = folder / kind.replace(" ", "_")
    write_series(image, series, f"{STUDY_UID}.800")
    position = [float(v) for v in pydicom.dcmread(sorted(series.iterdir())[2]).ImagePositionPatient]
    if kind == "missing slice":
        sorted(series.iterdir())[2].unlink()
        return series, "1 slice(s) missing: a gap of 5 mm after slice 2 of 4 where the spacing is 2.5 mm"
    if kind == "irregular spacing":
        _edit_slice(series, 2, ImagePositionPatient=[position[0], position[1], position[2] + 0.9])
        return series, "irregular slice spacing, from 1.6 to 3.4 mm"
    if kind == "duplicate position":
        previous = pydicom.dcmread(sorted(series.iterdir())[1]).ImagePositionPatient
        _edit_slice(series, 2, ImagePositionPatient=previous)
        return series, "2 slices share a position"
    if kind == "several orientations":
        _edit_slice(series, 2, ImageOrientationPatient=[1, 0, 0, 0, 1, 0])
        return series, "1 of its 5 slices have another orientation (ImageOrientationPatient) than the first"
    raise ValueError(kind)


BAD_SERIES = ["missing slice", "irregular spacing", "duplicate position", "several orientations"]


@pytest.mark.parametrize("kind", BAD_SERIES)
def test_a_series_that_is_not_a_volume_is_refused_in_one_line(kind, tiny_bundle, tmp_path, capsys):
    folder, message = _bad_series(kind, tmp_path / "in")
    out = tmp_path / "out"
    args = ["-i", str(folder), "-o", str(out), "--model", str(tiny_bundle), "--output-type", "dicom_seg", "--statistics"]
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and str(folder) in err, err
    assert not out.exists() or not any(out.iterdir())
    with pytest.raises(InvalidInputError, match=re.escape(message)):
        check_image(folder)


def test_a_regular_series_passes_the_checks(tmp_path):
    _, image = series_volume()
    write_series(image, tmp_path / "ok", f"{STUDY_UID}.801")
    check_image(tmp_path / "ok")
    assert len(SITKReader().series_files(str(tmp_path / "ok"))) == 5


def test_dicom_seg_without_highdicom_names_the_extra(tiny_bundle, tmp_path, monkeypatch, capsys):
    _, image = series_volume()
    write_series(image, tmp_path / "ct", f"{STUDY_UID}.802")
    monkeypatch.setitem(sys.modules, "highdicom", None)  # as if not installed: its import fails
    assert main(["-i", str(tmp_path / "ct"), "-o", str(tmp_path / "out"), "--model", str(tiny_bundle), "--output-type", "dicom_seg"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == 'dlka-segment: error: DICOM SEG output needs highdicom: pip install "dlka_monai[dicom]".'
    assert not (tmp_path / "out").exists()
