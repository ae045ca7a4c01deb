# Copyright (c) dlka_monai contributors. Licensed under the Apache License, Version 2.0.
"""Finding the checkpoint to resume from."""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["latest_checkpoint"]

# MONAI's CheckpointSaver(save_interval=...) names interval checkpoints `<prefix>_checkpoint_epoch=N.pt`
_INTERVAL = re.compile(r"checkpoint_(epoch|iteration)=(\d+)\.pt$")


def latest_checkpoint(ckpt_dir: str | Path) -> str:
    """Path of the newest interval checkpoint (highest epoch/iteration) in ``ckpt_dir``.

    Raises:
        FileNotFoundError: when there is none, naming the folder.
    """
    found = []
    for path in Path(ckpt_dir).glob("*checkpoint_*=*.pt"):
        match = _INTERVAL.search(path.name)
        if match:
            found.append((int(match.group(2)), path))
    if not found:
        raise FileNotFoundError(f"no checkpoint to resume from in {ckpt_dir} (looked for *checkpoint_epoch=N.pt).")
    return str(max(found)[1])
