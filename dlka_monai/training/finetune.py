# Copyright (c) dlka_monai contributors. Licensed under the Apache License, Version 2.0.
"""Starting a training from another trained model's weights (the authors fine-tune PH2 from ISIC 2017)."""

from __future__ import annotations

import os

from torch import nn

from dlka_monai.weights import check_state_dict, safe_load, unwrap_checkpoint

__all__ = ["init_from_model"]


def init_from_model(network: nn.Module, path: str | os.PathLike | None) -> nn.Module:
    """Load the weights of the model file ``path`` (a ``models/model.pt``, a training checkpoint or a bare
    state dict) into ``network`` and return it; ``path`` None returns ``network`` unchanged.

    Only the weights are taken: the optimizer, the scheduler and the epoch count start afresh.

    Raises:
        InvalidInputError: in one line: the file is missing, not weights-only, or holds another network's
            weights (see :func:`dlka_monai.weights.check_state_dict`).
    """
    if path is None:
        return network
    state, _ = unwrap_checkpoint(safe_load(path), path)
    check_state_dict(state, network, getattr(network, "preset_name", None), path)
    network.load_state_dict(state)
    return network
