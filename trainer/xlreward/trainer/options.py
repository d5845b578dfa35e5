"""What a training run is asked to do: every ``xlreward train`` option as one typed, validated value.

This is the one declaration of the options: each field of ``TrainOptions`` carries its type, its default,
its help text and its check (``field(metadata=...)``). ``xlreward train``'s flags
(``xlreward.cli.train``) and the ``[train]`` section of ``xlreward iterate``'s TOML
(``xlreward.trainer.loop.TrainSection``) are generated from it, so they cannot drift apart.

Torch-free, so the CLI can build and check it before anything heavy is imported: a ``--policy`` or
``--reference`` that is neither a folder nor a valid hub id fails here (``model_source.check_model_name``);
which folder a hub id loads from is decided once per run, by ``models.resolve_models``.

Defaults follow METHOD.md step 7 where it says something (beta 0.1, NLL weight 1.0, lr ~1e-7 for full
fine-tuning, effective batch 32 = 4 pairs x 8 accumulation steps on one device) and common DPO practice
where it does not.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, Field, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple, get_type_hints

from xlreward.service.choices import DeviceName
from xlreward.service.model_source import check_model_name

DeviceChoice = DeviceName  # one declaration of the device choices: xlreward.service.choices
# A folder or a Hugging Face hub id (org/name), kept as the str the user gave: "./x" and "x" differ (the first
# is a path, the second may be a hub id), and Path would turn one into the other.
ModelName = str | Path
Check = Callable[[Any], "str | None"]  # an option's value -> what is wrong with it, or None

FULL_FINETUNE_LR = 1e-7  # METHOD.md step 7: "lr ~1e-7" (full fine-tuning of an 8B model)
LORA_LR = 1e-5  # adapters start at zero and need a much larger step


class TrainSetupError(ValueError):
    """A run that cannot start as asked (options, checkpoints, device); the message says how to fix it."""


class TrainOptionsError(TrainSetupError):
    """An option value that cannot work; the message names the flag and how to fix it."""


def _above(limit: float, note: str = "") -> Check:
    return lambda value: None if value > limit else f"must be above {limit:g}{note}"


def _at_least(limit: float, problem: str = "") -> Check:
    return lambda value: None if value >= limit else problem or f"must be at least {limit:g}"


def _fraction(value: float) -> str | None:
    return None if 0 <= value < 1 else "must be in [0, 1)"


def _lr_text(lr: float) -> str:
    mantissa, exponent = f"{lr:e}".split("e")
    return f"{float(mantissa):g}e{int(exponent)}"  # 1e-07 -> 1e-7, 0.0001 -> 1e-4


def _option(
    help: str,
    *,
    check: Check | None = None,
    per_iteration: bool = True,
    default_help: str | None = None,
    metavar: str | None = None,
) -> dict[str, Any]:
    """An option's metadata. ``per_iteration=False``: ``xlreward iterate`` sets it itself, so its
    ``[train]`` section has no such key. ``default_help``: the default as the help shows it."""
    return {
        "help": help,
        "check": check,
        "per_iteration": per_iteration,
        "default_help": default_help,
        "metavar": metavar,
    }


_COUNT = _at_least(1)
_LR_DEFAULTS = f"{_lr_text(FULL_FINETUNE_LR)} full fine-tuning, {_lr_text(LORA_LR)} with --lora"
_POLICY_HELP = "the checkpoint to train: a folder or a Hugging Face hub id (org/name)"
_REFERENCE_HELP = (
    "the reference model: a folder or a hub id (with --lora, the same as --policy means the policy with its "
    "adapter disabled: no second model is loaded)"
)
_REVISION_HELP = "hub revision (branch, tag or commit) of --policy and --reference; hub ids only"
_ATTENTION_HELP = "transformers' attention implementation: sdpa, eager, flash_attention_2, ..."


class _Shared(NamedTuple):
    default: Any
    metadata: dict[str, Any]


# The options `xlreward train` and `xlreward train-rm` both take, declared once (mypy cannot check a
# field(**kwargs), hence the spelled-out field(default=..., metadata=...) in each dataclass).
_SHARED: dict[str, _Shared] = {
    "pairs": _Shared(MISSING, _option("JSONL pair files", per_iteration=False, metavar="FILE")),  # a tuple
    "out": _Shared(MISSING, _option("output folder (resumable)", per_iteration=False)),
    "trust_remote_code": _Shared(
        False,
        _option("run model code from the checkpoints (hub ids fetch their *.py)"),
    ),
    "attn_implementation": _Shared(
        None,
        _option(_ATTENTION_HELP, default_help="transformers' choice"),
    ),
    # epochs > 0 unless max_steps is given: checked in option_problems.
    "epochs": _Shared(1.0, _option("passes over the pairs")),
    "max_steps": _Shared(
        None,
        _option("optimizer steps; overrides --epochs", check=_COUNT, default_help="unset: --epochs decides"),
    ),
    "batch_size": _Shared(4, _option("pairs per device per step", check=_COUNT)),
    "grad_accum": _Shared(8, _option("gradient accumulation steps", check=_COUNT)),
    "max_length": _Shared(
        4096,
        _option("tokens of prompt + response; longer pairs are refused", check=_COUNT),
    ),
    "lora": _Shared(False, _option("train LoRA adapters (merged into OUT/model)")),
    "lora_r": _Shared(16, _option("LoRA rank", check=_COUNT)),
    "lora_alpha": _Shared(32, _option("LoRA alpha", check=_COUNT)),
    "seed": _Shared(42, _option("seed of initialisation and data order")),
    "skip_invalid": _Shared(False, _option("skip and count bad pairs")),
    "device": _Shared(
        "auto",
        _option(
            "where to train", per_iteration=False, default_help="auto: cuda when a GPU is visible, else cpu"
        ),
    ),
    "warmup_ratio": _Shared(0.1, _option("linear warmup share", check=_fraction)),
    "logging_steps": _Shared(10, _option("steps between metric lines", check=_COUNT)),
    "save_steps": _Shared(200, _option("steps between checkpoints", check=_COUNT)),
    "save_total_limit": _Shared(
        2,
        _option("checkpoints kept", check=_at_least(1, "must be at least 1 (or unset)")),
    ),
    "gradient_checkpointing": _Shared(
        False,
        _option("recompute activations to save memory"),
    ),
}


@dataclass(frozen=True)
class TrainOptions:
    """One training run. ``lr=None`` means the default for the kind of run (full or LoRA)."""

    pairs: Sequence[Path] = field(metadata=_SHARED["pairs"].metadata)
    policy: ModelName = field(metadata=_option(_POLICY_HELP, per_iteration=False))  # stored as str
    reference: ModelName = field(metadata=_option(_REFERENCE_HELP, per_iteration=False))  # stored as str
    out: Path = field(metadata=_SHARED["out"].metadata)
    revision: str | None = field(default=None, metadata=_option(_REVISION_HELP, default_help="main"))
    trust_remote_code: bool = field(
        default=_SHARED["trust_remote_code"].default, metadata=_SHARED["trust_remote_code"].metadata
    )
    attn_implementation: str | None = field(
        default=_SHARED["attn_implementation"].default, metadata=_SHARED["attn_implementation"].metadata
    )
    beta: float = field(default=0.1, metadata=_option("DPO beta", check=_above(0, " (the method uses 0.1)")))
    nll_weight: float = field(
        default=1.0,
        metadata=_option(
            "weight of the chosen NLL",
            check=_at_least(0, "must be 0 (pure DPO) or more (the method: 1.0)"),
        ),
    )
    lr: float | None = field(  # None: FULL_FINETUNE_LR or LORA_LR (resolved_learning_rate)
        default=None, metadata=_option("learning rate", check=_above(0), default_help=_LR_DEFAULTS)
    )
    epochs: float = field(default=_SHARED["epochs"].default, metadata=_SHARED["epochs"].metadata)
    max_steps: int | None = field(
        default=_SHARED["max_steps"].default, metadata=_SHARED["max_steps"].metadata
    )
    batch_size: int = field(default=_SHARED["batch_size"].default, metadata=_SHARED["batch_size"].metadata)
    grad_accum: int = field(default=_SHARED["grad_accum"].default, metadata=_SHARED["grad_accum"].metadata)
    max_length: int = field(default=_SHARED["max_length"].default, metadata=_SHARED["max_length"].metadata)
    lora: bool = field(default=_SHARED["lora"].default, metadata=_SHARED["lora"].metadata)
    lora_r: int = field(default=_SHARED["lora_r"].default, metadata=_SHARED["lora_r"].metadata)
    lora_alpha: int = field(default=_SHARED["lora_alpha"].default, metadata=_SHARED["lora_alpha"].metadata)
    seed: int = field(default=_SHARED["seed"].default, metadata=_SHARED["seed"].metadata)
    skip_invalid: bool = field(
        default=_SHARED["skip_invalid"].default, metadata=_SHARED["skip_invalid"].metadata
    )
    device: DeviceChoice = field(default=_SHARED["device"].default, metadata=_SHARED["device"].metadata)
    warmup_ratio: float = field(
        default=_SHARED["warmup_ratio"].default, metadata=_SHARED["warmup_ratio"].metadata
    )
    logging_steps: int = field(
        default=_SHARED["logging_steps"].default, metadata=_SHARED["logging_steps"].metadata
    )
    save_steps: int = field(default=_SHARED["save_steps"].default, metadata=_SHARED["save_steps"].metadata)
    save_total_limit: int | None = field(
        default=_SHARED["save_total_limit"].default, metadata=_SHARED["save_total_limit"].metadata
    )
    gradient_checkpointing: bool = field(
        default=_SHARED["gradient_checkpointing"].default, metadata=_SHARED["gradient_checkpointing"].metadata
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "pairs", tuple(Path(p) for p in self.pairs))
        for name in ("policy", "reference"):
            object.__setattr__(self, name, str(getattr(self, name)))
        object.__setattr__(self, "out", Path(self.out))
        values = {option.name: getattr(self, option.name) for option in fields(self)}
        problems = option_problems(values) + _check_inputs(self)
        if problems:
            raise TrainOptionsError("; ".join(problems))

    @property
    def resolved_learning_rate(self) -> float:
        if self.lr is not None:
            return self.lr
        return LORA_LR if self.lora else FULL_FINETUNE_LR

    @property
    def reference_is_policy(self) -> bool:
        """The reference is the policy's own starting point: the same folder, or the same hub id (one
        ``revision`` applies to both); once resolved (``TrainModels.on_folders``), the same folder."""
        return _model_key(self.policy) == _model_key(self.reference)

    def to_json(self) -> dict[str, Any]:
        record = asdict(self)
        record["pairs"] = [str(p) for p in self.pairs]
        record["out"] = str(record["out"])
        record["resolved_learning_rate"] = self.resolved_learning_rate
        return record


def flag(name: str) -> str:
    """The ``xlreward train`` flag of an option: ``nll_weight`` -> ``--nll-weight``."""
    return "--" + name.replace("_", "-")


def option_types(kind: type[Any] | None = None) -> dict[str, Any]:
    """Each option's type (of ``TrainOptions``, or ``kind``), resolved (the field annotations are strings)."""
    return get_type_hints(kind or TrainOptions)


def option_help(option: Field[Any]) -> str:
    """The option's help text, with its default (none for required options and switches)."""
    text: str = option.metadata["help"]
    shown = option.metadata["default_help"] or option.default
    if option.default is MISSING or isinstance(option.default, bool) or shown is None:
        return text
    return f"{text} (default {shown})"


def per_iteration_options() -> tuple[Field[Any], ...]:
    """The options of ``xlreward iterate``'s ``[train]`` section: all but those the loop sets itself."""
    return tuple(option for option in fields(TrainOptions) if option.metadata["per_iteration"])


def option_problems(
    values: Mapping[str, Any], name: Callable[[str], str] = flag, kind: type[Any] | None = None
) -> list[str]:
    """What is wrong with ``values`` (any of the fields of ``kind``, TrainOptions by default, by name),
    each problem naming its option as ``name`` spells it (a flag by default; ``[train] beta`` in the TOML)."""
    problems = []
    for option in fields(kind or TrainOptions):
        check, value = option.metadata["check"], values.get(option.name)
        problem = check(value) if check is not None and value is not None else None
        if problem:
            problems.append(f"{name(option.name)} {value}: {problem}")
    epochs = values.get("epochs", 1.0)
    if epochs <= 0 and values.get("max_steps") is None:
        problems.append(f"{name('epochs')} {epochs}: must be above 0 (or give {name('max_steps')})")
    return problems


def _model_key(name: ModelName) -> Path:
    """The same key for the same folder however it is spelled, and for the same hub id."""
    return Path(name).expanduser().resolve()


def _check_inputs(options: TrainOptions) -> list[str]:
    models = (("--policy", options.policy), ("--reference", options.reference))
    return _input_problems(options.pairs, models, options.revision, options.out)


def _input_problems(
    pairs: Sequence[Path], models: Sequence[tuple[str, ModelName]], revision: str | None, out: Path
) -> list[str]:
    """What is wrong with the pair files, the model names (by flag) and the output folder."""
    problems = [] if pairs else ["--pairs: give at least one JSONL file of preference pairs"]
    problems += [f"--pairs {path}: no such file" for path in pairs if not path.is_file()]
    for flag_name, name in models:
        try:  # cheap: a folder, or a valid hub id; nothing is fetched and torch is not imported
            check_model_name(str(name), revision=revision, what=flag_name)
        except (FileNotFoundError, ValueError) as error:
            problems.append(str(error))
    if out.exists() and not out.is_dir():
        problems.append(f"--out {out}: exists and is not a folder")
    return problems


# xlreward train-rm (reward_model.py): Bradley-Terry on the pairs, from the SFT model with a one-logit head.
RM_FULL_FINETUNE_LR = 1e-5  # common RM practice (the head is new, the body moves little)
RM_LORA_LR = 1e-4  # TRL's RewardConfig default, the usual LoRA step
_RM_LR_DEFAULTS = f"{_lr_text(RM_FULL_FINETUNE_LR)} full fine-tuning, {_lr_text(RM_LORA_LR)} with --lora"
_RM_MODEL_HELP = (
    "the SFT (causal LM) checkpoint the reward model starts from, given a new one-logit head: a folder or a "
    "Hugging Face hub id (org/name)"
)
_RM_FREEZE_HELP = (
    "keep the input token embeddings as --model has them (full fine-tuning; --lora never trains them): "
    "training on one language then cannot move its words away from the other languages' ones, which helps "
    "the reward model score languages it was not trained on"
)
_RM_EVAL_HELP = (
    "share of the pairs held out (drawn by --seed) to measure the trained model's accuracy on; at least one "
    "pair when there are two or more, none at 0"
)


@dataclass(frozen=True)
class RewardTrainOptions:
    """One reward-model training run (``xlreward train-rm``). ``lr=None``: the default for the kind of run.
    The options it shares with ``TrainOptions`` are declared once (``_SHARED``)."""

    pairs: Sequence[Path] = field(metadata=_SHARED["pairs"].metadata)
    model: ModelName = field(metadata=_option(_RM_MODEL_HELP))  # stored as str
    out: Path = field(metadata=_SHARED["out"].metadata)
    revision: str | None = field(
        default=None, metadata=_option("hub revision (branch, tag or commit) of --model", default_help="main")
    )
    trust_remote_code: bool = field(
        default=_SHARED["trust_remote_code"].default, metadata=_SHARED["trust_remote_code"].metadata
    )
    attn_implementation: str | None = field(
        default=_SHARED["attn_implementation"].default, metadata=_SHARED["attn_implementation"].metadata
    )
    lr: float | None = field(
        default=None, metadata=_option("learning rate", check=_above(0), default_help=_RM_LR_DEFAULTS)
    )
    epochs: float = field(default=_SHARED["epochs"].default, metadata=_SHARED["epochs"].metadata)
    max_steps: int | None = field(
        default=_SHARED["max_steps"].default, metadata=_SHARED["max_steps"].metadata
    )
    batch_size: int = field(default=_SHARED["batch_size"].default, metadata=_SHARED["batch_size"].metadata)
    grad_accum: int = field(default=_SHARED["grad_accum"].default, metadata=_SHARED["grad_accum"].metadata)
    max_length: int = field(default=_SHARED["max_length"].default, metadata=_SHARED["max_length"].metadata)
    lora: bool = field(default=_SHARED["lora"].default, metadata=_SHARED["lora"].metadata)
    lora_r: int = field(default=_SHARED["lora_r"].default, metadata=_SHARED["lora_r"].metadata)
    lora_alpha: int = field(default=_SHARED["lora_alpha"].default, metadata=_SHARED["lora_alpha"].metadata)
    freeze_embeddings: bool = field(default=False, metadata=_option(_RM_FREEZE_HELP))
    seed: int = field(default=_SHARED["seed"].default, metadata=_SHARED["seed"].metadata)
    skip_invalid: bool = field(
        default=_SHARED["skip_invalid"].default, metadata=_SHARED["skip_invalid"].metadata
    )
    device: DeviceChoice = field(default=_SHARED["device"].default, metadata=_SHARED["device"].metadata)
    eval_fraction: float = field(default=0.1, metadata=_option(_RM_EVAL_HELP, check=_fraction))
    warmup_ratio: float = field(
        default=_SHARED["warmup_ratio"].default, metadata=_SHARED["warmup_ratio"].metadata
    )
    logging_steps: int = field(
        default=_SHARED["logging_steps"].default, metadata=_SHARED["logging_steps"].metadata
    )
    save_steps: int = field(default=_SHARED["save_steps"].default, metadata=_SHARED["save_steps"].metadata)
    save_total_limit: int | None = field(
        default=_SHARED["save_total_limit"].default, metadata=_SHARED["save_total_limit"].metadata
    )
    gradient_checkpointing: bool = field(
        default=_SHARED["gradient_checkpointing"].default, metadata=_SHARED["gradient_checkpointing"].metadata
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "pairs", tuple(Path(p) for p in self.pairs))
        object.__setattr__(self, "model", str(self.model))
        object.__setattr__(self, "out", Path(self.out))
        values = {option.name: getattr(self, option.name) for option in fields(self)}
        problems = option_problems(values, kind=RewardTrainOptions)
        problems += _input_problems(self.pairs, (("--model", self.model),), self.revision, self.out)
        if problems:
            raise TrainOptionsError("; ".join(problems))

    @property
    def resolved_learning_rate(self) -> float:
        if self.lr is not None:
            return self.lr
        return RM_LORA_LR if self.lora else RM_FULL_FINETUNE_LR

    def to_json(self) -> dict[str, Any]:
        record = asdict(self)
        record["pairs"] = [str(p) for p in self.pairs]
        record["out"] = str(record["out"])
        record["resolved_learning_rate"] = self.resolved_learning_rate
        return record
