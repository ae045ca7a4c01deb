"""InvertArgmaxd: the same label map as Invertd followed by the argmax, on real MONAI preprocessing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import (
    AsDiscreted,
    Compose,
    CropForegroundd,
    Invertd,
    Orientationd,
    ScaleIntensityRanged,
    Spacingd,
    SpatialPadd,
)

from dlka_monai.inference import InvertArgmaxd


def _image() -> MetaTensor:
    """A 1x40x36x12 CT-like volume on an LPS, anisotropic grid with a body in air."""
    rng = np.random.default_rng(0)
    array = np.full((1, 40, 36, 12), -1000.0, dtype=np.float32)
    array[:, 6:31, 9:29, 2:11] = rng.normal(40, 30, size=(1, 25, 20, 9))
    affine = np.diag([-0.8, -0.7, 2.5, 1.0])
    affine[:3, 3] = (12.0, -30.0, 100.0)
    return MetaTensor(torch.from_numpy(array), affine=torch.from_numpy(affine))


PIPELINES = {
    # as configs/inference.json: reorient, crop to the body, resample; the argmax precedes the uncrop
    "inference": lambda: [
        Orientationd("image", axcodes="SAR"),
        CropForegroundd("image", source_key="image", select_fn=lambda x: x > -175, allow_smaller=True),
        Spacingd("image", pixdim=(3.0, 1.1, 0.9), mode="bilinear"),
        ScaleIntensityRanged("image", a_min=-175, a_max=250, b_min=0.0, b_max=1.0, clip=True),
    ],
    # resampling first: everything is inverted on the scores
    "resample_first": lambda: [
        Spacingd("image", pixdim=(1.1, 0.9, 3.0), mode="bilinear"),
        Orientationd("image", axcodes="RAS"),
        SpatialPadd("image", spatial_size=(48, 48, 16)),
    ],
    # only voxel moves: everything is inverted on the label map
    "moves_only": lambda: [
        Orientationd("image", axcodes="SAR"),
        CropForegroundd("image", source_key="image", select_fn=lambda x: x > -175),
        SpatialPadd("image", spatial_size=(16, 32, 32)),
    ],
}


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_invert_argmax_equals_invert_then_argmax(name):
    preprocessing = Compose(PIPELINES[name]())
    data = preprocessing({"image": _image()})
    image = data["image"]
    torch.manual_seed(0)
    scores = torch.softmax(torch.randn(5, *image.shape[1:]) * 3, 0)

    def with_pred():
        return {**data, "pred": MetaTensor(scores.clone(), meta=image.meta)}

    expected = Compose(
        [
            Invertd("pred", preprocessing, orig_keys="image", nearest_interp=False),
            AsDiscreted("pred", argmax=True),
        ]
    )(with_pred())["pred"]
    got = InvertArgmaxd("pred", preprocessing, orig_key="image")(with_pred())["pred"]

    assert got.shape == (1, 40, 36, 12)
    assert torch.equal(got.as_tensor(), expected.as_tensor())
    np.testing.assert_allclose(got.affine, _image().affine)
    assert got.dtype == torch.float32
    # the label map holds classes other than the padding's 0 inside the body's box
    assert len(torch.unique(got)) == 5


def test_invert_argmax_splits_at_the_first_resampling_transform():
    transforms = PIPELINES["inference"]()
    t = InvertArgmaxd("pred", Compose(transforms), orig_key="image")
    assert t._invert_labels.transform.transforms == tuple(transforms[:2])
    assert t._invert_scores.transform.transforms == (transforms[2],)  # ScaleIntensityRanged has no inverse


def test_invert_argmax_needs_an_invertible_transform():
    with pytest.raises(ValueError, match="must be invertible"):
        InvertArgmaxd("pred", ScaleIntensityRanged("image", a_min=0, a_max=1, b_min=0, b_max=1), orig_key="image")


def test_ct_body_crop_drops_noisy_air_under_nnunet_ct_normalisation():
    from dlka_monai.data.transforms import foreground_select

    gen = torch.Generator().manual_seed(0)
    ct = -1000.0 + 40.0 * torch.randn(1, 40, 40, 10, generator=gen)  # air with scanner noise: above -958 here and there
    ct[:, 10:30, 12:28, 2:8] = 40.0  # the body
    body = foreground_select({"scheme": "ct", "clip": [-958.0, 326.0], "mean": 82.95, "std": 136.95})(ct)
    assert (ct > -958).sum() > body.sum()  # the clip floor alone would keep noisy air
    nz = body[0].nonzero()
    assert nz.min(0).values.tolist() == [10, 12, 2] and nz.max(0).values.tolist() == [29, 27, 7]
    # a plan's clip above -500 HU (e.g. from an MR-like or soft-tissue fingerprint) is the floor itself
    soft = foreground_select({"scheme": "ct", "clip": [-100.0, 300.0], "mean": 40.0, "std": 60.0})(ct)
    assert soft.sum() == body.sum()
