"""Loading a policy/reference pair from checkpoint folders, and checking that they can be scored together.

Everything loads from local folders only (``local_files_only``): a scoring job never reaches a model hub.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import torch

from xlreward.service.scoring.engine import EngineConfig, ScoringEngine
from xlreward.service.scoring.errors import ModelPairError
from xlreward.service.scoring.templating import TemplateOptions

DeviceName = Literal["auto", "cpu", "cuda"]
DtypeName = Literal["auto", "float32", "bfloat16", "float16"]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: DeviceName) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but torch sees no CUDA device: use --device cpu")
    return torch.device(device)


def resolve_dtype(dtype: DtypeName, device: torch.device) -> torch.dtype:
    """``auto`` is bfloat16 on GPU and float32 on CPU; log-softmax runs in float32 either way."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return DTYPES[dtype]


def load_tokenizer(path: str | Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def load_causal_lm(path: str | Path, device: torch.device, dtype: torch.dtype) -> Any:
    from transformers import AutoModelForCausalLM

    model: Any = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, local_files_only=True)
    return model.to(device).eval()


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


def load_adapter_policy(adapter_dir: str | Path, base: Any) -> Any:
    """The PEFT model of ``base`` with the adapter in ``adapter_dir`` on top (inference only)."""
    try:
        from peft import PeftModel
    except ImportError as error:  # peft comes with xlreward[service]; a trimmed install may lack it
        raise ModelPairError(
            f"--policy {adapter_dir} is a LoRA adapter, and loading one needs peft: pip install peft"
        ) from error
    return PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=False).eval()


def load_engine(
    policy_dir: str | Path,
    reference_dir: str | Path,
    *,
    device: DeviceName = "auto",
    dtype: DtypeName = "auto",
    template: TemplateOptions | None = None,
    config: EngineConfig | None = None,
) -> ScoringEngine:
    """Loads both models and their tokenizers, checks they fit together, and builds the engine.

    LoRA mode: when ``policy_dir`` is an adapter folder, ``reference_dir`` must be the base model it was
    trained on. The base is loaded once; the policy is base + adapter and the reference is the same model
    with the adapter switched off (half the weights in memory of two full models)."""
    for name, path in (("policy", policy_dir), ("reference", reference_dir)):
        if not Path(path).is_dir():
            raise FileNotFoundError(f"--{name} {path}: no such checkpoint folder")
    adapter = is_adapter_folder(policy_dir)
    reference_tokenizer = load_tokenizer(reference_dir)
    has_own_tokenizer = not adapter or (Path(policy_dir) / "tokenizer_config.json").is_file()
    tokenizer = load_tokenizer(policy_dir) if has_own_tokenizer else reference_tokenizer
    check_same_tokenizer(tokenizer, reference_tokenizer)
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    reference = load_causal_lm(reference_dir, torch_device, torch_dtype)
    if adapter:
        policy = load_adapter_policy(policy_dir, reference).to(torch_device)
        return ScoringEngine(policy, None, tokenizer, template=template, config=config)
    policy = load_causal_lm(policy_dir, torch_device, torch_dtype)
    return ScoringEngine(policy, reference, tokenizer, template=template, config=config)
