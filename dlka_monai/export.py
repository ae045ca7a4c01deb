# Copyright (c) dlka_monai contributors. Licensed under the Apache License, Version 2.0.
"""Export the bundle's network to ONNX and check it against the eager model in onnxruntime.

    python -m dlka_monai.export onnx --config_file configs/inference.json --ckpt_file models/model.pt \
        --filepath models/model.onnx

(TorchScript export is MONAI's ``python -m monai.bundle ckpt_export ... --use_trace True``.)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from monai.bundle import ConfigParser

from dlka_monai.cli import ArgumentParser, literal, one_line_errors
from dlka_monai.data.validation import InvalidInputError
from dlka_monai.weights import check_state_dict, read_model

__all__ = ["export_onnx", "main"]


def _network(config_files: list[str], bundle_root: str, ckpt_file: str) -> torch.nn.Module:
    state, plan = read_model(ckpt_file)  # first: a missing or unsafe file fails before the network is built
    parser = ConfigParser()
    parser.read_config(config_files)
    parser["bundle_root"] = literal(bundle_root)  # paths from the command line: data, never code
    # the network of the model's plan, with the configs' overrides
    parser["ckpt_path"] = literal(ckpt_file)
    try:
        net = parser.get_parsed_content("network_def")
    except (KeyError, RuntimeError) as e:  # a missing id, or an expression that failed
        cause = e
        while cause.__cause__ is not None:  # the parser wraps what the config raised
            cause = cause.__cause__
        reason = (str(cause).strip().splitlines() or [""])[0]
        raise InvalidInputError(
            f"{', '.join(map(str, config_files))}: cannot build network_def: {type(cause).__name__}: {reason}"
        ) from e
    check_state_dict(state, net, plan["preset"], ckpt_file)
    net.load_state_dict(state)
    return net.eval()


def export_onnx(
    config_files: list[str], ckpt_file: str, filepath: str, bundle_root: str = ".", opset: int = 17, batch: int = 1
) -> float | None:
    """Trace the network of ``config_files`` with the weights of ``ckpt_file`` to ONNX (input ``image``
    ``[batch, C, *img_size]``, output ``pred``). The deformable sampling is exported as plain tensor ops
    (the reference implementation runs under tracing).

    Returns:
        the max abs difference between onnxruntime's and PyTorch's output on a random input, or None
        when onnxruntime is not installed.
    """
    net = _network(config_files, bundle_root, ckpt_file)
    x = torch.rand(batch, net.in_channels, *net.img_size)
    Path(filepath).parent.mkdir(parents=True, exist_ok=True)
    # the TorchScript-based exporter: the dynamo exporter does not yet trace the data-dependent gather
    torch.onnx.export(net, (x,), filepath, dynamo=False, opset_version=opset, input_names=["image"], output_names=["pred"])
    try:
        import onnxruntime
    except ImportError:
        return None
    session = onnxruntime.InferenceSession(filepath, providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = net(x).numpy()
    return float(np.abs(session.run(None, {"image": x.numpy()})[0] - expected).max())


@one_line_errors("python -m dlka_monai.export")
def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit status (1 with a one-line error, no traceback)."""
    parser = ArgumentParser(prog="python -m dlka_monai.export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="format", required=True)
    onnx = sub.add_parser("onnx", help="export to ONNX and check it in onnxruntime")
    onnx.add_argument("--config_file", nargs="+", default=["configs/inference.json"], help="bundle config(s) defining network_def")
    onnx.add_argument("--ckpt_file", default="models/model.pt", help="weights: a state dict, or a training checkpoint")
    onnx.add_argument("--filepath", default="models/model.onnx")
    onnx.add_argument("--bundle_root", default=".", help="the bundle folder (taken as a path, never as a config expression)")
    onnx.add_argument("--opset", type=int, default=17)
    args = parser.parse_args(argv)
    diff = export_onnx(args.config_file, args.ckpt_file, args.filepath, args.bundle_root, args.opset)
    check = "onnxruntime not installed, output not checked" if diff is None else f"max abs difference to PyTorch {diff:.2e}"
    print(f"wrote {args.filepath} ({check})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
