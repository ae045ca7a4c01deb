import functools
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import reference_manifest

from dlka_monai.convert import convert_checkpoint, convert_state_dict, main
from dlka_monai.networks import create_network

VARIANTS = ("dlka3d_synapse", "dlka3d_pancreas")
INPUT_SHAPE = {"dlka3d_synapse": (1, 1, 64, 128, 128), "dlka3d_pancreas": (1, 1, 96, 96, 96)}
N_PARAMS = {"dlka3d_synapse": 42_353_327, "dlka3d_pancreas": 62_067_079}
ROOT = Path(__file__).parents[1]


def _wrap(variant: str, state_dict: dict, module_prefix: bool) -> object:
    """The authors' file layout: nnU-Net .model dict for Synapse, plain state dict for Pancreas."""
    if module_prefix:  # saved from DataParallel
        state_dict = {f"module.{k}": v for k, v in state_dict.items()}
    return {"state_dict": state_dict, "epoch": 3} if variant == "dlka3d_synapse" else state_dict


@pytest.fixture(scope="module")
def build():
    """``build(variant, i)``: the i-th full-size net of ``variant``, built once per module."""
    return functools.cache(lambda variant, i=0: create_network(variant).eval())


@pytest.fixture(scope="module")
def authors():
    """``authors(variant)``: a random state dict with the authors' keys and shapes (from the manifest)."""

    @functools.cache
    def make(variant):
        gen = torch.Generator().manual_seed(VARIANTS.index(variant))

        def tensor(key, shape):
            if key.endswith("num_batches_tracked"):  # BatchNorm's step counter, a 0-dim int64
                return torch.randint(1000, (), generator=gen)
            if key.endswith("running_var"):  # positive, or eval-mode BatchNorm gives NaN
                return torch.rand(shape, generator=gen) + 0.5
            # scaled like PyTorch's default init so that the full net's activations stay finite
            scale = 0.1 if len(shape) == 1 else math.prod(shape[1:]) ** -0.5
            return (torch.rand(shape, generator=gen) * 2 - 1) * scale

        return {key: tensor(key, shape) for key, shape in reference_manifest(variant).items()}

    return make


@pytest.fixture(scope="module")
def authors_file(authors, tmp_path_factory):
    """``authors_file(variant, module_prefix)``: the synthetic checkpoint saved as the authors' file."""
    folder = tmp_path_factory.mktemp("authors")

    @functools.cache
    def save(variant, module_prefix=False):
        path = folder / f"{variant}{'_module' * module_prefix}.model"
        torch.save(_wrap(variant, authors(variant), module_prefix), path)
        return path

    return save


def mapping_by_order(variant: str, net: torch.nn.Module) -> dict[str, str]:
    """Authors' key -> our key, independent of the converter's rename rules: both state dicts list
    the tensors in module registration order, and the two models register their modules alike."""
    theirs = reference_manifest(variant)
    ours = net.state_dict()
    assert len(theirs) == len(ours)
    pairs = dict(zip(theirs, ours))
    for their_key, our_key in pairs.items():
        assert list(ours[our_key].shape) == theirs[their_key], (their_key, our_key)
    return pairs


def _check_loaded(variant: str, net: torch.nn.Module, source: dict) -> None:
    ours = net.state_dict()
    for their_key, our_key in mapping_by_order(variant, net).items():
        assert torch.equal(ours[our_key], source[their_key]), (their_key, our_key)


@pytest.mark.parametrize(
    "variant,module_prefix,via_cli",
    [
        ("dlka3d_synapse", False, True),
        ("dlka3d_synapse", True, False),
        ("dlka3d_pancreas", False, False),
        ("dlka3d_pancreas", True, False),
    ],
    ids=["synapse_cli", "synapse_module_prefix", "pancreas", "pancreas_module_prefix"],
)
def test_convert_checkpoint(variant, module_prefix, via_cli, build, authors, authors_file, tmp_path):
    src, dst = authors_file(variant, module_prefix), tmp_path / "sub" / "converted.pt"
    if via_cli:
        cmd = [sys.executable, "-m", "dlka_monai.convert", "--variant", variant, str(src), str(dst)]
        result = subprocess.run(cmd, capture_output=True, encoding="utf-8", errors="replace", cwd=ROOT)
        assert result.returncode == 0, result.stderr
        n_tensors = len(reference_manifest(variant))
        assert result.stdout == f"{variant}: wrote {n_tensors} tensors ({N_PARAMS[variant]:,} parameters) to {dst}\n"
    else:
        convert_checkpoint(src, dst, variant)
    net = build(variant)
    # strict; mmap + assign spare copying the 200 MB into the net (the key and shape checks are the same)
    net.load_state_dict(torch.load(dst, weights_only=True, mmap=True), assign=True)
    _check_loaded(variant, net, authors(variant))


def test_rules_map_the_manifest_one_to_one(build):
    for variant in VARIANTS:
        manifest = reference_manifest(variant)
        shapeless = {k: torch.empty(s, device="meta") for k, s in manifest.items()}
        converted = convert_state_dict(shapeless, variant)
        source_key = {id(t): k for k, t in shapeless.items()}
        renamed = {ours: source_key[id(t)] for ours, t in converted.items()}  # the converter returns the source tensors
        assert renamed == {ours: theirs for theirs, ours in mapping_by_order(variant, build(variant)).items()}


@pytest.mark.parametrize("variant", VARIANTS)
def test_mismatches_are_refused_naming_the_keys(variant, authors):
    source = authors(variant)
    keys = list(source)
    first, fourth = keys[0], keys[3]  # the patch embedding's and the second downsampling's conv weights

    missing = {k: v for k, v in source.items() if k != first}
    with pytest.raises(ValueError, match=r"missing key 'encoder\.downsample_layers\.0\.0\.conv\.weight'"):
        convert_state_dict(missing, variant)

    extra = {**source, "decoder2.decoder_block.1.conv3.conv.weight": torch.zeros(1)}
    with pytest.raises(ValueError, match=r"unmatched source key 'decoder2\.decoder_block\.1\.conv3\.conv\.weight'"):
        convert_state_dict(extra, variant)

    wrong = {**source, fourth: torch.zeros(7, 3)}
    with pytest.raises(ValueError, match=rf"shape mismatch for '{re.escape(fourth)}'.*source \[7, 3\], ours \[64, 32, 2, 2, 2\]"):
        convert_state_dict(wrong, variant)


def test_long_problem_lists_are_cut(authors):
    source = {f"x.{k}": v for k, v in authors("dlka3d_pancreas").items()}
    with pytest.raises(ValueError) as err:
        convert_state_dict(source, "dlka3d_pancreas")
    message = str(err.value)
    assert "unmatched source keys: 695, missing keys: 695" in message and "wrong variant?" in message
    assert "... and 685 more missing keys" in message and len(message.splitlines()) <= 23


def test_unknown_variant(capsys):
    with pytest.raises(ValueError, match="unknown variant 'dlka2d_nope'; known variants: dlka2d_synapse, dlka3d_pancreas, dlka3d_synapse"):
        convert_state_dict({}, "dlka2d_nope")
    with pytest.raises(SystemExit) as exit_info:
        main(["--variant", "dlka2d_nope", "in.model", "out.pt"])
    assert exit_info.value.code == 2 and "invalid choice: 'dlka2d_nope'" in capsys.readouterr().err


@pytest.mark.parametrize("unsafe", [np.float64(0.5), print], ids=["numpy_scalar", "function"])
def test_pickled_objects_are_refused(unsafe, tmp_path):
    src, dst = tmp_path / "model_final_checkpoint.model", tmp_path / "out.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "fn": unsafe}, src)
    with pytest.raises(ValueError, match="contains pickled Python objects .*can run arbitrary code.*trusted environment"):
        convert_checkpoint(src, dst, "dlka3d_synapse")
    assert not dst.exists()


def test_cli_error_exits_nonzero_without_traceback(tmp_path, capsys):
    src = tmp_path / "model_final_checkpoint.model"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "amp_grad_scaler": {"scale": np.float32(2.0**16)}}, src)
    assert main(["--variant", "dlka3d_synapse", str(src), str(tmp_path / "out.pt")]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(f"error: {src}: contains pickled Python objects (numpy.")
    assert len(err.splitlines()) == 1


def test_no_state_dict_in_the_file(tmp_path):
    src = tmp_path / "ckpt.pt"
    torch.save({"epoch": 3, "optimizer_state_dict": {}}, src)
    with pytest.raises(ValueError, match="not a state dict"):
        convert_checkpoint(src, tmp_path / "out.pt", "dlka3d_synapse")


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
def test_converted_net_computes_like_a_hand_loaded_net(variant, build, authors):
    source = authors(variant)
    converted, by_hand = build(variant, 0), build(variant, 1)
    converted.load_state_dict(convert_state_dict(source, variant))
    by_hand.load_state_dict({ours: source[theirs] for theirs, ours in mapping_by_order(variant, by_hand).items()})
    x = torch.randn(INPUT_SHAPE[variant])
    with torch.no_grad():
        out = converted(x)
        assert out.shape == (1, converted.out_channels, *INPUT_SHAPE[variant][2:]) and torch.isfinite(out).all()
        assert torch.equal(out, by_hand(x))


def test_2d_checkpoint_converts_and_drops_the_dead_modules(authors_2d, tmp_path):
    src, dst = tmp_path / "maxvit_dlka.pth", tmp_path / "converted.pt"
    torch.save(authors_2d, src)
    convert_checkpoint(src, dst, "dlka2d_synapse")
    converted = torch.load(dst, weights_only=True)
    net = create_network("dlka2d_synapse")
    net.load_state_dict(converted)  # strict: every key of ours, nothing else
    assert sum(p.numel() for p in net.parameters()) == 78_583_005
    dead = [k for k in authors_2d if k.startswith(("backbone.conv.", "decoder_3.x1_linear.", "decoder_3.layer_lka_"))]
    assert sum(authors_2d[k].numel() for k in dead) > 23_000_000  # the never-called modules
    # every converted tensor is one of the authors' live tensors, each used once
    live = {id(v) for k, v in authors_2d.items() if k not in dead}
    sources = [id(t) for t in convert_state_dict(authors_2d, "dlka2d_synapse").values()]
    assert len(sources) == len(set(sources)) == len(live) and set(sources) == live
    assert torch.equal(converted["encoder.stem.conv1.weight"], authors_2d["backbone.backbone.stem.conv1.weight"])
    assert torch.equal(converted["out.conv.conv.weight"], authors_2d["decoder_0.last_layer.weight"])


@pytest.fixture(scope="module")
def authors_2d():
    gen = torch.Generator().manual_seed(7)
    return {
        k: torch.randint(1000, (), generator=gen) if k.endswith("num_batches_tracked") else torch.rand(s, generator=gen)
        for k, s in reference_manifest("dlka2d_synapse").items()
    }
