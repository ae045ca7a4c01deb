# Copyright (c) dlka_monai contributors. Licensed under the Apache License, Version 2.0.
"""Convert the D-LKA authors' released checkpoints to the state dicts of this package's networks.

Usage::

    python -m dlka_monai.convert --variant dlka3d_synapse model_final_checkpoint.model dlka3d_synapse.pt

The output is a model file, ``{"model": state_dict, "plan": plan}`` with the plan of the variant's preset
(:mod:`dlka_monai.plan`): the authors' preprocessing (for 3D Synapse nnU-Net's CT normalisation with the
Task002 values at 3.0 × 0.758 × 0.758 mm; for 2D Synapse HU [-125, 275] -> [-1, 1]) and, under ``recipe``,
the authors' recipe the weights were trained with; as every model the project writes: ``dlka_monai.weights.load_model(dst)`` rebuilds
the network with its weights, and ``dlka-segment --model dst`` segments with it.
"""

from __future__ import annotations

import functools
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from dlka_monai.cli import ArgumentParser, one_line_errors
from dlka_monai.plan import preset_plan
from dlka_monai.weights import safe_load

__all__ = ["convert_state_dict", "convert_checkpoint", "converted_plan", "main"]

# Rename rules, (regex, replacement) applied in order with ``re.sub`` to every source key; a key no rule
# touches keeps its name (``encoder1.*``, ``decoderN.transp_conv.*``, ``out1/2/3.*``, the encoder's
# ``downsample_layers`` after the prefix rule). Derived from the authors' key/shape manifests in
# tests/data, aligned with our networks' state dicts in registration order.
_DLKA3D_RULES: tuple[tuple[str, str], ...] = (
    # the authors wrap each decoder stage's blocks in a one-element ModuleList/Sequential
    # (``decoder_block.0``); we register them directly as ``blocks`` (decoder2's is a conv ResBlock)
    (r"^decoder([2-5])\.decoder_block\.0\.", r"decoder\1.blocks."),
    # inside every D-LKA block: attention, 3x3x3 conv ResBlock and the final 1x1 conv projection
    (r"^(encoder\.stages\.\d+\.\d+|decoder[3-5]\.blocks\.\d+)\.epa_block\.", r"\1.attn."),
    (r"^(encoder\.stages\.\d+\.\d+|decoder[3-5]\.blocks\.\d+)\.conv51\.", r"\1.conv_block."),
    (r"^(encoder\.stages\.\d+\.\d+|decoder[3-5]\.blocks\.\d+)\.conv8\.", r"\1.proj."),
)

# the 2D net: timm MaxViT encoder under ``backbone.backbone``, decoder stages ``decoder_0..3``
_DLKA2D_RULES: tuple[tuple[str, str], ...] = (
    (r"^backbone\.backbone\.", "encoder."),
    (r"^decoder_3\.layer_up\.", "bottleneck_up."),  # before the general layer_up rule
    (r"^decoder_(\d)\.x1_linear\.", r"decoder\1.in_proj."),
    (r"^decoder_(\d)\.layer_lka_1\.", r"decoder\1.blocks.0."),
    (r"^decoder_(\d)\.layer_lka_2\.", r"decoder\1.blocks.1."),
    (r"^decoder_(\d)\.layer_up\.", r"decoder\1.upsample."),
    (r"^decoder_0\.last_layer\.", "out.conv.conv."),
    (r"\.layer_scale_(\d)$", r".gamma\1"),
    (r"\.mlp\.dwconv\.dwconv\.", ".mlp.dwconv."),
)

# variant (also the ``create_network`` name) -> rename rules
_RENAME_RULES: dict[str, tuple[tuple[str, str], ...]] = {
    # the Synapse model was released from the D-LKA code base, whose encoder is ``d_lka_former_encoder``
    "dlka3d_synapse": ((r"^d_lka_former_encoder\.", "encoder."), *_DLKA3D_RULES),
    # the Pancreas model kept the UNETR++ encoder attribute name
    "dlka3d_pancreas": ((r"^unetr_pp_encoder\.", "encoder."), *_DLKA3D_RULES),
    "dlka2d_synapse": _DLKA2D_RULES,
}

# source keys of modules the authors' forward never calls (23.06 M parameters in the 2D net, and an
# unused 1->3 channel conv); our networks do not have them, so they are dropped, not refused
_DEAD_KEYS: dict[str, str] = {
    "dlka2d_synapse": r"^(backbone\.conv\.|decoder_3\.(x1_linear|layer_lka_1|layer_lka_2)\.)",
}

# where the weights sit in the checkpoint dicts we accept: the authors' 3D Synapse trainer (nnU-Net v1)
# saves "state_dict" next to "epoch", "optimizer_state_dict", "lr_scheduler_state_dict", "amp_grad_scaler",
# "plot_stuff" and "best_stuff"; their Pancreas and 2D trainers save the bare state dict
_CONTAINER_KEYS = ("state_dict", "model", "network_weights")
_MAX_LISTED = 20


def _rules(variant: str) -> list[tuple[re.Pattern, str]]:
    if variant not in _RENAME_RULES:
        raise ValueError(f"unknown variant {variant!r}; known variants: {', '.join(sorted(_RENAME_RULES))}.")
    return [(re.compile(pattern), repl) for pattern, repl in _RENAME_RULES[variant]]


@functools.lru_cache(maxsize=None)
def _target(variant: str) -> tuple[dict[str, tuple[int, ...]], frozenset[str]]:
    """Key -> shape of our network's state dict, and the names of its parameters (not buffers)."""
    # imported here so that a CLI run failing on its input file does not pay for importing MONAI
    from dlka_monai.networks import create_network

    # built on the meta device: only the names and shapes are needed, not 40-60M initialised weights
    with torch.device("meta"):
        net = create_network(variant)
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    return shapes, frozenset(name for name, _ in net.named_parameters())


def _rename(key: str, rules: Sequence[tuple[re.Pattern, str]]) -> str:
    for pattern, repl in rules:
        key = pattern.sub(repl, key)
    return key


def _problem_report(header: str, groups: dict[str, list[str]]) -> str:
    """``header`` then the problems, about ``_MAX_LISTED`` lines shared between the non-empty groups."""
    groups = {name: items for name, items in groups.items() if items}
    per_group = max(_MAX_LISTED // max(len(groups), 1), 5)
    counts = ", ".join(f"{name}: {len(items)}" for name, items in groups.items())
    lines = [f"{header} ({counts}):"]
    for name, items in groups.items():
        lines += items[:per_group]
        if len(items) > per_group:
            lines.append(f"... and {len(items) - per_group} more {name}")
    return "\n  ".join(lines)


def convert_state_dict(state_dict: Mapping[str, torch.Tensor], variant: str) -> dict[str, torch.Tensor]:
    """Rename the authors' state dict of ``variant`` to the keys of ``create_network(variant)``.

    The renaming must be a bijection onto our network's keys with matching shapes: anything else
    (a source key that maps to no key of ours, a key of ours that no source key provides, two source
    keys for one of ours, a shape mismatch, a non-tensor value) is refused. Keys of the authors'
    never-called 2D decoder modules are dropped. A ``module.`` prefix on
    every key (checkpoints saved from ``DataParallel``) is stripped first.

    Args:
        state_dict: the authors' state dict (parameters and buffers).
        variant: ``"dlka3d_synapse"``, ``"dlka3d_pancreas"`` or ``"dlka2d_synapse"``.

    Returns:
        our state dict, in our network's key order; the tensors are the source tensors (not copies).

    Raises:
        ValueError: for an unknown variant, or listing every problem found (at most 20, then a count).
    """
    rules = _rules(variant)
    shapes, _ = _target(variant)
    if state_dict and all(isinstance(k, str) and k.startswith("module.") for k in state_dict):
        state_dict = {k[len("module.") :]: v for k, v in state_dict.items()}
    if variant in _DEAD_KEYS:
        dead = re.compile(_DEAD_KEYS[variant])
        state_dict = {k: v for k, v in state_dict.items() if not (isinstance(k, str) and dead.match(k))}

    converted: dict[str, torch.Tensor] = {}
    source_of: dict[str, str] = {}
    unmatched, clashes, mismatched = [], [], []
    for src_key, value in state_dict.items():
        key = _rename(src_key, rules) if isinstance(src_key, str) else src_key
        if key not in shapes:
            unmatched.append(f"unmatched source key {src_key!r}" + (f" (renamed {key!r})" if key != src_key else ""))
        elif key in source_of:
            clashes.append(f"source keys {source_of[key]!r} and {src_key!r} both map to {key!r}")
        else:
            source_of[key] = src_key
            if not isinstance(value, torch.Tensor):
                mismatched.append(f"source key {src_key!r} holds a {type(value).__name__}, not a tensor")
                continue
            converted[key] = value
            if tuple(value.shape) != shapes[key]:
                mismatched.append(
                    f"shape mismatch for {src_key!r} -> {key!r}: source {list(value.shape)}, ours {list(shapes[key])}"
                )
    missing = [f"missing key {key!r} (no source key maps to it)" for key in shapes if key not in source_of]
    if unmatched or missing or clashes or mismatched:
        header = f"the checkpoint does not match {variant}"
        if len(missing) > len(shapes) // 2:  # hardly anything matched: most likely the wrong variant
            header += f" (wrong variant? known: {', '.join(sorted(_RENAME_RULES))})"
        groups = {"unmatched source keys": unmatched, "missing keys": missing, "clashes": clashes}
        raise ValueError(_problem_report(header, {**groups, "wrong values": mismatched}))
    # no unmatched, missing or clashing keys left: the renaming is one-to-one onto our keys
    assert len(converted) == len(shapes) == len(state_dict)
    return {key: converted[key] for key in shapes}


def _unwrap(ckpt: object, src: str | Path) -> Mapping[str, torch.Tensor]:
    """The state dict in a loaded checkpoint: the checkpoint itself or its first container key."""
    if isinstance(ckpt, Mapping):
        for name in _CONTAINER_KEYS:
            if isinstance(ckpt.get(name), Mapping):
                return ckpt[name]
        if ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
            return ckpt
        found = f"a dict with keys {sorted(map(str, ckpt))[:_MAX_LISTED]}"
    else:
        found = f"a {type(ckpt).__name__}"
    raise ValueError(
        f"{src} holds {found}, not a state dict (a dict of tensors, or a dict holding one under "
        f"{', '.join(repr(k) for k in _CONTAINER_KEYS)})."
    )


def converted_plan(variant: str) -> dict:
    """The plan of the authors' ``variant`` weights: the preset's (which holds the authors' preprocessing),
    recording the authors' recipe they were trained with."""
    from dlka_monai.training.recipe import get_recipe

    return {**preset_plan(variant), "recipe": get_recipe(f"{variant}_authors").to_dict()}


def convert_checkpoint(src: str | Path, dst: str | Path, variant: str) -> dict[str, torch.Tensor]:
    """Convert the authors' checkpoint file ``src`` for ``variant`` and save our state dict to ``dst``.

    Args:
        src: the authors' checkpoint: a plain state dict (their Pancreas and 2D code), or a dict holding it
            under ``"state_dict"`` (the nnU-Net ``.model`` files of their 3D Synapse trainer), ``"model"`` or
            ``"network_weights"``; read with ``torch.load(weights_only=True)``, which here also accepts the
            numpy scalars of the training curves saved alongside (``safe_load(allow_numpy_scalars=True)``).
        dst: where to save the model file ``{"model": state_dict, "plan": plan}`` (parent folders are created).
        variant: ``"dlka3d_synapse"``, ``"dlka3d_pancreas"`` or ``"dlka2d_synapse"``.

    Returns:
        the converted state dict, as saved.

    Raises:
        ValueError: for an unknown variant, an unreadable checkpoint or one that does not match the
            variant (see :func:`convert_state_dict`).
    """
    _rules(variant)  # an unknown variant fails before reading a large file
    state_dict = convert_state_dict(_unwrap(safe_load(src, allow_numpy_scalars=True), src), variant)
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": state_dict, "plan": converted_plan(variant)}, dst)
    return state_dict


@one_line_errors("python -m dlka_monai.convert")
def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit status (1 with an error message, no traceback)."""
    parser = ArgumentParser(
        prog="python -m dlka_monai.convert",
        description="Convert a D-LKA authors' checkpoint into a state dict of dlka_monai's network.",
    )
    parser.add_argument("--variant", required=True, choices=sorted(_RENAME_RULES), help="the network preset.")
    parser.add_argument("src", help="the authors' checkpoint (.model / .pth / .pt)")
    parser.add_argument("dst", help="output path of the converted state dict")
    args = parser.parse_args(argv)
    state_dict = convert_checkpoint(args.src, args.dst, args.variant)
    params = _target(args.variant)[1]
    n_params = sum(t.numel() for k, t in state_dict.items() if k in params)
    print(f"{args.variant}: wrote {len(state_dict)} tensors ({n_params:,} parameters) to {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
