"""Several LoRA policies over ONE copy of their base model.

Teams that share a server each bring a DPO adapter trained over the same SFT model. Each adapter is an
implicit reward model of its own (policy = base + adapter, reference = the base with adapters off), but the
base weights are held once: the first adapter wraps the base in a PEFT model, later ones are loaded into
it under their own names (``PeftModel.load_adapter``), and an engine's policy side runs with its adapter
made active (``SharedBase.activation``), its reference side inside ``disable_adapter()``.

Switching the active adapter and adding one both change the shared modules, so both happen under the lock
that serialises every forward on the server (``SharedBases.lock``; scoring batches and generation take it
too). A switch costs a walk over the LoRA layers (no copies), done only when the adapter changes.

Lifetimes: an engine built over a shared base retires its adapter when it is garbage collected (after a
``/admin/models`` switch, once the requests that started on it finished); retired adapters are deleted the
next time the base runs or takes an adapter, under the lock. The base lives as long as an engine over it.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xlreward.service.scoring.errors import ModelPairError


@dataclass(frozen=True)
class BaseKey:
    """What makes two bases the same weights in memory: the resolved folder (a hub revision resolves to
    its own snapshot folder), where and in what dtype it loaded, and how (remote code, attention)."""

    folder: str
    device: str
    dtype: str
    trust_remote_code: bool
    attn_implementation: str | None


class SharedBase:
    """One base model with named LoRA adapters over it. Call ``attach`` and run forwards holding the
    owning registry's lock."""

    def __init__(self, base: Any) -> None:
        self.base = base
        self.model: Any = None  # the PEFT model, once the first adapter is attached
        self._retired: list[str] = []
        self._attached = 0

    def attach(self, adapter_dir: str | Path) -> str:
        """Loads the adapter in ``adapter_dir`` over the base; returns the name it is held under."""
        try:
            from peft import PeftModel
        except ImportError as error:  # peft comes with xlreward[service]; a trimmed install may lack it
            raise ModelPairError(
                f"--policy {adapter_dir} is a LoRA adapter, and loading one needs peft: pip install peft"
            ) from error
        name = f"adapter-{self._attached}"
        self._attached += 1
        if self.model is None:
            self.model = PeftModel.from_pretrained(
                self.base, str(adapter_dir), adapter_name=name, is_trainable=False
            )
        else:
            try:
                self.model.load_adapter(str(adapter_dir), adapter_name=name, is_trainable=False)
            except Exception:  # a half-loaded adapter must not stay beside the ones that serve
                if name in self.model.peft_config:
                    self.model.delete_adapter(name)
                raise
        self.model.eval()
        self._delete_retired()
        return name

    def activation(self, name: str) -> Callable[[], AbstractContextManager[None]]:
        """The context an engine's policy side runs in: ``name`` is the active adapter."""

        @contextmanager
        def active() -> Iterator[None]:
            self._delete_retired()
            if self.model.active_adapter != name:
                self.model.set_adapter(name, inference_mode=True)
            yield

        return active

    def retire(self, name: str) -> None:
        """Marks an adapter no engine uses any more (a list append: safe from a finaliser on any thread)."""
        self._retired.append(name)

    def _delete_retired(self) -> None:
        while self._retired:
            self.model.delete_adapter(self._retired.pop())


class SharedBases:
    """The bases a server holds, by ``BaseKey``; a base is dropped with the last engine over it.

    ``lock`` is the server's model lock: everything that changes or runs a shared base holds it."""

    def __init__(self, lock: threading.RLock | None = None) -> None:
        self.lock = lock or threading.RLock()
        self._bases: weakref.WeakValueDictionary[BaseKey, SharedBase] = weakref.WeakValueDictionary()
        self._loading = threading.Lock()

    def get(self, key: BaseKey, load: Callable[[], Any]) -> SharedBase:
        """The shared base for ``key``, loading it with ``load()`` (outside the model lock: loading a base
        is the slow part, and serving goes on meanwhile) if no engine holds it yet."""
        with self._loading:
            shared = self._bases.get(key)
            if shared is None:
                shared = SharedBase(load())
                self._bases[key] = shared
            return shared


def retire_with(engine: object, shared: SharedBase, name: str) -> None:
    """Retires adapter ``name`` once ``engine`` is garbage collected."""
    weakref.finalize(engine, shared.retire, name)
