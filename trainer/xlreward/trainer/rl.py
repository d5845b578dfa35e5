"""``xlreward rl``: GRPO (TRL's GRPOTrainer) of a policy rewarded through an xlreward server (METHOD.md
section 2, "Reuse Your Rewards": a reward model, typically trained on source-language preferences, rewards
RL on target-language prompts; the paper used PPO with KL beta 0.1, here the KL term is TRL's GRPO one).

The TOML config (``RLConfig``; paths relative to the file)::

    out = "runs/rl"
    policy = "runs/sft"          # a folder or a hub id: the policy trained AND GRPO's KL reference
    instructions = ["prompts.jsonl"]
    languages = ["es", "ru"]

    [reward]
    models_file = "models.toml"  # rl serves it for the run (`xlreward serve --models`); or service_url
    model = "rm-en"              # a served reward model (default: the server's first)
    reward_prompt = "prompt"     # or "english": the directive + the English instruction

    [grpo]
    max_steps = 300
    lora = true

What happens, in order:

1. The config is validated where it is loaded (unknown keys, bad values: the message names ``[grpo] key``).
2. ``policy`` is resolved to a folder (a hub id: its snapshot at ``revision``) and the instructions are
   loaded and checked (``xlreward.worker.instructions``): both before torch is imported.
3. A finished run (OUT/model and OUT/final_metrics.json, made by the same config) is not redone.
4. The reward server is started (``models_file``; log in OUT/service.log) or reached (``service_url``), and
   ``GET /v1/models`` must list the reward model, before anything loads.
5. One prompt per (id, language) unit: ``{"prompt": [user turn], "reward_prompt": ..., "language": ...}``
   (conversational: TRL applies the chat template to sample); ``ServedReward`` scores each completion
   against ``reward_prompt``. GRPOTrainer trains (full or LoRA), resuming from the newest checkpoint in
   OUT/checkpoints; OUT/model is written as ``xlreward train`` writes it (LoRA merged, tokenizer beside it).

Outputs: OUT/rl_config.json (the config, the policy's resolved folder, lr/device/precision, versions),
OUT/metrics.jsonl (one line per logged step), OUT/final_metrics.json, OUT/checkpoints/, OUT/model/.
"""

from __future__ import annotations

import sys
import tomllib
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Self

import httpx
from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from xlreward.service.choices import DtypeName
from xlreward.service.model_source import ModelSource, resolve_model
from xlreward.service.process import serve_process
from xlreward.trainer.loop import READY_TIMEOUT_S, ModelName, _relative_name
from xlreward.trainer.options import TrainOptions, TrainSetupError, option_help, option_problems, option_types
from xlreward.worker.instructions import InstructionSet, load_instructions
from xlreward.worker.jobs import cross_lingual_prompt
from xlreward.worker.settings import DEFAULT_DIRECTIVE, DEFAULT_LANGUAGE_NAMES

if TYPE_CHECKING:
    from xlreward.service.scoring.loading import LoadOptions

RL_FULL_FINETUNE_LR = 1e-5  # GRPO moves a full model in few, noisy steps: far above DPO's 1e-7
RL_LORA_LR = 1e-4  # the paper's RL lr (METHOD.md section 2), the usual LoRA step
MODELS_TIMEOUT_S = 30.0
RewardPromptMode = Literal["prompt", "english"]

# The options `xlreward rl` shares with `xlreward train`, taken from TrainOptions' declaration (type, default,
# check), so they cannot drift: at the top level, and in [grpo].
TOP_LEVEL_FROM_TRAIN = ("revision", "trust_remote_code", "attn_implementation")
GRPO_FROM_TRAIN = (
    "max_steps",
    "epochs",
    "batch_size",
    "grad_accum",
    "lora",
    "lora_r",
    "lora_alpha",
    "seed",
    "warmup_ratio",
    "logging_steps",
    "save_steps",
    "save_total_limit",
    "gradient_checkpointing",
    "device",
)
# Where the shared option's help (written for DPO pairs) says something else here.
_HELP = {
    "batch_size": "completions per device per step (TRL counts completions, not prompts)",
    "epochs": "passes over the prompts",
    "max_steps": "optimizer steps; overrides epochs",
    "revision": "hub revision (branch, tag or commit) of policy; hub ids only",
}


class RLSetupError(TrainSetupError):
    """A run that cannot start as asked (reward server, model, options); the message says how to fix it."""


def _from_train(names: Iterable[str]) -> dict[str, Any]:
    """pydantic field definitions of TrainOptions' options ``names``: same types and defaults."""
    types = option_types()
    options = {option.name: option for option in fields(TrainOptions)}
    return {
        name: (
            types[name],
            Field(default=options[name].default, description=_HELP.get(name) or option_help(options[name])),
        )
        for name in names
    }


class RewardSection(BaseModel):
    """``[reward]``: which server rewards, with which served model, against which prompt."""

    model_config = ConfigDict(extra="forbid")

    service_url: str | None = None  # a running server
    models_file: Path | None = None  # or: rl starts `xlreward serve --models FILE` for the run
    api_key: str | None = None
    model: str | None = None  # a served reward model's name; None: the server's first (its default)
    reward_prompt: RewardPromptMode = "prompt"

    @model_validator(mode="after")
    def _one_server(self) -> Self:
        if (self.service_url is None) == (self.models_file is None):
            raise ValueError(
                "give one of service_url (a running `xlreward serve`) and models_file (a models TOML that rl "
                "serves for the run)"
            )
        return self


class GrpoSectionBase(BaseModel):
    """``[grpo]``: GRPO's own settings; the options shared with ``xlreward train`` are added from TrainOptions
    (``GRPO_FROM_TRAIN``) and checked as ``xlreward train`` checks them."""

    model_config = ConfigDict(extra="forbid")

    lr: float | None = Field(default=None, gt=0, description="default 1e-5 full fine-tuning, 1e-4 with lora")
    num_generations: int = Field(default=4, ge=2, description="completions sampled per prompt (GRPO's group)")
    max_completion_length: int = Field(default=512, ge=1, description="new tokens per completion")
    temperature: float = Field(default=1.0, gt=0, description="sampling temperature")
    beta: float = Field(default=0.1, ge=0, description="KL coefficient against the starting policy (0: none)")
    lora_dropout: float = Field(default=0.0, ge=0, lt=1, description="dropout of the LoRA adapters")
    dtype: DtypeName = Field(
        default="auto",
        description="the policy weights: auto = float32 (bf16 autocast on GPUs with bf16), float32, bfloat16",
    )

    @model_validator(mode="after")
    def _values_work(self) -> Self:
        values = self.model_dump()
        problems = option_problems(values, name=lambda option: option)  # the table shows as [grpo]
        group = values["batch_size"] * values["grad_accum"]
        if group % self.num_generations:
            problems.append(
                f"batch_size x grad_accum ({group}) must be a multiple of num_generations "
                f"({self.num_generations}): each step trains whole groups of completions"
            )
        if self.dtype == "float16":
            problems.append('dtype float16: not trained here (no loss scaling); use "auto" or "bfloat16"')
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def option(self, name: str) -> Any:
        """An option of GRPO_FROM_TRAIN (generated fields, which mypy cannot see)."""
        return self.model_dump()[name]

    @property
    def learning_rate(self) -> float:
        if self.lr is not None:
            return self.lr
        return RL_LORA_LR if self.option("lora") else RL_FULL_FINETUNE_LR


class RLConfigBase(BaseModel):
    """The TOML file of ``xlreward rl``; the top-level options shared with ``xlreward train``
    (``TOP_LEVEL_FROM_TRAIN``) are added from TrainOptions."""

    model_config = ConfigDict(extra="forbid")

    out: Path
    policy: ModelName  # a folder (relative to the file) or a hub id; also GRPO's KL reference
    instructions: list[Path] = Field(min_length=1)  # annotate's JSONL format; every id has an English line
    languages: list[str] = Field(min_length=1)
    reward: RewardSection
    grpo: GrpoSection = Field(default_factory=lambda: GrpoSection())

    @classmethod
    def load(cls, path: Path, out: Path | None = None) -> Self:
        """The config in ``path``, its relative paths taken relative to the file's folder; ``out``: an
        override of the file's ``out`` (relative to the working directory)."""
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        config = cls.model_validate(data)
        base = path.resolve().parent  # absolute: the same run reads the same from any working directory
        reward = config.reward
        if reward.models_file is not None:
            reward = reward.model_copy(update={"models_file": base / reward.models_file})
        return config.model_copy(
            update={
                "out": out.resolve() if out is not None else base / config.out,
                "policy": _relative_name(base, config.policy),
                "instructions": [base / p for p in config.instructions],
                "reward": reward,
            }
        )

    def option(self, name: str) -> Any:
        """An option of TOP_LEVEL_FROM_TRAIN (generated fields, which mypy cannot see)."""
        return self.model_dump()[name]

    def load_options(self) -> LoadOptions:
        from xlreward.service.scoring.loading import LoadOptions

        return LoadOptions(
            trust_remote_code=self.option("trust_remote_code"),
            attn_implementation=self.option("attn_implementation"),
        )


if TYPE_CHECKING:  # mypy cannot see generated fields; pydantic gets the real models
    GrpoSection = GrpoSectionBase
    RLConfig = RLConfigBase
else:
    GrpoSection = create_model(
        "GrpoSection", __base__=GrpoSectionBase, __module__=__name__, **_from_train(GRPO_FROM_TRAIN)
    )
    RLConfigBase.model_rebuild()
    RLConfig = create_model(
        "RLConfig", __base__=RLConfigBase, __module__=__name__, **_from_train(TOP_LEVEL_FROM_TRAIN)
    )


def log(message: str) -> None:
    print(f"xlreward rl: {message}", file=sys.stderr, flush=True)


def resolve_policy(config: RLConfig) -> ModelSource:
    """The folder ``policy`` loads from (a hub id: its snapshot, fetched unless offline). Torch-free."""
    try:
        return resolve_model(
            config.policy,
            revision=config.option("revision"),
            what="policy",
            trust_remote_code=config.option("trust_remote_code"),
        )
    except (FileNotFoundError, ValueError) as error:  # model_source.ModelNotFound is a FileNotFoundError
        raise RLSetupError(str(error)) from error


def dataset_rows(
    instructions: InstructionSet, languages: Iterable[str], mode: RewardPromptMode
) -> list[dict[str, Any]]:
    """One GRPO prompt per (id, language) unit, in ``InstructionSet.units`` order::

        {"prompt": [{"role": "user", "content": <instruction in language>}],
         "reward_prompt": <what the reward model scores the completion against>, "language": <code>}

    ``mode`` "prompt": the target-language instruction itself (Reuse Your Rewards); "english": the English
    instruction behind the language directive (``cross_lingual_prompt``, as annotation's reward prompt)."""
    rows = []
    for id_, language in instructions.units(languages):
        prompt = instructions.instruction(id_, language)
        against = (
            prompt
            if mode == "prompt"
            else cross_lingual_prompt(
                instructions.english(id_), language, DEFAULT_LANGUAGE_NAMES, DEFAULT_DIRECTIVE
            )
        )
        rows.append(
            {"prompt": [{"role": "user", "content": prompt}], "reward_prompt": against, "language": language}
        )
    return rows


def served_reward_model(url: str, wanted: str | None, api_key: str | None) -> str:
    """The reward model to use: ``wanted``, or the server's first, once ``GET /v1/models`` shows it is served.
    Raises RLSetupError saying what to fix when the server does not answer, refuses the key or lacks it."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        response = httpx.get(f"{url}/v1/models", headers=headers, timeout=MODELS_TIMEOUT_S)
    except httpx.TransportError as error:
        raise RLSetupError(
            f"[reward] service_url {url}: no reward server answers there ({error}); start one with "
            "`xlreward serve --models FILE`, or give [reward] models_file for rl to start it"
        ) from None
    if response.status_code in (401, 403):
        raise RLSetupError(f"the reward server at {url} refused the API key: set [reward] api_key")
    if response.status_code != 200:
        raise RLSetupError(f"GET {url}/v1/models answered {response.status_code}: {response.text[:200]}")
    served = [entry["id"] for entry in response.json().get("data", [])]
    if not served:
        raise RLSetupError(f"the reward server at {url} serves no model")
    name = wanted or served[0]
    if name not in served:
        raise RLSetupError(f"[reward] model {name!r} is not served at {url}; it serves: {', '.join(served)}")
    return name


@contextmanager
def reward_server(config: RLConfig) -> Iterator[str]:
    """The URL of ``[reward] service_url``, or of `xlreward serve --models FILE` started for the run's
    duration (a free loopback port, log in OUT/service.log)."""
    reward = config.reward
    if reward.models_file is None:
        yield str(reward.service_url).rstrip("/")
        return
    if not reward.models_file.is_file():
        raise RLSetupError(f"[reward] models_file {reward.models_file}: no such file")
    log_path = config.out / "service.log"
    env = {"XLREWARD_DEVICE": config.grpo.option("device")}
    serving = serve_process(
        serve_args=["--models", str(reward.models_file)],
        log_path=log_path,
        env=env,
        ready_timeout=READY_TIMEOUT_S,
    )
    with ExitStack() as stack:
        try:
            url = stack.enter_context(serving)
        except RuntimeError as error:  # it exited, or was not ready in time: the message has its log's tail
            raise RLSetupError(str(error)) from None
        log(f"reward server up at {url} (log: {log_path})")
        yield url


def config_record(config: RLConfig, policy: ModelSource) -> dict[str, Any]:
    """What rl_config.json records of the run: the config as written (its paths resolved), and each model
    name with the folder it resolved to. A finished run is one whose record matches."""
    return {
        "config": config.model_dump(mode="json", exclude={"reward": {"api_key"}}),  # no secret on disk
        "models": {
            "policy": {"name": config.policy, "folder": str(policy.folder), "source": policy.describe()}
        },
    }


def finished_run(config: RLConfig, record: dict[str, Any]) -> dict[str, Any] | None:
    """final_metrics.json of a finished run of this config in OUT (OUT/model written), else None."""
    import json

    out = config.out
    needed = (out / "final_metrics.json", out / "rl_config.json", out / "model" / "config.json")
    if not all(path.is_file() for path in needed):
        return None
    written = json.loads((out / "rl_config.json").read_text(encoding="utf-8"))
    if _what_decides({key: written.get(key) for key in record}) != _what_decides(record):
        return None
    final: dict[str, Any] = json.loads((out / "final_metrics.json").read_text(encoding="utf-8"))
    return final


def _what_decides(record: dict[str, Any]) -> dict[str, Any]:
    """A record without where the reward server is: a server started for each run (``models_file``, or a
    caller's on a fresh port) is reached at a new address every time, which changes nothing trained."""
    config = dict(record.get("config") or {})
    config["reward"] = {
        key: value
        for key, value in dict(config.get("reward") or {}).items()
        if key not in ("service_url", "models_file")
    }
    return record | {"config": config}


def run_rl(config: RLConfig) -> dict[str, Any]:
    """Runs (or resumes, or finds finished) the GRPO run of ``config``; returns final_metrics.json's content.
    Everything that can be checked without torch is checked first (policy, instructions, reward server)."""
    policy = resolve_policy(config)
    if policy.hub_id is not None:
        log(f"policy {policy.describe()}")
    instructions = load_instructions(
        config.instructions, languages=config.languages, known_languages=DEFAULT_LANGUAGE_NAMES
    )
    rows = dataset_rows(instructions, config.languages, config.reward.reward_prompt)
    record = config_record(config, policy)
    done = finished_run(config, record)
    if done is not None:
        log(f"already done: {config.out / 'model'} after {done['steps']} steps")
        return done
    config.out.mkdir(parents=True, exist_ok=True)
    with reward_server(config) as url:
        reward_model = served_reward_model(url, config.reward.model, config.reward.api_key)
        mode = config.reward.reward_prompt
        log(f"{len(rows)} prompts, rewarded by {reward_model!r} at {url} against the {mode}")
        return train_grpo(config, policy.folder, rows, url, reward_model, record)


def grpo_arguments(config: RLConfig, *, device: str) -> Any:
    """TRL's GRPOConfig for ``config`` on ``device``: precision, batching, logging and checkpointing as
    ``xlreward train`` sets them (float32 on CPU, bf16 autocast on a GPU that has it, report_to none, no
    activation checkpointing unless asked), and GRPO's group, sampling and KL settings."""
    from trl.trainer.grpo_config import GRPOConfig

    from xlreward.trainer.config import use_bf16

    grpo, option = config.grpo, config.grpo.option
    max_steps = option("max_steps")
    return GRPOConfig(
        output_dir=str(config.out / "checkpoints"),
        learning_rate=grpo.learning_rate,
        num_train_epochs=option("epochs"),
        max_steps=max_steps if max_steps is not None else -1,
        per_device_train_batch_size=option("batch_size"),
        gradient_accumulation_steps=option("grad_accum"),
        warmup_steps=option("warmup_ratio"),  # a float below 1 is a fraction of the training steps
        num_generations=grpo.num_generations,
        max_completion_length=grpo.max_completion_length,
        temperature=grpo.temperature,
        beta=grpo.beta,
        activation_checkpointing=option("gradient_checkpointing"),
        use_cpu=device == "cpu",
        bf16=grpo.dtype == "auto" and use_bf16(device),
        fp16=False,
        report_to="none",
        logging_steps=option("logging_steps"),
        logging_first_step=True,
        save_strategy="steps",
        save_steps=option("save_steps"),
        save_total_limit=option("save_total_limit"),
        seed=option("seed"),
        data_seed=option("seed"),
        dataloader_num_workers=0,
        trust_remote_code=config.option("trust_remote_code"),  # the reference TRL loads from the same folder
    )


def lora_arguments(grpo: GrpoSection) -> Any:
    """LoRA on every linear projection of the blocks, as ``xlreward train`` (``config.lora_config``), with
    ``lora_dropout``. The KL reference is then the policy with its adapter disabled (no second model)."""
    from peft import LoraConfig

    return LoraConfig(
        r=grpo.option("lora_r"),
        lora_alpha=grpo.option("lora_alpha"),
        lora_dropout=grpo.lora_dropout,
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )


def reward_means(log_history: list[dict[str, Any]]) -> dict[str, Any]:
    """The batch-mean reward TRL logged ("reward") at the first and the last logged steps."""
    logged = [entry for entry in log_history if "reward" in entry]
    if not logged:
        return {"first": None, "last": None}
    first, last = logged[0], logged[-1]
    return {
        "first": {"step": first["step"], "mean": first["reward"]},
        "last": {"step": last["step"], "mean": last["reward"]},
    }


def _policy_dtype(grpo: GrpoSection) -> Any:
    import torch

    return torch.bfloat16 if grpo.dtype == "bfloat16" else torch.float32


def _start_outputs(config: RLConfig, record: dict[str, Any], args: Any, resume: Path | None) -> None:
    """rl_config.json (with what the run resolved), metrics.jsonl readied (emptied, or cut after the resumed
    checkpoint's step) and a stale final_metrics.json removed: a finished run is only ever this run's."""
    from xlreward.trainer.outputs import OutputPaths, checkpoint_step, trim_metrics, versions, write_json

    paths = OutputPaths(config.out)
    paths.final_metrics.unlink(missing_ok=True)
    resolved = {
        "learning_rate": args.learning_rate,
        "device": "cpu" if args.use_cpu else "cuda",
        "bf16": args.bf16,
        "kl_reference": "the starting policy"
        + (" (its LoRA adapter disabled)" if config.grpo.option("lora") else ""),
        "resumed_from": str(resume) if resume else None,
    }
    write_json(
        config.out / "rl_config.json",
        {**record, "command": sys.argv, "resolved": resolved, "versions": versions()},
    )
    if resume is None:
        paths.metrics.unlink(missing_ok=True)
    else:
        trim_metrics(paths.metrics, checkpoint_step(resume))


def train_grpo(
    config: RLConfig,
    folder: Path,
    rows: list[dict[str, Any]],
    url: str,
    reward_model: str,
    record: dict[str, Any],
) -> dict[str, Any]:
    """Trains the policy in ``folder`` with GRPO on ``rows`` (resuming from OUT/checkpoints), rewarded by
    ``reward_model`` at ``url``; writes OUT/model and OUT/final_metrics.json and returns the latter."""
    from datasets import Dataset
    from trl.trainer.grpo_trainer import GRPOTrainer

    from xlreward.client.trl_reward import ServedReward
    from xlreward.trainer.config import resolve_device
    from xlreward.trainer.export import save_final_model
    from xlreward.trainer.models import checkpoint_dtype, load_causal_lm, load_chat_tokenizer
    from xlreward.trainer.outputs import MetricsFile, OutputPaths, last_checkpoint, write_json

    paths = OutputPaths(config.out)
    device = resolve_device(config.grpo.option("device"))
    tokenizer = load_chat_tokenizer(folder, config.load_options(), "policy")
    resume = last_checkpoint(paths.checkpoints)
    args = grpo_arguments(config, device=device)
    _start_outputs(config, record, args, resume)
    if resume is not None:
        log(f"resuming from {resume}")
    # TRL types a reward function as returning list[float | None]; ServedReward returns list[float].
    reward: Any = ServedReward(
        url, model=reward_model, reward_prompt_column="reward_prompt", api_key=config.reward.api_key
    )
    metrics_file = MetricsFile(paths.metrics)
    trainer = GRPOTrainer(
        model=load_causal_lm(folder, _policy_dtype(config.grpo), config.load_options()),
        processing_class=tokenizer,
        reward_funcs=[reward],
        args=args,
        train_dataset=Dataset.from_list(rows),
        peft_config=lora_arguments(config.grpo) if config.grpo.option("lora") else None,
        callbacks=[metrics_file],
    )
    output = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    save_final_model(trainer, tokenizer, paths, checkpoint_dtype(folder))
    final = {
        **output.metrics,  # first: TRL's end-of-run metrics can hold a "reward" of their own
        "steps": output.global_step,
        "reward": reward_means(trainer.state.log_history),
        "reward_model": reward_model,
        "reward_prompt": config.reward.reward_prompt,
        "resumed_from": str(resume) if resume else None,
        "last_logged": metrics_file.last,
        "model": str(paths.model),
    }
    if trainer.is_world_process_zero():
        write_json(paths.final_metrics, final)
    log(f"model saved to {paths.model} after {output.global_step} steps")
    return final
