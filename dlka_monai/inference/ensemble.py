# Copyright (c) dlka_monai contributors. Licensed under the Apache License, Version 2.0.
"""Ensembles of models (e.g. the folds of a cross-validation), as nnU-Net's: the mean of their softmax."""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Sequence

import torch
from monai.inferers import Inferer

from dlka_monai.data.validation import InvalidInputError

__all__ = ["EnsembleInferer", "load_ensemble"]

# what the models of an ensemble must share: the same input and the same meaning of their outputs
_SHARED = ("preset", "network", "axcodes", "pixdim", "normalization", "class_names")


class EnsembleInferer(Inferer):
    """Run every network through an inner inferer and average their softmax probabilities.

    Each network's logits come from ``inferer`` (e.g. a ``SlidingWindowInferer``, or a
    :class:`~dlka_monai.inference.FlipTTAInferer` around one, so that test-time augmentation composes: the
    flips of a model are averaged as logits, as that inferer does, and the models as probabilities).

    Args:
        inferer: the inner inferer, or one per network.
        networks: the networks; None to pass them to ``__call__`` instead (as a bundle config passes its
            ``network``), e.g. a ``torch.nn.ModuleList`` of the folds' models.
        log_output: return the log of the mean probability instead of the mean: a following softmax (as in a
            config written for a single model's logits) then gives back the mean probability exactly.
        softmax_dim: the class axis.

    ``__call__(inputs, network=None)``: ``[B, C, *spatial]`` -> ``[B, classes, *spatial]`` probabilities (or
    their log); ``network`` is a network or a sequence of them, used when none was given here.
    """

    def __init__(
        self,
        inferer: Inferer | Sequence[Inferer],
        networks: Sequence[Callable[..., torch.Tensor]] | None = None,
        log_output: bool = False,
        softmax_dim: int = 1,
    ) -> None:
        super().__init__()
        self.inferer = inferer
        self.networks = None if networks is None else list(networks)
        self.log_output = log_output
        self.softmax_dim = softmax_dim

    def __call__(
        self, inputs: torch.Tensor, network: Callable | Sequence[Callable] | None = None, *args, **kwargs
    ) -> torch.Tensor:
        networks = self.networks if self.networks is not None else network
        if networks is None:
            raise ValueError("EnsembleInferer has no networks: give them to the constructor or to the call.")
        if not isinstance(networks, (Sequence, torch.nn.ModuleList)):
            networks = [networks]
        inferers = self.inferer if isinstance(self.inferer, Sequence) else [self.inferer] * len(networks)
        if len(inferers) != len(networks):
            raise ValueError(f"{len(inferers)} inferers for {len(networks)} networks.")
        total = None
        for net, inferer in zip(networks, inferers):
            probs = torch.softmax(inferer(inputs, net, *args, **kwargs).float(), dim=self.softmax_dim)
            total = probs if total is None else total.add_(probs)  # one running sum: a volume's worth of memory
        mean = total / len(networks)
        return torch.log(mean) if self.log_output else mean


def load_ensemble(
    paths: str | os.PathLike | Sequence[str | os.PathLike], preset: str | None = None, **overrides
) -> tuple[torch.nn.ModuleList, dict]:
    """The models of an ensemble in eval mode, and their plan.

    Args:
        paths: model files, or a glob pattern such as ``"models/fold_*/model.pt"`` (sorted).
        preset, overrides: see :func:`dlka_monai.weights.load_model`.

    Returns:
        ``(networks, plan)``: a ``ModuleList`` (for :class:`EnsembleInferer`, or a config's ``network``) and
        the first model's plan.

    Raises:
        InvalidInputError: no file matches, or a model's plan differs from the first's in what the input or
            the output means (preset, network, axcodes, pixdim, normalization, class names); the message
            names both files and the entries.
    """
    from dlka_monai.weights import load_model  # on use: dlka_monai.weights imports the plans, which import the data layer

    files = sorted(glob.glob(os.fspath(paths))) if isinstance(paths, (str, os.PathLike)) else [os.fspath(p) for p in paths]
    if not files:
        raise InvalidInputError(f"{os.fspath(paths) if isinstance(paths, (str, os.PathLike)) else 'paths'}: no model file matches.")
    networks, plans = [], []
    for f in files:
        network, plan = load_model(f, preset, **overrides)
        differ = [k for k in _SHARED if plans and plan.get(k) != plans[0].get(k)]
        if differ:
            raise InvalidInputError(f"{f}: its plan differs from {files[0]}'s in {', '.join(differ)}; an ensemble needs one plan.")
        networks.append(network)
        plans.append(plan)
    return torch.nn.ModuleList(networks), plans[0]
