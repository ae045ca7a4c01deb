import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, EnsureChannelFirstd, LoadImage, LoadImaged, Orientationd, Spacingd

from dlka_monai.data import LoadPancreasH5d, SITKReader
from utils import SERIES_SHAPE as SHAPE, STUDY_UID, series_volume as _volume, write_series

@pytest.fixture
def series(tmp_path) -> tuple[np.ndarray, Path, Path]:
    """The same volume as a DICOM series folder and as NIfTI written by SimpleITK."""
    array, image = _volume()
    write_series(image, tmp_path / "dicom", f"{STUDY_UID}.100")
    sitk.WriteImage(image, str(tmp_path / "volume.nii.gz"))
    return array, tmp_path / "dicom", tmp_path / "volume.nii.gz"


def test_dicom_series_matches_nifti(series):
    array, dicom, nifti = series
    from_dicom = LoadImage(reader=SITKReader(), image_only=True)(dicom)
    from_nifti = LoadImage(image_only=True)(nifti)  # NibabelReader
    assert isinstance(from_dicom, MetaTensor) and from_dicom.shape == SHAPE
    np.testing.assert_array_equal(from_dicom.numpy(), array)
    np.testing.assert_array_equal(from_nifti.numpy(), array)
    np.testing.assert_allclose(from_dicom.affine.numpy(), from_nifti.affine.numpy(), atol=1e-4)
    # same world coordinates of the voxels, in RAS
    corner = np.array([SHAPE[0] - 1, SHAPE[1] - 1, SHAPE[2] - 1, 1.0])
    np.testing.assert_allclose(from_dicom.affine.numpy() @ corner, from_nifti.affine.numpy() @ corner, atol=1e-3)
    meta = from_dicom.meta
    assert meta["space"] == "RAS" and np.isnan(meta["original_channel_dim"])
    np.testing.assert_array_equal(meta["spatial_shape"], SHAPE)
    np.testing.assert_allclose(meta["pixdim"][1:4], (0.8, 0.9, 2.5), rtol=1e-6)
    np.testing.assert_allclose(meta["original_affine"], from_nifti.meta["original_affine"], atol=1e-4)
    assert meta["filename_or_obj"] == str(dicom)
    # and the same arrays once both are in RAS
    keys = ("dicom", "nifti")
    pipeline = Compose(
        [LoadImaged(keys, reader=[SITKReader()]), EnsureChannelFirstd(keys), Orientationd(keys, "RAS", labels=None)]
    )
    d = pipeline({"dicom": str(dicom), "nifti": str(nifti)})
    torch.testing.assert_close(d["dicom"], d["nifti"])
    torch.testing.assert_close(d["dicom"].affine, d["nifti"].affine, atol=1e-4, rtol=0)


def test_nifti_falls_back_to_nibabel(series):
    array, dicom, nifti = series
    d = LoadImaged(("dicom", "nifti"), reader=[SITKReader()])({"dicom": str(dicom), "nifti": str(nifti)})
    assert "sizeof_hdr" in d["nifti"].meta  # a NIfTI header field: NibabelReader read it
    assert "sizeof_hdr" not in d["dicom"].meta
    np.testing.assert_array_equal(d["nifti"].numpy(), array)
    with pytest.raises(ValueError, match="not .*volume.nii.gz"):
        SITKReader().read(nifti)
    # ...unless asked to read NIfTI
    reader = SITKReader(suffixes=("nii", "nii.gz"))
    data, meta = reader.get_data(reader.read(nifti))
    np.testing.assert_array_equal(data, array)
    np.testing.assert_allclose(meta["affine"], d["nifti"].affine.numpy(), atol=1e-5)


def test_verify_suffix(tmp_path):
    reader = SITKReader()
    assert reader.verify_suffix(tmp_path)
    for name in ("a.mha", "a.MHD", "a.nrrd", "a.dcm", ["a.mha", "b.nrrd"]):
        assert reader.verify_suffix(name), name
    for name in ("a.nii", "a.nii.gz", "a.png", ["a.mha", "b.nii.gz"]):
        assert not reader.verify_suffix(name), name


def test_single_files_and_channels(tmp_path):
    array, image = _volume()
    files = [tmp_path / "a.mha", tmp_path / "a.nrrd"]
    for f in files:
        sitk.WriteImage(image, str(f))
    sitk.WriteImage(image, str(tmp_path / "a.nii.gz"))
    reference = LoadImage(image_only=True)(tmp_path / "a.nii.gz")
    for f in files:
        img = LoadImage(reader=SITKReader(), image_only=True)(f)
        np.testing.assert_array_equal(img.numpy(), array)
        np.testing.assert_allclose(img.affine.numpy(), reference.affine.numpy(), atol=1e-5)
    stacked = LoadImage(reader=SITKReader(), image_only=True)(files)  # a list of files: one channel each
    assert stacked.shape == (2, *SHAPE) and stacked.meta["original_channel_dim"] == 0


def test_several_series(tmp_path, series):
    array, dicom, _ = series
    second, image = _volume(offset=1)
    write_series(image, dicom, f"{STUDY_UID}.200")
    with pytest.raises(ValueError) as err:
        SITKReader().read(dicom)
    message = str(err.value)
    assert f"{STUDY_UID}.100 (5 files)" in message and f"{STUDY_UID}.200 (5 files)" in message
    assert "\n" not in message
    for uid, expected in ((f"{STUDY_UID}.100", array), (f"{STUDY_UID}.200", second)):
        img = LoadImage(reader=SITKReader(series_uid=uid), image_only=True)(dicom)
        np.testing.assert_array_equal(img.numpy(), expected)
    with pytest.raises(ValueError, match="no series 1.2.3"):
        SITKReader(series_uid="1.2.3").read(dicom)


def test_folders_without_dicom(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'empty'} is empty"):
        SITKReader().read(tmp_path / "empty")
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "notes.txt").write_text("not a DICOM file")
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'text'} holds no DICOM series"):
        SITKReader().read(tmp_path / "text")


def test_load_pancreas_h5(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.standard_normal((9, 13, 7)).astype(np.float32)
    label = (image > 1).astype(np.uint8)
    path = tmp_path / "PANCREAS_0001.h5"
    with h5py.File(path, "w") as f:
        f["image"], f["label"] = image, label
    keys = ("image", "label")
    d = LoadPancreasH5d(keys)({"image": str(path), "label": str(path), "other": 1})
    assert d["other"] == 1
    for key, expected in (("image", image), ("label", label)):
        assert isinstance(d[key], MetaTensor) and d[key].dtype == torch.float32
        np.testing.assert_array_equal(d[key].numpy(), expected)
        np.testing.assert_array_equal(d[key].affine.numpy(), np.eye(4))
        assert d[key].meta["filename_or_obj"] == str(path)
    pipeline = Compose(
        [
            LoadPancreasH5d(keys),
            EnsureChannelFirstd(keys),
            Orientationd(keys, axcodes="RAS", labels=None),
            Spacingd(keys, pixdim=(2.0, 2.0, 2.0), mode=("bilinear", "nearest")),
        ]
    )
    out = pipeline({"image": path, "label": path})
    assert out["image"].shape == out["label"].shape == (1, 5, 7, 4)  # (n - 1) mm / 2 mm + 1
    np.testing.assert_allclose(out["label"].pixdim, (2.0, 2.0, 2.0))


def test_load_pancreas_h5_names_and_errors(tmp_path):
    path = tmp_path / "case.h5"
    with h5py.File(path, "w") as f:
        f["img"] = np.ones((3, 4, 5), np.float32)
        f["seg"] = np.zeros((3, 4, 5), np.uint8)
    load = LoadPancreasH5d(("image", "label"), dataset_names={"image": "img", "label": "seg"}, dtype=None)
    d = load({"image": path, "label": path})
    assert d["image"].dtype == torch.float32 and d["label"].dtype == torch.uint8
    assert d["label"].shape == (3, 4, 5)
    with pytest.raises(KeyError, match=f"{os.fspath(path)} has no dataset 'image'; it has: img, seg"):
        LoadPancreasH5d("image")({"image": path})
    with pytest.raises(FileNotFoundError, match="missing.h5"):
        LoadPancreasH5d("image")({"image": tmp_path / "missing.h5"})
