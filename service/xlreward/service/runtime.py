"""What a running server holds: its named reward models, the scheduler that feeds them, the generation
backend, and which models are loaded yet.

Models load on a background thread at start-up, in the order the models file lists them, so /healthz
answers at once and /readyz turns 200 when all are in memory (a request for a loaded model is served
before the others are). One lock serialises every use of the models (scoring batches, local generation).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from xlreward.service.errors import ServiceError
from xlreward.service.generation.turns import TurnPlan
from xlreward.service.metrics import ServiceMetrics
from xlreward.service.models_config import ModelSpec
from xlreward.service.scheduler import BatchPlan, Scheduler, Unit
from xlreward.service.scoring.batching import CPU_MAX_BATCH_TOKENS
from xlreward.service.scoring.shared_base import SharedBases
from xlreward.service.settings import ServiceSettings

if TYPE_CHECKING:
    from xlreward.service.scoring.reward_model import ForwardPlan, ItemReward, RewardModel

log = logging.getLogger("xlreward.service")


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """A loaded reward model under its served name. Units carry the one they were tokenized for, so a
    request in flight during a switch is scored by the model it started with (a switch installs a new
    ``LoadedModel``; the scheduler never batches units of two together)."""

    name: str
    model: RewardModel

    def new_batch_plan(self) -> ModelBatchPlan:
        return ModelBatchPlan(self.model.new_plan())


class ModelBatchPlan:
    """The scheduler's view of a model's forward plan: it offers units, the plan decides what fits."""

    closes_early = False

    def __init__(self, plan: ForwardPlan) -> None:
        self.plan = plan

    @property
    def padded_tokens(self) -> int:
        return self.plan.padded_tokens

    def add(self, unit: Unit) -> bool:
        return self.plan.add(unit.payload)


@dataclass
class ModelSlot:
    """One configured model: its spec, and the loaded model or why it failed to load."""

    spec: ModelSpec
    loaded: LoadedModel | None = None
    error: str | None = None

    @property
    def state(self) -> str:
        return "loaded" if self.loaded else "failed" if self.error else "loading"


class Runtime:
    def __init__(self, settings: ServiceSettings, metrics: ServiceMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        # Re-entrant: a batch run at another batch's yield point (``scoring.yield_points``) runs on the
        # scheduler's thread, inside the running batch's hold on the lock.
        self.model_lock = threading.RLock()
        self.shared_bases = SharedBases(self.model_lock)  # LoRA adapters over one base hold it once
        self.slots: dict[str, ModelSlot] = {spec.name: ModelSlot(spec) for spec in settings.model_specs()}
        self.generator: Any = None  # GenerationBackend, built from the first model once it loads
        self.scheduler = Scheduler(
            self._run_units,
            # Only for units without a model; every served model plans its own batches.
            max_batch_tokens=settings.max_batch_tokens or CPU_MAX_BATCH_TOKENS,
            batch_wait=settings.batch_wait_ms / 1000,
            max_queue_items=settings.max_queue_items,
            observer=metrics.observe_batch,
        )
        metrics.track_queue(lambda: self.scheduler.queued_items)
        self.started_at = int(time.time())
        self._switch_lock = asyncio.Lock()

    # --- start-up and shut-down --------------------------------------------------------------------

    def start(self) -> None:
        """Start the scheduler and load the models in the background."""
        self.scheduler.start()
        threading.Thread(target=self._load_all, name="xlreward-loader", daemon=True).start()

    def _load_all(self) -> None:
        for slot in self.slots.values():
            try:
                self._install(slot, self.load_model(slot.spec))
            except Exception as error:  # reported by /readyz and every request for this model
                log.exception("loading model %r failed", slot.spec.name)
                slot.error = f"{type(error).__name__}: {error}"

    def load_model(self, spec: ModelSpec) -> RewardModel:
        """Loads one reward model with this server's scoring settings (blocking)."""
        from xlreward.service.scoring.engine import EngineConfig
        from xlreward.service.scoring.loading import LoadOptions, Placement, load_classifier, load_engine
        from xlreward.service.scoring.templating import TemplateOptions

        s = self.settings
        # A model that says where it goes is placed as it says; the others as the server's settings say.
        placed = spec if spec.device or spec.reference_device or spec.device_map else s
        common: dict[str, Any] = {
            "placement": Placement(placed.device or s.device, placed.reference_device, placed.device_map),
            "dtype": spec.dtype or s.dtype,
            "template": TemplateOptions(
                use_chat_template=not s.raw, system_prompt=s.system_prompt, icr_compat=s.icr_compat
            ),
            "config": EngineConfig(
                beta=s.beta if spec.beta is None else spec.beta,
                chunk_size=s.chunk_size,
                max_batch_tokens=s.max_batch_tokens,
                max_forward_tokens=s.max_forward_tokens,
                packed=s.packed if spec.packed is None else spec.packed,
            ),
            "options": LoadOptions(
                revision=spec.revision,
                trust_remote_code=s.trust_remote_code,
                attn_implementation=s.attn_implementation,
            ),
        }
        if spec.kind == "classifier":
            assert spec.path is not None  # the spec's validation guarantees it
            return load_classifier(spec.path, **common)
        assert spec.policy is not None and spec.reference is not None
        return load_engine(spec.policy, spec.reference, shared_bases=self.shared_bases, **common)

    async def switch_model(self, name: str, spec: ModelSpec) -> None:
        """Loads a new version of model ``name`` beside the serving one, then swaps it in. Requests already
        tokenized finish on the model they started with; new requests get the new one. A model that fails
        to load changes nothing."""
        async with self._switch_lock:
            model = await asyncio.to_thread(self.load_model, spec)
            first = self.first_slot().spec.name == name
            old_generator = self.generator if first else None
            self._install(self.slots[name], model, spec)
            if old_generator is not None:
                await old_generator.aclose()

    def _install(self, slot: ModelSlot, model: RewardModel, spec: ModelSpec | None = None) -> None:
        slot.spec = spec or slot.spec
        slot.loaded = LoadedModel(slot.spec.name, model)
        slot.error = None
        if slot is self.first_slot():
            self.generator = self._build_generator(model)
        sources = ", ".join(f"{role} {value}" for role, value in slot.spec.sources.items())
        log.info("model %r loaded (%s); scoring on %s", slot.spec.name, sources, model.describe())

    def _build_generator(self, model: RewardModel) -> Any:
        from xlreward.service.generation import OpenAIUpstream

        s = self.settings
        if s.generation_backend == "openai":
            assert s.upstream_url is not None  # settings validation guarantees it
            return OpenAIUpstream(
                s.upstream_url,
                model=s.upstream_model or self.model_name,
                api_key=s.upstream_api_key,
                tokenizer=getattr(model, "tokenizer", None),
            )
        return self._local_generator(model, self.model_name)

    def _local_generator(self, model: RewardModel, name: str, role: str = "policy") -> Any:
        """Built-in sampling from an implicit model's policy or reference (under the model lock, in its
        adapter's context); None for a classifier, which has no language model to sample from."""
        from xlreward.service.generation import TransformersGenerator

        language_model = getattr(model, "language_model", None)
        if language_model is None:
            return None
        lm, context = language_model(role)
        return TransformersGenerator(
            lm,
            getattr(model, "tokenizer"),  # noqa: B009 (an implicit model's)
            model_name=name,
            lock=self.model_lock,
            context=context,
            max_length=model.max_length,
            stop_token_ids=getattr(model, "item_tokenizer").stop_ids,  # noqa: B009
            turn_s=self.settings.generation_turn_ms / 1000,
        )

    def sampler(self, name: str | None, role: str = "policy") -> tuple[Any, str]:
        """The generation backend a request samples from, and its name: the server's (the first model's
        policy, or the upstream) for None, else the named served implicit model's policy or, with role
        "reference", its reference (the SFT model "Reuse Your Rewards" reranks samples of)."""
        if name is None and role == "policy":
            return self.generator, self.model_name
        name = name or self.first_slot().spec.name
        loaded = self.require_model(name)
        if self.settings.generation_backend == "openai":
            raise ServiceError(
                400,
                "invalid_request",
                "sampling goes to the upstream server here (XLREWARD_UPSTREAM_URL): drop sampler and "
                "sampler_role, or name the model in the upstream's own request",
            )
        generator = self._local_generator(loaded.model, name, role)
        if generator is None:
            raise ServiceError(
                400, "invalid_request", f"sampler {name!r} is a classifier: name an implicit model to sample"
            )
        return generator, name if role == "policy" else f"{name}:{role}"

    async def stop(self) -> None:
        self.scheduler.stop()
        if self.generator is not None:
            await self.generator.aclose()

    @property
    def model_name(self) -> str:
        """The generation model's reported name: the setting, else the first model's policy's last part."""
        if self.settings.model_name:
            return self.settings.model_name
        spec = self.first_slot().spec
        source = spec.policy or spec.path or spec.name
        return source.rstrip("/").rsplit("/", 1)[-1]

    # --- models and readiness ----------------------------------------------------------------------

    def first_slot(self) -> ModelSlot:
        return next(iter(self.slots.values()))

    def slot(self, name: str | None) -> ModelSlot:
        """The slot a request names (None: the first); 404 naming the models there are."""
        if name is None:
            return self.first_slot()
        if name not in self.slots:
            raise ServiceError(
                404,
                "unknown_model",
                f"no model named {name!r} is served here; the models are: {', '.join(self.slots)}",
            )
        return self.slots[name]

    def require_model(self, name: str | None) -> LoadedModel:
        """The loaded model a request names; 503 while it loads or if it failed to."""
        slot = self.slot(name)
        if slot.loaded is not None:
            return slot.loaded
        message = (
            f"model {slot.spec.name!r} failed to load: {slot.error}"
            if slot.error
            else f"model {slot.spec.name!r} is still loading"
        )
        raise ServiceError(503, "not_ready", message + ": retry shortly", headers={"Retry-After": "5"})

    def status(self) -> tuple[bool, str]:
        failed = [slot for slot in self.slots.values() if slot.error]
        loading = [slot.spec.name for slot in self.slots.values() if slot.state == "loading"]
        if failed:
            reasons = "; ".join(f"{slot.spec.name}: {slot.error}" for slot in failed)
            return False, f"the models failed to load: {reasons}"
        if loading:
            return False, f"the models are still loading ({', '.join(loading)})"
        return True, "ready"

    def weight_storages(self) -> dict[str, dict[tuple[str, int], int]]:
        """Per loaded model, the distinct storages of the weights it runs (``core.weight_storages``): two
        adapters over one shared base list the base's storages both. Blocking (takes the model lock)."""
        from xlreward.service.scoring.core import weight_storages

        with self.model_lock:  # an adapter being added changes the shared modules' parameter lists
            return {
                name: weight_storages(slot.loaded.model.modules())
                for name, slot in self.slots.items()
                if slot.loaded is not None
            }

    def require_ready(self) -> None:
        """The first model (generation's) must be loaded."""
        self.require_model(None)

    # --- the scheduler's runner (worker thread) ----------------------------------------------------

    def _run_units(self, units: Sequence[Unit], plan: BatchPlan) -> list[Any]:
        """Runs one batch's plan (units of one model); per unit, its item's score or its group's scores.
        A generation turn (``generation.turns``) is a batch of its own: its work runs (and takes the lock)."""
        if isinstance(plan, TurnPlan):
            return [unit.payload() for unit in units]
        assert isinstance(plan, ModelBatchPlan)
        model: RewardModel = units[0].model.model
        with self.model_lock:
            scores: list[list[ItemReward]] = model.run(plan.plan)
        return [
            unit_scores if unit.is_group else unit_scores[0]
            for unit, unit_scores in zip(units, scores, strict=True)
        ]
