"""Loading reward models the way users name them, and checking that a pair can be scored together.

A model is a local folder or a Hugging Face id with an optional revision (``model_source.resolve_model``:
the hub cache first, ``HF_HUB_OFFLINE`` honoured with a message that says how to fetch what is missing).
Once resolved, everything loads from that folder (``local_files_only``). Remote code is off unless asked
for (``trust_remote_code``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from xlreward.service.choices import DtypeName
from xlreward.service.model_source import resolve_model
from xlreward.service.scoring.classifier import ClassifierRewardModel
from xlreward.service.scoring.engine import EngineConfig, ScoringEngine
from xlreward.service.scoring.errors import ModelPairError
from xlreward.service.scoring.shared_base import BaseKey, SharedBases, retire_with
from xlreward.service.scoring.templating import TemplateOptions

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class LoadOptions:
    """How checkpoints load, for every model of a run: the hub revision, remote code, the attention
    implementation (None: transformers' default)."""

    revision: str | None = None
    trust_remote_code: bool = False
    attn_implementation: str | None = None

    def from_pretrained_kwargs(self) -> dict[str, Any]:
        extra: dict[str, Any] = {"local_files_only": True, "trust_remote_code": self.trust_remote_code}
        if self.attn_implementation:
            extra["attn_implementation"] = self.attn_implementation
        return extra


def resolve_device(device: str) -> torch.device:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``; refuses CUDA that torch cannot see."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device} was asked for but torch sees no CUDA device: use --device cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and resolved.index is not None and resolved.index >= torch.cuda.device_count():
        raise ValueError(
            f"device {device} was asked for but torch sees {torch.cuda.device_count()} CUDA device(s): "
            f"use cuda:0 .. cuda:{torch.cuda.device_count() - 1}"
        )
    return resolved


@dataclass(frozen=True)
class Placement:
    """Where a reward model's weights go: ``device`` for the whole model (an implicit pair: both models),
    ``reference_device`` for the reference when a pair is split over two GPUs, or ``device_map`` to let
    transformers spread each model over the GPUs (a model larger than one GPU)."""

    device: str = "auto"
    reference_device: str | None = None
    device_map: str | None = None

    def policy_device(self) -> torch.device:
        """Where the policy (or a classifier) goes; under a device map, where its dtype is decided."""
        return resolve_device("auto" if self.device_map else self.device)

    def reference(self) -> Placement:
        return replace(self, device=self.reference_device or self.device, reference_device=None)


def resolve_dtype(dtype: DtypeName, device: torch.device) -> torch.dtype:
    """``auto`` is bfloat16 on GPU and float32 on CPU; log-softmax runs in float32 either way."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return DTYPES[dtype]


def load_tokenizer(path: str | Path, options: LoadOptions | None = None) -> Any:
    from transformers import AutoTokenizer

    trust = (options or LoadOptions()).trust_remote_code
    return AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=trust)


def load_causal_lm(
    path: str | Path,
    device: torch.device,
    dtype: torch.dtype,
    options: LoadOptions | None = None,
    device_map: str | None = None,
) -> Any:
    from transformers import AutoModelForCausalLM

    return _load_pretrained(AutoModelForCausalLM, path, device, dtype, options, device_map)


def load_sequence_classifier(
    path: str | Path,
    device: torch.device,
    dtype: torch.dtype,
    options: LoadOptions | None = None,
    device_map: str | None = None,
) -> Any:
    from transformers import AutoModelForSequenceClassification

    return _load_pretrained(AutoModelForSequenceClassification, path, device, dtype, options, device_map)


def _load_pretrained(
    auto_class: Any,
    path: str | Path,
    device: torch.device,
    dtype: torch.dtype,
    options: LoadOptions | None,
    device_map: str | None,
) -> Any:
    """Loads on ``device``, or spread by ``device_map`` (weights go straight to their devices)."""
    extra = (options or LoadOptions()).from_pretrained_kwargs()
    if device_map is not None:
        extra["device_map"] = device_map
    model: Any = auto_class.from_pretrained(str(path), dtype=dtype, **extra)
    return (model if device_map is not None else model.to(device)).eval()


def _tokenizer_fingerprint(tokenizer: Any) -> dict[str, Any]:
    """What decides how text becomes ids: the backend's pipeline (minus padding/truncation settings),
    the special tokens and the chat template."""
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    backend.pop("padding", None)
    backend.pop("truncation", None)
    return {
        "tokenization pipeline (vocabulary, merges, normalisation)": backend,
        "special tokens": {
            "bos": tokenizer.bos_token,
            "eos": tokenizer.eos_token,
            "pad": tokenizer.pad_token,
        },
        "chat template": tokenizer.chat_template,
    }


def check_same_tokenizer(policy: Any, reference: Any) -> None:
    """Refuse a pair whose tokenizers differ: the two log-probs would be of different token sequences."""
    ours, theirs = _tokenizer_fingerprint(policy), _tokenizer_fingerprint(reference)
    differing = [name for name in ours if ours[name] != theirs[name]]
    if differing:
        raise ModelPairError(
            "the policy and reference tokenizers differ in: "
            + ", ".join(differing)
            + ". The implicit reward compares log-probs of the same tokens under both models: "
            "use a reference that shares the policy's tokenizer (its SFT parent, usually)"
        )


def is_adapter_folder(path: str | Path) -> bool:
    """A PEFT adapter checkpoint (``adapter_config.json``, as ``xlreward train --lora`` writes to
    OUT/adapter) rather than a full model."""
    return (Path(path) / "adapter_config.json").is_file()


def load_engine(
    policy_name: str | Path,
    reference_name: str | Path,
    *,
    device: str = "auto",
    dtype: DtypeName = "auto",
    template: TemplateOptions | None = None,
    config: EngineConfig | None = None,
    options: LoadOptions | None = None,
    placement: Placement | None = None,
    shared_bases: SharedBases | None = None,
) -> ScoringEngine:
    """Loads both models (folders or hub ids) and their tokenizers, checks they fit together, and builds
    the implicit reward model. ``placement`` (default: both models on ``device``) may put the reference
    on its own device or spread each model by a device map.

    LoRA mode: when the policy is an adapter folder, the reference must be the base model it was trained
    on. The base is loaded once; the policy is base + adapter and the reference is the same model with the
    adapter switched off (half the weights in memory of two full models). With ``shared_bases`` (a
    server's), every adapter over the same base at the same placement goes into ONE copy of that base."""
    options = options or LoadOptions()
    placement = placement or Placement(device)
    policy_dir, reference_dir = (
        resolve_model(
            str(name), revision=options.revision, what=flag, trust_remote_code=options.trust_remote_code
        ).folder
        for name, flag in ((policy_name, "--policy"), (reference_name, "--reference"))
    )
    adapter = is_adapter_folder(policy_dir)
    if adapter and placement.reference_device not in (None, placement.device):
        raise ModelPairError(
            f"--policy {policy_name} is a LoRA adapter: its reference is the same base model with the "
            "adapter off, so it cannot be placed on a device of its own; drop reference_device"
        )
    reference_tokenizer = load_tokenizer(reference_dir, options)
    has_own_tokenizer = not adapter or (Path(policy_dir) / "tokenizer_config.json").is_file()
    tokenizer = load_tokenizer(policy_dir, options) if has_own_tokenizer else reference_tokenizer
    check_same_tokenizer(tokenizer, reference_tokenizer)
    torch_device = placement.policy_device()
    torch_dtype = resolve_dtype(dtype, torch_device)
    device_map = placement.device_map

    def load_reference() -> Any:
        reference_device = placement.reference().policy_device()
        return load_causal_lm(reference_dir, reference_device, torch_dtype, options, device_map)

    if not adapter:
        reference = load_reference()
        policy = load_causal_lm(policy_dir, torch_device, torch_dtype, options, device_map)
        return ScoringEngine(policy, reference, tokenizer, template=template, config=config)
    bases = shared_bases if shared_bases is not None else SharedBases()
    key = BaseKey(
        str(reference_dir),
        device_map or str(torch_device),
        str(torch_dtype),
        options.trust_remote_code,
        options.attn_implementation,
    )
    shared = bases.get(key, load_reference)
    with bases.lock:  # adding an adapter and the engine's start-up checks change the shared modules
        name = shared.attach(policy_dir)
        try:
            engine = ScoringEngine(
                shared.model,
                None,
                tokenizer,
                template=template,
                config=config,
                policy_context=shared.activation(name),
            )
        except Exception:  # an engine that failed its checks leaves no adapter behind
            shared.retire(name)
            raise
    retire_with(engine, shared, name)
    return engine


def load_classifier(
    name: str | Path,
    *,
    device: str = "auto",
    dtype: DtypeName = "auto",
    template: TemplateOptions | None = None,
    config: EngineConfig | None = None,
    options: LoadOptions | None = None,
    placement: Placement | None = None,
) -> ClassifierRewardModel:
    """Loads a sequence-classification reward model (folder or hub id) and its tokenizer."""
    options = options or LoadOptions()
    folder = resolve_model(
        str(name), revision=options.revision, what="path", trust_remote_code=options.trust_remote_code
    ).folder
    placement = placement or Placement(device)
    torch_device = placement.policy_device()
    torch_dtype = resolve_dtype(dtype, torch_device)
    model = load_sequence_classifier(folder, torch_device, torch_dtype, options, placement.device_map)
    tokenizer = load_tokenizer(folder, options)
    return ClassifierRewardModel(model, tokenizer, template=template, config=config)
