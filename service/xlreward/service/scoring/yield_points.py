"""Points in a batch's run where the scheduler may run other work first.

A long batch holds the models for all of its forwards; a tenant that sends one small item while another
tenant's long batch runs would wait for the whole of it. The strategies call ``yield_point()`` between
forwards (after a side's forward of a sub-batch, or of a chunk of its positions), and the server's scheduler
installs a hook there (``yielding_to``) that may run a short batch of waiting work before the long one goes
on. Offline scoring installs none, and a yield point costs one context-variable read.

A yield point is only ever called outside a side's ``context()``: inside it (a LoRA pair's reference with the
adapter off, one adapter of a shared base switched on) the models are in a state another batch must not see.
The work run at a yield point is a whole batch of its own, which leaves the models as it found them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_hook: ContextVar[Callable[[], None] | None] = ContextVar("xlreward_yield_hook", default=None)


def yield_point() -> None:
    """Lets the installed hook, if any, run other work before this batch goes on."""
    hook = _hook.get()
    if hook is not None:
        hook()


@contextmanager
def yielding_to(hook: Callable[[], None] | None) -> Iterator[None]:
    """Runs the block with ``hook`` called at its yield points (None: the block does not yield)."""
    token = _hook.set(hook)
    try:
        yield
    finally:
        _hook.reset(token)
