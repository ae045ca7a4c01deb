# Copyright (c) dlka_monai contributors. Licensed under the Apache License, Version 2.0.
"""Shared pieces of the command-line entry points: values given on the command line are passed to MONAI's
``ConfigParser`` as data, never as code, and bad input is reported as one line on stderr, not a traceback."""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn

__all__ = ["ArgumentParser", "literal", "one_line_errors", "report_input_errors_in_one_line"]

# ConfigParser evaluates strings starting with "$", resolves "@id" references (also inside "$"
# expressions), "%" macros and relative ids ("@#", "%#"), and rewrites "#" to its id separator "::"
# in every string; a string with none of these characters reaches the config unchanged
_SPECIAL = frozenset("$@%#")


def _plain(text: str) -> bool:
    return not _SPECIAL.intersection(text)


def _decoded(text: str) -> str:
    # hex digits hold none of the parser's special characters, so the expression is all the parser sees
    return f"$bytes.fromhex('{text.encode('utf-8').hex()}').decode('utf-8')"


def literal(value: Any) -> Any:
    """A form of ``value`` that MONAI's ``ConfigParser`` takes literally, for putting command-line values
    into a config (``parser[id] = literal(value)``, ``ConfigWorkflow(..., id=literal(value))``).

    A string holding one of ``$ @ % #`` becomes the expression ``"$bytes.fromhex('<hex>').decode('utf-8')"``,
    which evaluates to the string itself and holds nothing the parser resolves; other strings, numbers,
    booleans and None are returned unchanged (a path as its string); lists and tuples become lists of literal items; a dict
    keeps its keys and gets literal values, unless a key is special to the parser (``_target_`` and the
    other ``_name_`` keys, or a key holding ``$ @ % #`` or ``::``), in which case the whole dict becomes one
    expression decoding its JSON.

    Args:
        value: a command-line value: a string or path, number, boolean, None, or lists/dicts of them.

    Raises:
        TypeError: for other types, which cannot come from a command line.
    """
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, str):
        return value if _plain(value) else _decoded(value)
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, (list, tuple)):
        return [literal(v) for v in value]
    if isinstance(value, Mapping):
        special = any(
            not isinstance(k, str) or not _plain(k) or "::" in k or (k.startswith("_") and k.endswith("_")) for k in value
        )
        if not special:
            return {k: literal(v) for k, v in value.items()}
        # a "_target_" key would make the parser instantiate the dict, an id separator would split its id
        text = json.dumps(value).encode("utf-8").hex()
        return f"$__import__('json').loads(bytes.fromhex('{text}').decode('utf-8'))"
    raise TypeError(f"literal() takes command-line values (str, paths, numbers, lists, dicts), got {type(value).__name__}.")


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` that reports a bad argument in one line, ``"<prog>: error: <message> (see
    <prog> --help)"``, with exit status 2 (argparse prints its usage first); its subparsers do the same."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def one_line_errors(
    prog: str, errors: tuple[type[BaseException], ...] = (ValueError, OSError)
) -> Callable[[Callable[..., int | None]], Callable[..., int]]:
    """Decorate a ``main(argv)`` entry point so that ``errors`` raised in it are reported as
    ``"<prog>: error: <message>"`` on stderr with exit status 1, instead of a traceback.

    The decorated function returns the exit status: 1 after such an error, else what ``main`` returned
    (0 for None). Argument errors are :class:`ArgumentParser`'s (status 2).

    Args:
        prog: the command's name, as the user typed it (``"python -m dlka_monai.convert"``).
        errors: the exception types that mean bad arguments or input (``InvalidInputError`` is a
            ``ValueError``); anything else is a bug and keeps its traceback.
    """

    def decorate(main: Callable[..., int | None]) -> Callable[..., int]:
        @functools.wraps(main)
        def run(argv: Sequence[str] | None = None) -> int:
            try:
                status = main(argv)
            except errors as e:
                print(f"{prog}: error: {e}", file=sys.stderr)
                return 1
            return 0 if status is None else status

        return run

    return decorate


_PACKAGE = Path(__file__).resolve().parent


def _input_error(error: BaseException | None) -> BaseException | None:
    """The error behind ``error`` (MONAI's config parser wraps what its expressions raise in
    ``RuntimeError``) that says what is wrong with the input: an ``InvalidInputError``, or a ``ValueError`` or
    ``OSError`` that dlka_monai's own code raised on purpose."""
    from dlka_monai.data.validation import InvalidInputError

    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, InvalidInputError):
            return error
        if isinstance(error, (ValueError, OSError)) and error.__traceback__ is not None:
            tb = error.__traceback__
            while tb.tb_next is not None:
                tb = tb.tb_next
            if Path(tb.tb_frame.f_code.co_filename).resolve().is_relative_to(_PACKAGE):
                return error
        error = error.__cause__ or error.__context__
    return None


def _one_line_hook(kind: type[BaseException], error: BaseException, tb: TracebackType | None) -> None:
    found = _input_error(error)
    if found is None:
        sys.__excepthook__(kind, error, tb)
        return
    message = " ".join(str(found).split()) or type(found).__name__
    print(f"dlka_monai: error: {message}", file=sys.stderr)


def report_input_errors_in_one_line() -> None:
    """Make an uncaught error that bad input caused one line on stderr, ``"dlka_monai: error: <message>"``,
    instead of a traceback, for ``python -m monai.bundle run`` with the bundle's configs (their
    ``initialize`` calls this): a missing ``--plan_file``, a broken datalist or image. The exit status stays
    1; any other error keeps its traceback.

    It sets ``sys.excepthook``, which only sees errors that end the program (not those a server or test
    runner catches), and only where no one else has set it.
    """
    if sys.excepthook is sys.__excepthook__:
        sys.excepthook = _one_line_hook
