# Copyright (c) dlka_monai contributors. Licensed under the Apache License, Version 2.0.
"""List the training recipes, print one as JSON, or print the docs table of ours against the authors'::

    python -m dlka_monai.training.recipe_table --markdown
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from dlka_monai.training.recipe import get_recipe, list_recipes, recipe_table

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dlka_monai.training.recipe_table", description="List or print the training recipes.")
    parser.add_argument("--markdown", action="store_true", help="print the docs table of our recipes against the authors'.")
    parser.add_argument("name", nargs="?", help="print this recipe as JSON.")
    args = parser.parse_args(argv)
    if args.markdown:
        print(recipe_table(), end="")
    elif args.name:
        print(json.dumps(get_recipe(args.name).to_dict(), indent=2))
    else:
        for name in list_recipes():
            print(f"{name}: {get_recipe(name).description}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
