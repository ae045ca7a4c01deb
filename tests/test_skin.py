"""Skin-lesion segmentation (issue 19): the dlka2d_skin preset, the ISIC 2017 / ISIC 2018 / PH2 datalists in
their distributed folder layouts, the loading transforms, the demo generator, a tiny training step through
configs/skin.json, image inference at the original size, and the skin metrics and overlays."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.handlers import LrScheduleHandler
from monai.transforms import Compose
from PIL import Image
from torch import nn

from dlka_monai.data import InvalidInputError
from dlka_monai.data.skin import AUTHORS_SPLITS, _split, detect_skin_layout, skin_datalist, skin_load_transforms, skin_pairs
from dlka_monai.data.skin_demo import generate_skin_demo
from dlka_monai.evaluation.skin import (
    LABEL_COLOR,
    PRED_COLOR,
    confusion_counts,
    contour_overlay,
    evaluate_skin,
    evaluate_skin_model,
    skin_metrics,
    summarize_skin,
)
from dlka_monai.inference.skin import segment_images
from dlka_monai.networks import create_network, get_preset
from dlka_monai.plan import make_plan
from dlka_monai.training.finetune import init_from_model
from utils import TINY_2D

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TINY_SKIN = TINY_2D
W, H = 52, 40  # photographs of the tests: wider than high, so that a swapped axis shows


def _photo(path, size=(W, H), seed=0):
    """An RGB photograph whose left half is bright and right half dark, and the mask of its left half
    (grey 200; a faint 100 elsewhere, which is background)."""
    rng = np.random.default_rng(seed)
    w, h = size
    image = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
    image[:, : w // 2] += 180
    Image.fromarray(image).save(path)
    mask = np.full((h, w), 100, np.uint8)
    mask[:, : w // 2] = 200
    return mask


def _save_mask(mask, path):
    Image.fromarray(mask).save(path)


def _isic2018(root, n=10):
    images, masks = root / "ISIC2018_Task1-2_Training_Input", root / "ISIC2018_Task1_Training_GroundTruth"
    images.mkdir(parents=True)
    masks.mkdir()
    for i in range(n):
        _save_mask(_photo(images / f"ISIC_{i:07d}.jpg", seed=i), masks / f"ISIC_{i:07d}_segmentation.png")
    (images / "LICENSE.txt").write_text("not an image")
    return root


def _isic2017(root):
    counts = {"Training": 5, "Validation": 2, "Test_v2": 3}
    start = 0
    for part, n in counts.items():
        images, masks = root / f"ISIC-2017_{part}_Data", root / f"ISIC-2017_{part}_Part1_GroundTruth"
        images.mkdir(parents=True)
        masks.mkdir()
        for i in range(start, start + n):
            _save_mask(_photo(images / f"ISIC_{i:07d}.jpg", seed=i), masks / f"ISIC_{i:07d}_segmentation.png")
            # the training folder of the archive holds superpixel maps too: not images to segment
            Image.new("RGB", (W, H)).save(images / f"ISIC_{i:07d}_superpixels.png")
        start += n
    return root


def _ph2(root, n=10):
    base = root / "PH2Dataset" / "PH2 Dataset images"
    for i in range(n):
        case = base / f"IMD{i:03d}"
        (case / f"IMD{i:03d}_Dermoscopic_Image").mkdir(parents=True)
        (case / f"IMD{i:03d}_lesion").mkdir()
        mask = _photo(case / f"IMD{i:03d}_Dermoscopic_Image" / f"IMD{i:03d}.bmp", seed=i)
        _save_mask(mask, case / f"IMD{i:03d}_lesion" / f"IMD{i:03d}_lesion.bmp")
    return root


def test_preset_and_plan():
    preset = get_preset("dlka2d_skin")
    assert (preset.args["in_channels"], preset.args["out_channels"], preset.args["img_size"]) == (3, 2, 224)
    assert preset.axcodes is None and preset.pixdim is None and preset.modality == "RGB"
    plan = make_plan("dlka2d_skin")
    assert plan["class_names"] == {"0": "background", "1": "lesion"} and plan["pixdim"] is None
    assert "pretrained_encoder" not in plan["network"]
    with torch.device("meta"):
        net = create_network("dlka2d_skin")
    assert net.encoder.stem.conv1.in_channels == 3 and net.out.conv.conv.out_channels == 2


def test_authors_split_sizes():
    for layout, counts in AUTHORS_SPLITS.items():
        parts = _split(list(range(sum(counts))), counts)
        assert tuple(map(len, parts)) == counts, layout
    assert [p[:1] for p in _split(list(range(2594)), AUTHORS_SPLITS["isic2018"])] == [[0], [1815], [2074]]
    # another number of images: the same proportions, in order, nothing lost
    parts = _split(list(range(10)), AUTHORS_SPLITS["isic2018"])
    assert tuple(map(len, parts)) == (7, 1, 2) and sum(parts, []) == list(range(10))


def test_isic2018_layout(tmp_path):
    root = _isic2018(tmp_path / "isic18")
    assert detect_skin_layout(root) == "isic2018"
    data = skin_datalist(root)
    assert tuple(len(data[k]) for k in ("training", "validation", "test")) == (7, 1, 2)
    items = data["training"] + data["validation"] + data["test"]
    assert [Path(e["image"]).name for e in items] == [f"ISIC_{i:07d}.jpg" for i in range(10)]
    assert all(Path(e["label"]).name == Path(e["image"]).stem + "_segmentation.png" for e in items)


def test_isic2017_layout(tmp_path):
    root = _isic2017(tmp_path / "isic17")
    assert detect_skin_layout(root) == "isic2017"
    pairs = skin_pairs(root)
    assert {k: len(v) for k, v in pairs.items()} == {"training": 5, "validation": 2, "test": 3}
    assert not any("superpixels" in e["image"] for v in pairs.values() for e in v)
    official = skin_datalist(root, split="official")
    assert [Path(e["image"]).name for e in official["validation"]] == ["ISIC_0000005.jpg", "ISIC_0000006.jpg"]
    assert len(official["test"]) == 3 and all("Test_v2_Part1_GroundTruth" in e["label"] for e in official["test"])
    authors = skin_datalist(root)  # the training folder only, cut 1399 : 200 : 401
    assert sum(len(v) for v in authors.values()) == 5 and all("Training_Data" in e["image"] for e in authors["test"])
    with pytest.raises(InvalidInputError, match="official"):
        skin_datalist(_isic2018(tmp_path / "isic18"), split="official")


def test_ph2_layout_and_seeded_split(tmp_path):
    root = _ph2(tmp_path / "ph2")
    assert detect_skin_layout(root) == "ph2"
    data = skin_datalist(root, seed=0)
    assert tuple(len(data[k]) for k in ("training", "validation", "test")) == (4, 1, 5)
    names = sorted(Path(e["image"]).name for v in data.values() for e in v)
    assert names == [f"IMD{i:03d}.bmp" for i in range(10)]
    assert all(Path(e["label"]).name == Path(e["image"]).stem + "_lesion.bmp" for v in data.values() for e in v)
    assert skin_datalist(root, seed=0) == data
    assert skin_datalist(root, seed=1) != data


@pytest.mark.parametrize("make", [_isic2018, _isic2017, _ph2])
def test_missing_or_mismatched_mask_is_refused_in_one_line(tmp_path, make):
    root = make(tmp_path / "set")
    first = skin_pairs(root)
    mask = Path(next(iter(first.values()))[0]["label"])
    Image.new("L", (W + 1, H)).save(mask)  # same name and format, another size
    with pytest.raises(InvalidInputError, match=rf"{mask.name}: mask of {W + 1}×{H} pixels, but its image .* is {W}×{H}") as e:
        skin_pairs(root)
    assert "\n" not in str(e.value)
    mask.unlink()
    with pytest.raises(InvalidInputError, match=rf"no ground-truth mask .*{mask.name}") as e:
        skin_datalist(root)
    assert "\n" not in str(e.value)


def test_not_a_skin_folder(tmp_path):
    with pytest.raises(InvalidInputError, match="not an ISIC 2018, ISIC 2017 or PH2 folder"):
        detect_skin_layout(tmp_path)
    with pytest.raises(InvalidInputError, match="no such dataset folder"):
        detect_skin_layout(tmp_path / "missing")


def test_load_transforms_rgb_binary_mask_resized(tmp_path):
    mask = _photo(tmp_path / "a.jpg")
    _save_mask(mask, tmp_path / "a_segmentation.png")
    load = Compose(skin_load_transforms(get_preset("dlka2d_skin").normalization, img_size=(32, 64)))
    out = load({"image": str(tmp_path / "a.jpg"), "label": str(tmp_path / "a_segmentation.png")})
    image, label = out["image"], out["label"]
    assert image.shape == (3, 32, 64) and label.shape == (1, 32, 64)
    # the authors' per-image stretch to 0..255
    assert float(image.min()) == pytest.approx(0.0) and float(image.max()) == pytest.approx(255.0)
    # grey 200 is lesion, grey 100 is not; rows stay rows (left half lesion)
    assert set(np.unique(label.numpy())) == {0.0, 1.0}
    assert label[0, :, :32].all() and not label[0, :, 32:].any()
    assert float(image[:, :, :32].mean()) > float(image[:, :, 32:].mean()) + 100


def test_demo_generator_is_deterministic_and_reads_as_isic2018(tmp_path):
    a, b = generate_skin_demo(tmp_path / "a", num_images=4, seed=3), generate_skin_demo(tmp_path / "b", num_images=4, seed=3)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len(files) == 8 and all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    data = skin_datalist(a, counts=(2, 1, 1))
    assert detect_skin_layout(a) == "isic2018" and tuple(map(len, data.values())) == (2, 1, 1)
    item = data["training"][0]
    mask = np.asarray(Image.open(item["label"]))
    assert set(np.unique(mask)) == {0, 255} and 0.02 < (mask > 0).mean() < 0.5
    photo = np.asarray(Image.open(item["image"])).astype(float)
    # the lesion is darker than the skin around it
    assert photo[mask > 0].mean() < photo[mask == 0].mean() - 20


def test_tiny_training_step_through_the_skin_overlay(tmp_path):
    root = _isic2018(tmp_path / "isic18", n=6)
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.json"), str(CONFIGS / "skin.json")])
    tiny = {"img_size": TINY_SKIN["img_size"], "network_def#encoder": TINY_SKIN["encoder"]}
    parser.update({"dataset_dir": str(root), "bundle_root": str(tmp_path), "batch_size": 2, **tiny, "device": "cpu"})
    loader = parser.get_parsed_content("train#dataloader")
    net, loss_fn, opt = (parser.get_parsed_content(k) for k in ("network", "loss", "optimizer"))
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["momentum"] == 0.9 and opt.defaults["weight_decay"] == 1e-4
    assert isinstance(parser.get_parsed_content("lr_scheduler"), torch.optim.lr_scheduler.ReduceLROnPlateau)
    # the plateau schedule is stepped by the validation's Dice, not by the trainer's epochs
    assert not any(isinstance(h, LrScheduleHandler) for h in parser.get_parsed_content("train#trainer#train_handlers"))
    assert any(isinstance(h, LrScheduleHandler) for h in parser.get_parsed_content("validate#evaluator#val_handlers"))
    batch = next(iter(loader))
    assert batch["image"].shape == (2, 3, 64, 64) and batch["label"].shape == (2, 1, 64, 64)
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    net.train()
    loss = loss_fn(net(batch["image"]), batch["label"])
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert torch.isfinite(loss) and loss.item() > 0
    assert any(not torch.equal(before[n], p) for n, p in net.named_parameters() if n.startswith("out."))


def test_finetune_loads_weights_and_refuses_others(tmp_path):
    torch.manual_seed(0)
    source = create_network("dlka2d_skin", **TINY_SKIN)
    torch.save({"model": source.state_dict()}, tmp_path / "isic2017.pt")
    target = init_from_model(create_network("dlka2d_skin", **TINY_SKIN), tmp_path / "isic2017.pt")
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), target.state_dict().values()))
    with pytest.raises(InvalidInputError, match="isic2017.pt: holds the weights of"):
        init_from_model(create_network("dlka2d_skin", out_channels=3, **TINY_SKIN), tmp_path / "isic2017.pt")


class _RedLesion(nn.Module):
    """Lesion where the normalised red channel is above mid-range: a fixed 'model' whose masks are known."""

    img_size = (64, 64)

    def forward(self, x):
        lesion = x[:, :1] - 127.5
        return torch.cat([torch.zeros_like(lesion), lesion], 1)


def test_inference_writes_masks_at_the_original_size(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    sizes = {"a.jpg": (52, 40), "b.png": (47, 33), "c.bmp": (64, 64)}
    for name, size in sizes.items():
        _photo(folder / name, size=size)
    normalization = get_preset("dlka2d_skin").normalization
    written = segment_images(folder, _RedLesion(), tmp_path / "out", normalization)
    assert [p.name for p in written] == ["a_segmentation.png", "b_segmentation.png", "c_segmentation.png"]
    for path, (w, h) in zip(written, sizes.values()):
        mask = np.asarray(Image.open(path))
        assert mask.shape == (h, w) and set(np.unique(mask)) <= {0, 255}
        # the bright left half is lesion, the dark right half not (a pixel of blur at the edge allowed)
        assert (mask[:, : w // 2 - 1] == 255).all() and (mask[:, w // 2 + 1 :] == 0).all()
    # a real (tiny, untrained) network: any mask, but at the image's size
    torch.manual_seed(0)
    one = segment_images(folder / "b.png", create_network("dlka2d_skin", **TINY_SKIN), tmp_path / "net", normalization)
    assert np.asarray(Image.open(one[0])).shape == (33, 47)
    notes = tmp_path / "notes.txt"
    notes.write_text("x")
    with pytest.raises(InvalidInputError, match="notes.txt: not a .jpg"):
        segment_images(notes, _RedLesion(), tmp_path / "out", normalization)


def test_metrics_match_hand_computed_values():
    label = np.zeros((10, 10), bool)
    label[2:6, 2:6] = True  # 16 lesion pixels
    pred = np.zeros((10, 10), bool)
    pred[3:7, 3:8] = True  # 4×5 = 20 predicted, rows 3-5 × columns 3-5 = 9 of them in the lesion
    counts = confusion_counts(pred, label)
    assert counts == {"tp": 9, "fp": 11, "fn": 7, "tn": 73}
    m = skin_metrics(counts)
    assert m["dice"] == pytest.approx(18 / 36)
    assert m["sensitivity"] == pytest.approx(9 / 16)
    assert m["specificity"] == pytest.approx(73 / 84)
    assert m["accuracy"] == pytest.approx(82 / 100)
    empty = skin_metrics(confusion_counts(np.zeros((4, 4)), np.zeros((4, 4))))
    assert empty["dice"] == 1.0 and np.isnan(empty["sensitivity"]) and empty["specificity"] == 1.0
    records = [{**m, **counts}, {**empty, **confusion_counts(np.zeros((4, 4)), np.zeros((4, 4)))}]
    summary = summarize_skin(records)
    assert summary["images"] == 2
    assert summary["mean"]["dice"] == pytest.approx((18 / 36 + 1) / 2)
    assert summary["mean"]["sensitivity"] == pytest.approx(9 / 16)  # the NaN is left out
    # pooled: all 116 pixels together
    assert summary["pooled"]["accuracy"] == pytest.approx((82 + 16) / 116)
    assert summary["pooled"]["specificity"] == pytest.approx((73 + 16) / (84 + 16))


def test_evaluation_writes_table_summary_and_contour_overlays(tmp_path):
    mask = _photo(tmp_path / "a.jpg") > 127
    Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / "a_gt.png")
    pred = np.zeros_like(mask)
    pred[5:30, 5:20] = True
    Image.fromarray(pred.astype(np.uint8) * 255).save(tmp_path / "a_pred.png")
    items = [{"image": str(tmp_path / "a.jpg"), "label": str(tmp_path / "a_gt.png"), "pred": str(tmp_path / "a_pred.png")}]
    summary = evaluate_skin(items, tmp_path / "eval")
    expected = skin_metrics(confusion_counts(pred, mask))
    assert summary["mean"]["dice"] == pytest.approx(expected["dice"])
    rows = list(csv.DictReader(open(tmp_path / "eval" / "skin_metrics.csv")))
    assert len(rows) == 1 and float(rows[0]["dice"]) == pytest.approx(expected["dice"])
    assert json.loads((tmp_path / "eval" / "skin_summary.json").read_text())["images"] == 1
    overlay = np.asarray(Image.open(tmp_path / "eval" / "overlays" / "a.png"))
    assert overlay.shape == (H, W, 3)
    red, green = (overlay == PRED_COLOR).all(-1), (overlay == LABEL_COLOR).all(-1)
    assert red[5, 10] and red[29, 10] and red[15, 5] and red[15, 19] and not red[15, 12]
    assert green[20, 25] and not green[20, 10]  # the lesion's right border, not its inside
    direct = contour_overlay(np.zeros((8, 8, 3), np.uint8), np.ones((8, 8)), None, width=1)
    assert (direct[0] == PRED_COLOR).all() and (direct[4, 4] == 0).all()


def test_evaluate_model_on_a_test_split(tmp_path):
    data = skin_datalist(_isic2018(tmp_path / "isic18"))
    summary = evaluate_skin_model(_RedLesion(), data["test"], tmp_path / "test", get_preset("dlka2d_skin").normalization)
    # the fixed model finds the bright left half, which is the lesion: right up to a pixel of the border
    assert summary["images"] == 2 and summary["pooled"]["dice"] > 0.95
    assert sorted(p.name for p in (tmp_path / "test" / "masks").iterdir()) == ["ISIC_0000008_segmentation.png", "ISIC_0000009_segmentation.png"]
    assert len(list((tmp_path / "test" / "overlays").glob("*.png"))) == 2


def test_dlka_segment_writes_lesion_masks_of_a_skin_model(tmp_path, capsys):
    from utils import save_tiny_model

    from dlka_monai.segment import main

    folder = tmp_path / "photos"
    folder.mkdir()
    sizes = {"a.jpg": (52, 40), "b.bmp": (47, 33)}
    for name, size in sizes.items():
        _photo(folder / name, size=size)
    model = tmp_path / "skin.pt"
    save_tiny_model(model, "dlka2d_skin", **TINY_SKIN)
    assert main(["-i", str(folder), "-o", str(tmp_path / "masks"), "--model", str(model)]) == 0
    out = capsys.readouterr().out
    for name, (w, h) in sizes.items():
        mask = tmp_path / "masks" / f"{Path(name).stem}_segmentation.png"
        assert f"{name} -> {mask}" in out
        assert np.asarray(Image.open(mask)).shape == (h, w)
