"""Tiny causal LMs and tokenizers built offline with fixed seeds, for tests and the demo.

Nothing is downloaded: a byte-level BPE tokenizer is trained on a small built-in multilingual corpus, given
a chat template (Llama-3 style or ChatML/Qwen2 style), and paired with small randomly initialised models.
A policy/reference pair shares the tokenizer and config and differs only in the seed of its weights.
Builds are cached in a folder keyed by everything that decides them, so a second build is a no-op.

    python -m xlreward.trainer.tiny_models --out .cache/xlreward/demo-models
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

Architecture = Literal["llama", "qwen2"]
TemplateStyle = Literal["llama3", "chatml"]

# Bump when the builder changes what it writes, so cached builds are rebuilt.
BUILDER_VERSION = 1

CORPUS = [
    "The quick brown fox jumps over the lazy dog. Please answer the following instruction.",
    "Write a short poem about the sea, then count the words in it: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10.",
    "Por favor, responde a la siguiente instrucción usando solo español. ¿Cuánto es 12 + 30?",
    "Bitte beantworte die folgende Anweisung nur auf Deutsch. Die Straße ist größer als gedacht.",
    "Veuillez répondre à l'instruction suivante en français uniquement. Où est la bibliothèque ?",
    "Пожалуйста, ответьте на следующую инструкцию, используя только русский язык. Привет, мир!",
    "请只用中文回答下面的指令。你好，世界！今天天气很好，我们去公园散步吧。",
    "日本語で答えてください。こんにちは、世界。東京は大きな都市です。",
    "يرجى الإجابة على التعليمات التالية باستخدام اللغة العربية فقط. مرحبا بالعالم.",
    "กรุณาตอบคำสั่งต่อไปนี้โดยใช้ภาษาไทยเท่านั้น สวัสดีชาวโลก",
    "দয়া করে শুধুমাত্র বাংলা ব্যবহার করে নিম্নলিখিত নির্দেশের উত্তর দিন।",
    "Tafadhali jibu maagizo yafuatayo kwa kutumia Kiswahili pekee. Habari ya dunia!",
    "Emoji too: 😀 🎉 👍🏽 🇪🇸 — and code: def add(a, b): return a + b",
]

LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n{{ message['content'] | trim }}<|eot_id|>"
    "{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass(frozen=True)
class TinySpec:
    """Everything that decides a tiny build."""

    arch: Architecture = "llama"
    template: TemplateStyle = "llama3"
    vocab_size: int = 512
    hidden_size: int = 64
    num_layers: int = 2
    max_position_embeddings: int = 1024
    initializer_range: float = 0.1  # wider than real models, so log-probs are far from uniform
    seed: int = 0

    def key(self) -> str:
        payload = json.dumps({**asdict(self), "builder": BUILDER_VERSION}, sort_keys=True)
        return f"{self.arch}-{self.template}-{hashlib.sha256(payload.encode()).hexdigest()[:10]}"


@dataclass(frozen=True)
class TinyPair:
    policy: Path
    reference: Path


def build_tokenizer(template: TemplateStyle, vocab_size: int, corpus: Sequence[str] | None = None) -> Any:
    """A byte-level BPE tokenizer trained on ``corpus`` (default: the built-in multilingual ``CORPUS``)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if template == "llama3":
        specials = [
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eot_id|>",
        ]
        names = {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>", "pad_token": "<|end_of_text|>"}
        chat_template = LLAMA3_TEMPLATE
    else:
        specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        names = {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}
        chat_template = CHATML_TEMPLATE
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(list(corpus) if corpus else CORPUS * 4, trainer=trainer)
    if template == "llama3":  # like Llama 3: plain tokenization starts with BOS
        bos = names["bos_token"]
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, backend.token_to_id(bos))]
        )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, chat_template=chat_template, **names)
    tokenizer.add_special_tokens({"additional_special_tokens": specials})
    return tokenizer


def build_model(spec: TinySpec, tokenizer: Any, seed: int) -> Any:
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    common = {
        "vocab_size": len(tokenizer),
        "hidden_size": spec.hidden_size,
        "intermediate_size": spec.hidden_size * 2,
        "num_hidden_layers": spec.num_layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": spec.max_position_embeddings,
        "initializer_range": spec.initializer_range,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    if spec.arch == "llama":
        config: Any = LlamaConfig(**common, tie_word_embeddings=False)
    else:
        config = Qwen2Config(**common, tie_word_embeddings=True)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def build_tiny_pair(root: str | Path, spec: TinySpec | None = None) -> TinyPair:
    """Builds (or finds cached) a policy and a reference of ``spec`` under ``root``."""
    spec = spec or TinySpec()
    folder = Path(root) / spec.key()
    pair = TinyPair(policy=folder / "policy", reference=folder / "reference")
    if (folder / "COMPLETE").exists():
        return pair
    staging = folder.with_name(folder.name + ".building")
    shutil.rmtree(staging, ignore_errors=True)
    tokenizer = build_tokenizer(spec.template, spec.vocab_size)
    for name, seed in (("policy", spec.seed), ("reference", spec.seed + 1)):
        model = build_model(spec, tokenizer, seed)
        model.save_pretrained(staging / name)
        tokenizer.save_pretrained(staging / name)
    (staging / "spec.json").write_text(json.dumps(asdict(spec), indent=2))
    (staging / "COMPLETE").touch()
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)  # atomic: concurrent builders never see a half-written pair
    return pair


def build_tiny_classifier(root: str | Path, spec: TinySpec | None = None) -> Path:
    """Builds (or finds cached) a sequence-classification reward model of ``spec`` with a one-logit head
    (the shape TRL's RewardTrainer writes), seed ``spec.seed + 2``, under ``root``."""
    import torch
    from transformers import AutoModelForSequenceClassification

    spec = spec or TinySpec()
    folder = Path(root) / f"{spec.key()}-classifier"
    if (folder / "COMPLETE").exists():
        return folder
    staging = folder.with_name(folder.name + ".building")
    shutil.rmtree(staging, ignore_errors=True)
    tokenizer = build_tokenizer(spec.template, spec.vocab_size)
    config = build_model(spec, tokenizer, spec.seed).config
    config.num_labels = 1
    torch.manual_seed(spec.seed + 2)
    model = AutoModelForSequenceClassification.from_config(config, dtype=torch.float32)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    (staging / "COMPLETE").touch()
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)
    return folder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build a tiny offline policy/reference pair.")
    parser.add_argument("--out", required=True, help="cache folder; the pair lands in a subfolder")
    parser.add_argument("--arch", choices=["llama", "qwen2"], default="llama")
    parser.add_argument("--template", choices=["llama3", "chatml"], default="llama3")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    pair = build_tiny_pair(args.out, TinySpec(arch=args.arch, template=args.template, seed=args.seed))
    # Stable names for scripts: <out>/policy and <out>/reference point at the cached build.
    for name, target in (("policy", pair.policy), ("reference", pair.reference)):
        link = Path(args.out) / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target.resolve())
    print(f"policy: {Path(args.out) / 'policy'}\nreference: {Path(args.out) / 'reference'}")


if __name__ == "__main__":
    main()
