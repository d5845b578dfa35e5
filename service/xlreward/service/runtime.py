"""What a running server holds: the scoring engine, the scheduler that feeds it, the generation backend,
and whether the models are loaded yet.

Models load on a background thread at start-up, so /healthz answers at once and /readyz turns 200 when
they are in memory. One lock serialises every use of the models (scoring batches, local generation).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xlreward.service.errors import ServiceError
from xlreward.service.metrics import ServiceMetrics
from xlreward.service.scheduler import Scheduler, Unit
from xlreward.service.scoring.batching import GPU_MAX_BATCH_TOKENS
from xlreward.service.settings import ServiceSettings

log = logging.getLogger("xlreward.service")


@dataclass(frozen=True)
class Work:
    """A scheduler unit's payload: tokenized item(s) and the engine they were tokenized for."""

    engine: Any
    items: Any  # TokenizedItem, or a group's list of them


class Runtime:
    def __init__(self, settings: ServiceSettings, metrics: ServiceMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.model_lock = threading.Lock()
        self.engine: Any = None  # ScoringEngine; typed loosely so this module imports without torch
        self.generator: Any = None  # GenerationBackend
        self.scheduler = Scheduler(
            self._run_units,
            # The engine re-plans what the scheduler hands it into its own batches; coalescing into
            # bigger units than one forward batch gives its planner lengths to group.
            max_batch_tokens=settings.max_batch_tokens or GPU_MAX_BATCH_TOKENS,
            batch_wait=settings.batch_wait_ms / 1000,
            max_queue_items=settings.max_queue_items,
            observer=metrics.observe_batch,
        )
        metrics.track_queue(lambda: self.scheduler.queued_items)
        self._ready = threading.Event()
        self._load_error: str | None = None
        self._switch_lock = asyncio.Lock()
        self.policy_path: Path = settings.policy
        self.reference_path: Path = settings.reference

    # --- start-up and shut-down --------------------------------------------------------------------

    def start(self, engine: Any = None, generator: Any = None) -> None:
        """Start the scheduler and load the models in the background (or use the ones given)."""
        self.scheduler.start()
        if engine is not None:
            self._install(engine, generator)
            return
        threading.Thread(target=self._load, name="xlreward-loader", daemon=True).start()

    def _load(self) -> None:
        try:
            self._install(self.load_engine(self.settings.policy, self.settings.reference), None)
        except Exception as error:  # reported by /readyz and every scoring request
            log.exception("loading the models failed")
            self._load_error = f"{type(error).__name__}: {error}"

    def load_engine(self, policy: Path, reference: Path) -> Any:
        """Loads a policy/reference pair with this server's scoring settings (blocking)."""
        from xlreward.service.scoring.engine import EngineConfig
        from xlreward.service.scoring.loading import load_engine
        from xlreward.service.scoring.templating import TemplateOptions

        s = self.settings
        return load_engine(
            policy,
            reference,
            device=s.device,
            dtype=s.dtype,
            template=TemplateOptions(
                use_chat_template=not s.raw, system_prompt=s.system_prompt, icr_compat=s.icr_compat
            ),
            config=EngineConfig(
                beta=s.beta, chunk_size=s.chunk_size, max_batch_tokens=s.max_batch_tokens, packed=s.packed
            ),
        )

    async def switch_models(self, policy: Path, reference: Path) -> None:
        """Loads a new pair beside the serving one, then swaps it in. Requests already tokenized finish on
        the pair they started with; new requests get the new pair. A pair that fails to load changes
        nothing."""
        async with self._switch_lock:
            engine = await asyncio.to_thread(self.load_engine, policy, reference)
            old_generator = self.generator
            self.policy_path, self.reference_path = policy, reference
            self._install(engine, None)
            if old_generator is not None:
                await old_generator.aclose()

    def _install(self, engine: Any, generator: Any) -> None:
        self.engine = engine
        self.generator = generator or self._build_generator(engine)
        self._ready.set()
        log.info(
            "models loaded: %s (policy) and %s (reference); scoring on %s",
            self.policy_path,
            self.reference_path,
            engine.describe(),
        )

    def _build_generator(self, engine: Any) -> Any:
        from xlreward.service.generation import OpenAIUpstream, TransformersGenerator

        s = self.settings
        if s.generation_backend == "openai":
            assert s.upstream_url is not None  # settings validation guarantees it
            return OpenAIUpstream(
                s.upstream_url,
                model=s.upstream_model or self.model_name,
                api_key=s.upstream_api_key,
                tokenizer=engine.tokenizer,
            )
        return TransformersGenerator(
            engine.policy,
            engine.tokenizer,
            model_name=self.model_name,
            lock=self.model_lock,
            max_length=engine.max_length,
            stop_token_ids=engine.item_tokenizer.stop_ids,
        )

    async def stop(self) -> None:
        self.scheduler.stop()
        if self.generator is not None:
            await self.generator.aclose()

    @property
    def model_name(self) -> str:
        return self.settings.model_name or self.policy_path.resolve().name

    # --- readiness ---------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def status(self) -> tuple[bool, str]:
        if self._load_error:
            return False, f"the models failed to load: {self._load_error}"
        if not self.ready:
            return False, "the models are still loading"
        return True, "ready"

    def require_ready(self) -> None:
        ok, message = self.status()
        if not ok:
            raise ServiceError(503, "not_ready", message + ": retry shortly", headers={"Retry-After": "5"})

    # --- the scheduler's runner (worker thread) ----------------------------------------------------

    def _run_units(self, units: Sequence[Unit]) -> list[Any]:
        """Per engine (two only while a model switch drains), the batch's single items run together and
        each group runs with its prompt computed once. Returns, per unit, an ItemScore (item) or a list of
        them (group)."""
        from xlreward.service.scoring.packing import score_packed
        from xlreward.service.scoring.prefix import score_shared_prefix

        results: list[Any] = [None] * len(units)
        engines = {id(unit.payload.engine): unit.payload.engine for unit in units}
        with self.model_lock:
            for key, engine in engines.items():
                mine = [i for i, unit in enumerate(units) if id(unit.payload.engine) == key]
                if engine.config.packed:  # items and groups share rows
                    groups = [
                        units[i].payload.items if units[i].is_group else [units[i].payload.items]
                        for i in mine
                    ]
                    for index, scores in zip(mine, score_packed(engine, groups), strict=True):
                        results[index] = scores if units[index].is_group else scores[0]
                    continue
                singles = [i for i in mine if not units[i].is_group]
                scores = engine.score_tokenized([units[i].payload.items for i in singles])
                for index, score in zip(singles, scores, strict=True):
                    results[index] = score
                for index in mine:
                    if units[index].is_group:
                        results[index] = score_shared_prefix(engine, units[index].payload.items)
        return results
