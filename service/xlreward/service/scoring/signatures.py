"""Which keywords a function takes: how the scoring core follows torch's and transformers' renames
(``varlen_attn``'s ``window_size`` and ``enable_gqa``, the forward's ``cache``) across the versions it
supports. Torch-free."""

from __future__ import annotations

import functools
import inspect
from typing import Any


@functools.cache
def keywords_of(function: Any) -> frozenset[str]:
    """The parameter names of ``function``. Pass a plain function (``type(model).forward``), not a bound
    method: the cache keeps what it is given alive."""
    return frozenset(inspect.signature(function).parameters)
