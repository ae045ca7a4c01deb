import argparse
import functools
import math
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from utils import reference_manifest

from dlka_monai.convert import convert_checkpoint, convert_state_dict, main
from dlka_monai.networks import create_network
from dlka_monai.weights import safe_load

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
    """``build(variant)``: the full-size net of ``variant`` on the meta device (names and shapes; weights
    come with ``load_state_dict(..., assign=True)``), built once per module."""

    def make(variant):
        with torch.device("meta"):
            return create_network(variant).eval()

    return functools.cache(make)


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
    model = torch.load(dst, weights_only=True, mmap=True)
    assert model["plan"]["preset"] == variant  # the converted model carries its preset's plan
    net.load_state_dict(model["model"], assign=True)
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


def _small_state_dict(variant: str) -> dict[str, torch.Tensor]:
    """The authors' keys and shapes for ``variant`` at a few bytes each: key i holds the value i,
    expanded to its shape (torch.save keeps the one-element storage and the zero strides)."""
    return {k: torch.tensor(float(i)).expand(s) for i, (k, s) in enumerate(reference_manifest(variant).items())}


def _optimizer_state() -> dict:
    """An SGD state dict as nnU-Net's trainer saves it: momentum buffers and float hyper-parameters."""
    w = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([w], lr=0.01, momentum=0.99, nesterov=True, weight_decay=3e-5)
    w.sum().backward()
    opt.step()
    return opt.state_dict()


def _authors_layout(layout: str, state_dict: dict) -> object:
    """What the authors' trainers save (xmindflow/deformableLKA): ``nnunet`` is
    NetworkTrainer_synapse.save_checkpoint of the 3D Synapse code (``np.mean`` values of float32 losses
    and float64 Dice in ``plot_stuff``/``best_stuff``); the Pancreas and 2D trainers save
    ``model.state_dict()``, with ``module.`` keys when the 2D one ran under DataParallel."""
    if layout == "nnunet":
        return {
            "epoch": 1000,
            "state_dict": state_dict,
            "optimizer_state_dict": _optimizer_state(),
            "lr_scheduler_state_dict": None,  # poly lr, no scheduler object
            "plot_stuff": (
                [np.mean([np.float32(0.9), np.float32(0.7)]), np.float32(0.5)],  # training losses
                [np.float32(0.6)],  # validation losses
                [],  # validation losses in train mode (unused)
                [np.mean([0.71, 0.8]), np.float64(0.83)],  # online-evaluation Dice
            ),
            "best_stuff": (999, np.float32(0.41), np.float64(0.82)),
            "amp_grad_scaler": torch.amp.GradScaler("cpu").state_dict(),
        }
    if layout == "data_parallel":
        return {f"module.{k}": v for k, v in state_dict.items()}
    return state_dict


@pytest.mark.parametrize(
    "variant,layout",
    [("dlka3d_synapse", "nnunet"), ("dlka3d_pancreas", "state_dict"), ("dlka2d_synapse", "data_parallel")],
)
def test_authors_training_checkpoints_convert_weights_only(variant, layout, build, tmp_path):
    source = _small_state_dict(variant)
    src, dst = tmp_path / "authors.model", tmp_path / "converted.pt"
    torch.save(_authors_layout(layout, source), src)
    if layout == "nnunet":
        assert "numpy._core.multiarray.scalar" in torch.serialization.get_unsafe_globals_in_checkpoint(src)
    assert main(["--variant", variant, str(src), str(dst)]) == 0
    converted = torch.load(dst, weights_only=True)["model"]
    if variant == "dlka2d_synapse":  # the never-called modules are dropped
        assert len(converted) < len(source)
        for our_key, their_key in [("encoder.stem.conv1.weight", "backbone.backbone.stem.conv1.weight"),
                                   ("out.conv.conv.weight", "decoder_0.last_layer.weight")]:
            assert torch.equal(converted[our_key], source[their_key])
        return
    net = build(variant)
    for their_key, our_key in mapping_by_order(variant, net).items():
        assert torch.equal(converted[our_key], source[their_key]), (their_key, our_key)


def _with_numpy_1_names(src: Path, dst: Path) -> None:
    """``src`` as numpy 1 pickles it: its scalar reconstructor is ``numpy.core.multiarray.scalar``."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename.endswith("/data.pkl"):
                assert b"numpy._core.multiarray\nscalar" in data
                data = data.replace(b"numpy._core.multiarray\nscalar", b"numpy.core.multiarray\nscalar")
            zout.writestr(info, data)


def test_numpy_1_checkpoints_convert(tmp_path):
    source = _small_state_dict("dlka3d_pancreas")
    numpy2, numpy1 = tmp_path / "numpy2.model", tmp_path / "numpy1.model"
    torch.save(_authors_layout("nnunet", source), numpy2)
    _with_numpy_1_names(numpy2, numpy1)
    assert "numpy.core.multiarray.scalar" in torch.serialization.get_unsafe_globals_in_checkpoint(numpy1)
    converted = convert_checkpoint(numpy1, tmp_path / "out.pt", "dlka3d_pancreas")
    assert len(converted) == len(source)
    assert safe_load(numpy1, allow_numpy_scalars=True)["plot_stuff"][3] == [np.float64(0.755), np.float64(0.83)]


class _Exploit:
    """Unpickles as a call of os.system: what a malicious checkpoint carries."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("payload", ["os.system", "eval", "print", "class", "ndarray"])
def test_pickled_code_is_refused_next_to_numpy_scalars(payload, tmp_path, capsys):
    marker = tmp_path / "PWNED"
    unsafe = {
        "os.system": (_Exploit(marker), "posix.system" if os.name == "posix" else "nt.system"),
        "eval": (eval, "builtins.eval"),
        "print": (print, "builtins.print"),
        "class": (argparse.Namespace(lr=0.01), "argparse.Namespace"),
        "ndarray": (np.zeros(2), "numpy._core.multiarray._reconstruct, numpy.ndarray"),  # scalars only, not arrays
    }
    obj, listed = unsafe[payload]
    ckpt = _authors_layout("nnunet", {"w": torch.zeros(2)})
    src, dst = tmp_path / "model_final_checkpoint.model", tmp_path / "out.pt"
    torch.save({**ckpt, "extra": obj}, src)
    assert main(["--variant", "dlka3d_synapse", str(src), str(dst)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1
    # the numpy scalars and dtypes were allowed: only the payload is listed
    assert err.startswith(f"python -m dlka_monai.convert: error: {src}: contains pickled Python objects ({listed}), ")
    assert "can run arbitrary code" in err
    assert not dst.exists() and not marker.exists()


def test_numpy_scalars_are_allowed_only_where_asked(tmp_path):
    src = tmp_path / "curves.pt"
    torch.save({"loss": np.float64(0.5)}, src)
    before = torch.serialization.get_safe_globals()
    assert safe_load(src, allow_numpy_scalars=True) == {"loss": 0.5}
    # scoped to that load (as a set: torch may restore the list in another order)
    assert set(map(str, torch.serialization.get_safe_globals())) == set(map(str, before))
    # (numpy.dtypes.Float64DType follows once another module has imported numpy.dtypes)
    with pytest.raises(ValueError, match=r"contains pickled Python objects \(numpy\._core\.multiarray\.scalar, numpy\.dtype"):
        safe_load(src)
    # numpy's object dtype would unpickle arbitrary objects: refused
    torch.save({"dtype": np.dtype(object)}, src)
    with pytest.raises(ValueError, match="cannot be read with torch.load"):
        safe_load(src, allow_numpy_scalars=True)


def test_no_state_dict_in_the_file(tmp_path):
    src = tmp_path / "ckpt.pt"
    torch.save({"epoch": 3, "optimizer_state_dict": {}}, src)
    with pytest.raises(ValueError, match="not a state dict"):
        convert_checkpoint(src, tmp_path / "out.pt", "dlka3d_synapse")


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
def test_converted_net_computes_like_a_hand_loaded_net(variant, authors):
    source = authors(variant)
    converted, by_hand = (create_network(variant).eval() for _ in range(2))
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
    converted = torch.load(dst, weights_only=True)["model"]
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
