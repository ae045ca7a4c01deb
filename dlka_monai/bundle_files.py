# Copyright (c) dlka_monai contributors. Licensed under the Apache License, Version 2.0.
"""Where the bundle's own files are: the repository root in a source checkout (an editable install), the
copy installed with the package otherwise (``pip install .`` or a wheel)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["bundle_root", "is_shipped_config"]

_SOURCE_ROOT = Path(__file__).resolve().parents[1]
_INSTALLED_ROOT = Path(__file__).resolve().parent / "_bundle"


def bundle_root() -> Path:
    """The bundle root holding ``configs/``, ``docs/README.md`` and ``LICENSE`` of this package."""
    if (_SOURCE_ROOT / "configs" / "inference.json").is_file():
        return _SOURCE_ROOT
    if (_INSTALLED_ROOT / "configs" / "inference.json").is_file():
        return _INSTALLED_ROOT
    raise FileNotFoundError(f"the bundle's configs are neither in {_SOURCE_ROOT} nor in {_INSTALLED_ROOT}: reinstall dlka_monai.")


def is_shipped_config(path: str | Path) -> bool:
    """Whether ``path`` is one of the config files shipped with this package (not a user's own config)."""
    try:
        return Path(path).resolve().parent == bundle_root() / "configs"
    except FileNotFoundError:
        return False
