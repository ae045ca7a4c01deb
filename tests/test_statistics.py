"""label_statistics against hand-computed numbers; the statistics file's name beside an output."""

from pathlib import Path

import pytest
import torch
from monai.data import MetaTensor

from dlka_monai.inference.statistics import label_statistics, statistics_path, volume_summary


def test_label_statistics_match_hand_computed_values():
    affine = torch.tensor([[-2.0, 0, 0, 10], [0, 0.5, 0, -20], [0, 0, 3.0, 5], [0, 0, 0, 1]], dtype=torch.float64)  # RAS, x flipped
    labels = torch.zeros(1, 10, 8, 6)
    labels[0, 2:5, 1:3, 4] = 1  # 3 x 2 x 1 voxels
    labels[0, 9, 7, 0] = 7  # a value the names do not know
    image = torch.arange(10 * 8 * 6, dtype=torch.float32).reshape(1, 10, 8, 6)
    stats = label_statistics(MetaTensor(labels, affine=affine), {0: "background", 1: "spleen", 2: "liver"}, image)
    assert stats["voxel_volume_ml"] == pytest.approx(2 * 0.5 * 3 / 1000)
    assert list(stats["classes"]) == ["spleen", "liver", "7"]
    spleen = stats["classes"]["spleen"]
    inside = image[0, 2:5, 1:3, 4].double()
    assert spleen["label"] == 1 and spleen["voxels"] == 6 and spleen["volume_ml"] == pytest.approx(6 * 3e-3)
    assert spleen["intensity_mean"] == pytest.approx(float(inside.mean()))
    assert spleen["intensity_std"] == pytest.approx(float(inside.std(unbiased=False)))
    assert spleen["bounding_box_voxels"] == {"first": [2, 1, 4], "last": [4, 2, 4]}
    # RAS x = 10 - 2 i for i in 2..4: 6..2, so LPS x = -6..-2; RAS y = -20 + 0.5 j: -19.5..-19, LPS 19..19.5
    assert spleen["bounding_box_lps_mm"] == {"min": [-6.0, 19.0, 17.0], "max": [-2.0, 19.5, 17.0]}
    liver = stats["classes"]["liver"]
    assert liver["voxels"] == 0 and liver["intensity_mean"] is None and liver["bounding_box_lps_mm"] is None
    assert stats["classes"]["7"]["voxels"] == 1
    assert volume_summary(stats) == "spleen 0.0 mL, 7 0.0 mL"
    no_image = label_statistics(MetaTensor(labels, affine=affine), {1: "spleen"})
    assert no_image["classes"]["spleen"]["intensity_mean"] is None and no_image["classes"]["spleen"]["volume_ml"] == spleen["volume_ml"]
    with pytest.raises(ValueError, match="differ in shape"):
        label_statistics(MetaTensor(labels, affine=affine), {1: "spleen"}, image[..., :5])


def test_volume_summary_of_nothing_and_statistics_path():
    stats = label_statistics(MetaTensor(torch.zeros(4, 4, 4), affine=torch.eye(4)), {1: "spleen"})
    assert volume_summary(stats) == "nothing found"
    assert statistics_path("out/ct_seg.nii.gz") == Path("out/ct_statistics.json")
    assert statistics_path("out/ct_seg.dcm") == Path("out/ct_statistics.json")
    assert statistics_path("scan.nii") == Path("scan_statistics.json")
