"""argparse ``type=`` converters for numbers with bounds: a bad value fails while parsing, with exit status 2
and a message naming the flag, before a command imports anything heavy."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import TypeVar

Number = TypeVar("Number", int, float)


def _bounded(
    text: str, parse: Callable[[str], Number], accept: Callable[[Number], bool], wanted: str
) -> Number:
    """``text`` parsed, if ``accept`` takes the value; otherwise a message saying what to give."""
    try:
        value = parse(text)
    except ValueError:
        value = None
    if value is None or not accept(value):
        raise argparse.ArgumentTypeError(f"{text!r}: give {wanted}")
    return value


def positive_int(text: str) -> int:
    """A whole number of at least 1.

    >>> positive_int("4096")
    4096
    """
    return _bounded(text, int, lambda value: value >= 1, "a whole number of 1 or more")


def non_negative_float(text: str) -> float:
    """A finite number of 0 or more (nan and inf are refused: they would poison every score).

    >>> non_negative_float("0.1")
    0.1
    """
    return _bounded(
        text,
        float,
        lambda value: math.isfinite(value) and value >= 0,
        "a finite number of 0 or more, e.g. 0.1",
    )


def probability(text: str) -> float:
    """A number in (0, 1] (--top-p).

    >>> probability("0.9")
    0.9
    """
    return _bounded(text, float, lambda value: 0 < value <= 1, "a number above 0 and at most 1, e.g. 0.9")
