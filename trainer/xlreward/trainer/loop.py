"""``xlreward iterate``: the method's loop (METHOD.md steps 7-8). Iteration t serves pi^t with its
reference, annotates through it, trains pi^{t+1} on the pairs, and switches the service to the new pair.

The config names its models (``sft``, ``policy``) as folders or Hugging Face hub ids; the loop resolves them
to folders once, before anything loads (``IterateConfig.with_model_folders``: the hub cache at ``[train]
revision``, fetched unless offline), so every model it serves or trains from afterwards is a folder.

Each iteration's artefacts live in ``OUT/iter-<t>/`` (``annotate/``, ``train/``); each finished stage
leaves a marker, so a crashed loop resumes at the stage it was in (the annotation and training stages
resume within themselves too). The service is either one this loop starts (``xlreward serve`` on a free
loopback port, with a fresh admin key) or an existing one given by URL and admin key.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Self

import httpx
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, create_model, model_validator

from xlreward.service.choices import DeviceName, DtypeName
from xlreward.service.model_source import resolve_model
from xlreward.service.process import serve_process
from xlreward.trainer.options import (
    TrainOptions,
    option_help,
    option_problems,
    option_types,
    per_iteration_options,
)

READY_TIMEOUT_S = 600.0
SWITCH_TIMEOUT_S = 1800.0


def _as_name(value: object) -> object:
    return os.fspath(value) if isinstance(value, os.PathLike) else value


# A folder or a Hugging Face hub id, kept as written (a Path is taken as its str).
ModelName = Annotated[str, BeforeValidator(_as_name)]


class AnnotateSection(BaseModel):
    """Overrides of the annotation settings (``xlreward.worker.settings.WorkerSettings`` field names)."""

    model_config = ConfigDict(extra="forbid")

    samples: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    seed: int | None = None
    reward_mode: Literal["cross_lingual", "monolingual"] | None = None


class TrainSectionBase(BaseModel):
    """What every ``[train]`` section is: no unknown keys, values checked as ``xlreward train`` checks them
    (at load time, not after an iteration's annotation)."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="after")
    def _values_work(self) -> Self:
        problems = option_problems(self.model_dump(), name=lambda option: f"[train] {option}")
        if problems:
            raise ValueError("; ".join(problems))
        return self


def _train_section() -> type[TrainSectionBase]:
    """``[train]``: the options of ``xlreward train`` (TrainOptions' declaration: same names, types, defaults)
    but those the loop sets itself each iteration: pairs, policy, reference, out and device."""
    types = option_types()
    keys: dict[str, Any] = {
        option.name: (types[option.name], Field(default=option.default, description=option_help(option)))
        for option in per_iteration_options()
    }
    return create_model("TrainSection", __base__=TrainSectionBase, __module__=__name__, **keys)


if TYPE_CHECKING:  # mypy cannot see generated fields; pydantic and IterateConfig get the real model
    TrainSection = TrainSectionBase
else:
    TrainSection = _train_section()


class IterateConfig(BaseModel):
    """The loop's TOML file. Iteration t always samples from pi^t and trains pi^{t+1} from it.
    ``reward_policy``: whose implicit reward scores the samples in later iterations: the policy being
    iterated ("current", pi^t) or the English-aligned pi^0 ("initial", the same reward model throughout:
    the loop then samples with pi^t served, and switches the service to pi^0 and the SFT model to score).
    ``reference``: with "current", the scoring reference in later iterations, the SFT model ("sft") or
    the previous policy ("previous"); the paper leaves both open. ``train_reference``: the DPO loss's
    reference, the policy being trained from ("policy") or the SFT model ("sft")."""

    model_config = ConfigDict(extra="forbid")

    out: Path
    iterations: int = Field(default=2, ge=1)
    sft: ModelName  # pi_ref: a folder (relative to the file) or a hub id
    policy: ModelName  # pi^0, the English-aligned model: a folder or a hub id
    reference: Literal["sft", "previous"] = "sft"
    reward_policy: Literal["current", "initial"] = "current"
    train_reference: Literal["policy", "sft"] = "policy"
    instructions: list[Path] = Field(min_length=1)
    reference_format: bool = False
    languages: list[str] = Field(min_length=1)
    broker: str | None = None
    service_url: str | None = None  # an existing server; else the loop starts one
    admin_key: str | None = None  # that server's XLREWARD_ADMIN_KEY
    device: DeviceName = "auto"
    dtype: DtypeName = "auto"
    annotate: AnnotateSection = Field(default_factory=AnnotateSection)
    train: TrainSection = Field(default_factory=TrainSection)

    @model_validator(mode="after")
    def _one_reward(self) -> IterateConfig:
        if self.reward_policy == "initial" and self.reference == "previous":
            raise ValueError(
                'reward_policy = "initial" scores with pi^0 against the SFT model: set reference = "sft"'
            )
        return self

    @classmethod
    def load(cls, path: Path) -> IterateConfig:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        config = cls.model_validate(data)
        base = path.parent  # relative paths in the file are relative to the file
        updates: dict[str, Any] = {
            name: _relative_name(base, getattr(config, name)) for name in ("sft", "policy")
        }
        updates["out"] = base / config.out
        updates["instructions"] = [base / p for p in config.instructions]
        return config.model_copy(update=updates)

    def with_model_folders(self) -> IterateConfig:
        """This config with ``sft`` and ``policy`` as folders: a hub id becomes its snapshot in the Hugging
        Face cache at ``[train] revision`` (fetched first unless ``HF_HUB_OFFLINE`` is set). Torch-free.

        Raises ``model_source.ModelNotFound`` (naming the key and, for a hub id, how to fetch it) or
        ``ValueError`` (a revision given with a folder)."""
        train = self.train.model_dump()
        sources = {
            key: resolve_model(
                getattr(self, key),
                revision=train["revision"],
                what=key,
                trust_remote_code=train["trust_remote_code"],
            )
            for key in ("sft", "policy")
        }
        for key, source in sources.items():
            if source.hub_id is not None:
                log(f"{key} {source.describe()}")
        return self.model_copy(update={key: str(source.folder) for key, source in sources.items()})

    def generator_for(self, t: int) -> Path:
        """The policy that samples in iteration t (0-based), and that pi^{t+1} is trained from: pi^t."""
        return Path(self.policy) if t == 0 else self.iteration_dir(t - 1) / "train" / "model"

    def pair_for(self, t: int) -> tuple[Path, Path]:
        """(policy, reference) of the reward in iteration t (0-based)."""
        if self.reward_policy == "initial" or t == 0:
            return Path(self.policy), Path(self.sft)
        if self.reference == "sft":
            return self.generator_for(t), Path(self.sft)
        return self.generator_for(t), self.generator_for(t - 1)

    def iteration_dir(self, t: int) -> Path:
        return self.out / f"iter-{t + 1}"


def _relative_name(base: Path, name: str) -> str:
    """A folder relative to the config file's folder (``base``) when there is one; else the name as written
    (a hub id, or an absolute path). A relative folder that exists only in the working directory is taken
    relative to the file all the same, so it fails as a missing folder rather than loading another model."""
    local = base / Path(name).expanduser()
    return str(local) if local.is_dir() or Path(name).expanduser().is_dir() else name


def log(message: str) -> None:
    print(f"xlreward iterate: {message}", file=sys.stderr, flush=True)


def run_loop(config: IterateConfig) -> dict[str, Any]:
    """Runs (or resumes) every iteration; the config's model names are resolved to folders first."""
    config = config.with_model_folders()
    config.out.mkdir(parents=True, exist_ok=True)
    with reward_service(config) as (url, admin_key):
        history = [run_iteration(config, t, url, admin_key) for t in range(config.iterations)]
    summary = {"iterations": history, "final_policy": history[-1]["trained_model"]}
    (config.out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False))
    return summary


def run_iteration(config: IterateConfig, t: int, url: str, admin_key: str) -> dict[str, Any]:
    folder = config.iteration_dir(t)
    folder.mkdir(parents=True, exist_ok=True)
    done = folder / "DONE.json"
    if done.exists():
        log(f"iteration {t + 1}: already done")
        result: dict[str, Any] = json.loads(done.read_text())
        return result
    generator = config.generator_for(t)
    policy, reference = config.pair_for(t)
    # Sample with pi^t served, then score with the reward pair (unless a previous run finished annotating).
    if generator != policy and not (folder / "annotate" / "summary.json").exists():
        log(f"iteration {t + 1}: sampling from {generator}")
        switch_models(url, admin_key, generator, reference)
        sample_stage(config, folder / "annotate", url)
    log(f"iteration {t + 1}: scoring with {policy} (policy) and {reference} (reference)")
    switch_models(url, admin_key, policy, reference)
    annotation = annotate_stage(config, folder / "annotate", url)
    check_pairs(annotation, t)
    log(f"iteration {t + 1}: {annotation['totals']['pairs']} pairs; training")
    trained = train_stage(config, folder / "train", generator)
    result = {
        "iteration": t + 1,
        "generator": str(generator),
        "served_policy": str(policy),
        "served_reference": str(reference),
        "pairs": str(folder / "annotate" / "pairs.jsonl"),
        "annotation": annotation["totals"],
        "trained_model": str(trained),
    }
    done.write_text(json.dumps(result, indent=2))
    return result


class NoPairs(RuntimeError):
    """An iteration's annotation left nothing to train on."""


def check_pairs(annotation: dict[str, Any], t: int) -> None:
    """Stops the loop, saying why, when iteration ``t`` has no pair to train on (rather than handing its
    trainer an empty file)."""
    totals = annotation["totals"]
    if totals["pairs"]:
        return
    drops = ", ".join(f"{reason} {count}" for reason, count in totals["drops"].items() if count)
    raise NoPairs(
        f"iteration {t + 1}: the annotation kept no preference pair out of {totals['units']} units "
        f"(dropped: {drops or 'none'}; empty samples: {totals.get('empty_samples', 0)}): the sampling model "
        "gave no two distinct answers to any instruction; see annotate/summary.json"
    )


def annotation_plan(config: IterateConfig, out: Path, url: str) -> tuple[Any, Any]:
    """(plan, worker settings) of one iteration's annotation run in ``out``, through the service ``url``."""
    from xlreward.worker.annotate import plan_run
    from xlreward.worker.settings import WorkerSettings

    overrides = {k: v for k, v in config.annotate.model_dump().items() if v is not None}
    settings = WorkerSettings(service_url=url, broker_url=config.broker, **overrides)
    plan = plan_run(
        config.instructions,
        languages=config.languages,
        out_dir=out,
        settings=settings,
        reference_format=config.reference_format,
    )
    return plan, settings


def sample_stage(config: IterateConfig, out: Path, url: str) -> None:
    """The sampling half of the annotation run: every unit's samples stored, none scored."""
    from xlreward.worker.annotate import generate_to_completion

    plan, settings = annotation_plan(config, out, url)
    generate_to_completion(plan, settings, progress=lambda _: None)


def annotate_stage(config: IterateConfig, out: Path, url: str) -> dict[str, Any]:
    from xlreward.worker.annotate import run_to_completion

    plan, settings = annotation_plan(config, out, url)
    if (out / "summary.json").exists() and not plan.pending():
        summary: dict[str, Any] = json.loads((out / "summary.json").read_text())
        return summary
    return run_to_completion(plan, settings, progress=lambda _: None)


def train_options(config: IterateConfig, out: Path, policy: Path) -> TrainOptions:
    """The training run of an iteration in ``out`` (its pairs next to it, in ``annotate/``), from ``policy``:
    ``[train]`` plus what the loop sets itself. The models are folders by now (``with_model_folders``), so
    ``[train] revision``, which applied to the config's hub ids, is not passed on. Unless ``[train]`` says
    otherwise, the trainer skips (and counts, in its final metrics) the pairs it cannot take, such as a
    sample longer than its ``max_length``, instead of refusing the loop's own file."""
    reference = policy if config.train_reference == "policy" else Path(config.sft)
    options = {**config.train.model_dump(), "revision": None}
    if "skip_invalid" not in config.train.model_fields_set:
        options["skip_invalid"] = True
    return TrainOptions(
        pairs=[out.parent / "annotate" / "pairs.jsonl"],
        policy=policy,
        reference=reference,
        out=out,
        device=config.device,
        **options,
    )


def train_stage(config: IterateConfig, out: Path, policy: Path) -> Path:
    from xlreward.trainer.train import train

    return Path(train(train_options(config, out, policy)).model_dir)


def switch_models(url: str, admin_key: str, policy: Path, reference: Path) -> None:
    """Makes the service's first (default) model serve this pair (a no-op if it already does)."""
    headers = {"Authorization": f"Bearer {admin_key}"}
    body = {"policy": str(policy.resolve()), "reference": str(reference.resolve())}
    current = httpx.get(f"{url}/admin/models", headers=headers, timeout=60)
    if current.status_code == 200:
        served = current.json()["models"][0]
        if all(served.get(role) and Path(served[role]).resolve() == Path(body[role]) for role in body):
            return
    response = httpx.post(f"{url}/admin/models", json=body, headers=headers, timeout=SWITCH_TIMEOUT_S)
    if response.status_code != 200:
        raise RuntimeError(
            f"the reward service refused the model switch ({response.status_code}): {response.text}"
        )


@contextmanager
def reward_service(config: IterateConfig) -> Iterator[tuple[str, str]]:
    """An existing service (URL + admin key), or one started here for the loop's duration."""
    if config.service_url:
        if not config.admin_key:
            raise ValueError(
                "service_url is set but admin_key is not: the loop switches models through /admin"
            )
        yield config.service_url, config.admin_key
        return
    admin_key = secrets.token_urlsafe(24)
    policy, reference = config.pair_for(0)
    env = {"XLREWARD_ADMIN_KEY": admin_key, "XLREWARD_DEVICE": config.device, "XLREWARD_DTYPE": config.dtype}
    if config.train.model_dump()["trust_remote_code"]:  # what the loop serves needs the code it trains with
        env["XLREWARD_TRUST_REMOTE_CODE"] = "true"
    log_path = config.out / "service.log"
    with serve_process(policy, reference, log_path=log_path, env=env, ready_timeout=READY_TIMEOUT_S) as url:
        log(f"reward service up at {url} (log: {log_path})")
        yield url, admin_key
