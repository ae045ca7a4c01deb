# Copyright (c) dlka_monai contributors. Licensed under the Apache License, Version 2.0.
"""The metadata is in setup.cfg. This adds the bundle's own files (configs, model card, licence) to the
built package as ``dlka_monai/_bundle``, so that ``dlka-segment`` and the packer work from a wheel or a
non-editable install, without the source tree (an editable install reads them from the repository)."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
BUNDLE_FILES = ("configs/*.json", "configs/*.conf", "docs/README.md", "LICENSE")


class BuildPyWithBundle(build_py):
    def run(self):
        super().run()
        target = Path(self.build_lib) / "dlka_monai" / "_bundle"
        for pattern in BUNDLE_FILES:
            for path in ROOT.glob(pattern):
                dest = target / path.relative_to(ROOT)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, dest)


setup(cmdclass={"build_py": BuildPyWithBundle})
