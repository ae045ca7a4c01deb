# Copyright (c) dlka_monai contributors. Licensed under the Apache License, Version 2.0.
"""List the training recipes, print one as JSON, or print the docs table of ours against the authors'::

    python -m dlka_monai.training.recipe_table --markdown
    python -m dlka_monai.training.recipe_table --update docs/README.md   # rewrite the table in place
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from dlka_monai.training.recipe import get_recipe, list_recipes, recipe_table

__all__ = ["START", "END", "update_docs", "main"]

START = "<!-- recipe-table:start (python -m dlka_monai.training.recipe_table --markdown) -->"
END = "<!-- recipe-table:end -->"


def update_docs(path: str | Path) -> bool:
    """Replace the table between :data:`START` and :data:`END` in the markdown file ``path`` with the
    generated one; returns whether the file changed."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if START not in text or END not in text:
        raise ValueError(f"{path} has no recipe table markers ({START} ... {END}).")
    head, rest = text.split(START, 1)
    new = head + START + "\n" + recipe_table() + END + rest.split(END, 1)[1]
    path.write_text(new, encoding="utf-8")
    return new != text


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dlka_monai.training.recipe_table", description="List or print the training recipes.")
    parser.add_argument("--markdown", action="store_true", help="print the docs table of our recipes against the authors'.")
    parser.add_argument("--update", metavar="MARKDOWN", help="rewrite the table between the markers of this file.")
    parser.add_argument("name", nargs="?", help="print this recipe as JSON.")
    args = parser.parse_args(argv)
    if args.update:
        print(f"{args.update}: {'updated' if update_docs(args.update) else 'already up to date'}")
    elif args.markdown:
        print(recipe_table(), end="")
    elif args.name:
        print(json.dumps(get_recipe(args.name).to_dict(), indent=2))
    else:
        for name in list_recipes():
            print(f"{name}: {get_recipe(name).description}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
