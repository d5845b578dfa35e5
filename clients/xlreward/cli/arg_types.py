"""argparse ``type=`` converters for numbers with bounds: a bad value fails while parsing, with exit status 2
and a message naming the flag, before a command imports anything heavy."""

from __future__ import annotations

import argparse
import math


def positive_int(text: str) -> int:
    """A whole number of at least 1.

    >>> positive_int("4096")
    4096
    """
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number of 1 or more") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number of 1 or more")
    return value


def non_negative_float(text: str) -> float:
    """A finite number of 0 or more (nan and inf are refused: they would poison every score).

    >>> non_negative_float("0.1")
    0.1
    """
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number of 0 or more, e.g. 0.1") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give a finite number of 0 or more, e.g. 0.1")
    return value


def probability(text: str) -> float:
    """A number in (0, 1] (--top-p).

    >>> probability("0.9")
    0.9
    """
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number above 0 and at most 1, e.g. 0.9") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number above 0 and at most 1, e.g. 0.9")
    return value
