"""Argument types shared by the commands: a bad value is argparse's one line and exit 2."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


def number(kind: Callable[[str], Any], check: Callable[[Any], bool], what: str) -> Any:
    """A converter for argparse's ``type=``: ``kind(text)`` that passes ``check``."""

    def convert(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not check(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        return value

    return convert


positive_int = number(int, lambda v: v > 0, "a positive integer")
positive_float = number(float, lambda v: v > 0, "a positive number")
non_negative_float = number(float, lambda v: v >= 0, "a number >= 0")
non_negative_int = number(int, lambda v: v >= 0, "an integer >= 0")
