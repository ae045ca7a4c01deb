"""dlka-segment --precision / --threads and the inference config's ``precision`` id, on a tiny model."""

import nibabel as nib
import numpy as np
import pytest

from dlka_monai.runtime import cpu_has_native_bf16
from dlka_monai.segment import main


def test_cli_precision_is_a_setting_and_says_what_ran(tiny_bundle, demo_dataset, tmp_path, capsys):
    image = demo_dataset / "imagesTr" / "demo_006.nii.gz"
    labels = {}
    for precision in ("fp32", "bf16", "auto"):
        out = tmp_path / f"{precision}.nii.gz"
        args = ["-i", str(image), "-o", str(out), "--model", str(tiny_bundle), "--device", "cpu", "--precision", precision]
        assert main([*args, "--threads", "1"]) == 0
        printed = capsys.readouterr().out
        expected = {"fp32": "precision fp32 on cpu", "bf16": "precision bf16 autocast on cpu"}.get(precision)
        if precision == "auto":
            expected = "precision bf16 autocast on cpu (auto:" if cpu_has_native_bf16() else "precision fp32 on cpu (auto:"
        assert expected in printed, printed
        labels[precision] = np.asarray(nib.load(out).dataobj)
    # same labels up to the rounding of bf16 (the tiny random model's logits are nearly tied: a loose bound)
    assert labels["fp32"].shape == labels["bf16"].shape
    assert (labels["fp32"] == labels["bf16"]).mean() > 0.9
    assert np.array_equal(labels["auto"], labels["bf16" if cpu_has_native_bf16() else "fp32"])


@pytest.mark.parametrize("flag, value", [("--precision", "half"), ("--threads", "many")])
def test_cli_bad_precision_or_threads_is_a_usage_error(tiny_bundle, demo_dataset, tmp_path, flag, value, capsys):
    image = demo_dataset / "imagesTr" / "demo_006.nii.gz"
    with pytest.raises(SystemExit) as e:
        main(["-i", str(image), "-o", str(tmp_path / "o.nii.gz"), "--model", str(tiny_bundle), flag, value])
    assert e.value.code == 2 and flag in capsys.readouterr().err
    assert not (tmp_path / "o.nii.gz").exists()
