"""Sampling many prompts at once from a local causal LM: chat-templated prompts, left-padded batches.

The reward service samples one prompt at a time (n samples per call) because its callers arrive one unit at
a time; an evaluation knows all its prompts up front, so it batches across prompts. Prompts are sorted by
length before batching (less padding) and the results put back in input order. Each batch seeds torch's RNG
from (seed, batch index), so a run is reproducible on the same machine and software.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SamplingSettings:
    """Decoding settings; the defaults are the paper's evaluation decoding (METHOD.md)."""

    temperature: float = 0.6
    top_p: float = 0.9
    max_new_tokens: int = 2048
    samples: int = 1
    seed: int = 42
    batch_size: int = 64


def render_prompts(tokenizer: Any, prompts: Sequence[str]) -> list[list[int]]:
    """Token ids of each prompt as one user turn in the chat template, ready for the assistant's turn."""
    rendered = []
    for prompt in prompts:
        encoded = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True, return_dict=True
        )
        rendered.append(list(encoded["input_ids"]))
    return rendered


def stop_token_ids(tokenizer: Any) -> list[int]:
    from xlreward.service.scoring.templating import end_of_turn_ids

    return sorted(end_of_turn_ids(tokenizer))


def sample(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    settings: SamplingSettings,
    progress: Callable[[int], object] | None = None,
) -> list[list[str]]:
    """``settings.samples`` completions per prompt (stripped text, special tokens removed), in order;
    ``progress`` is told how many prompts each finished batch held."""
    import torch

    rendered = render_prompts(tokenizer, prompts)
    order = sorted(range(len(rendered)), key=lambda i: len(rendered[i]))
    results: list[list[str]] = [[] for _ in rendered]
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stops = stop_token_ids(tokenizer)
    for batch_index, start in enumerate(range(0, len(order), settings.batch_size)):
        chosen = order[start : start + settings.batch_size]
        width = max(len(rendered[i]) for i in chosen)
        ids = torch.full((len(chosen), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chosen), width), dtype=torch.long)
        for row, i in enumerate(chosen):  # left padding: every prompt ends where generation starts
            ids[row, width - len(rendered[i]) :] = torch.tensor(rendered[i])
            mask[row, width - len(rendered[i]) :] = 1
        torch.manual_seed(settings.seed * 1_000_003 + batch_index)
        with torch.inference_mode():
            output = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                do_sample=settings.temperature > 0,
                temperature=settings.temperature if settings.temperature > 0 else None,
                top_p=settings.top_p if settings.temperature > 0 else None,
                top_k=None,
                max_new_tokens=settings.max_new_tokens,
                num_return_sequences=settings.samples,
                eos_token_id=stops,
                pad_token_id=pad,
            )
        texts = tokenizer.batch_decode(output[:, width:], skip_special_tokens=True)
        for row, i in enumerate(chosen):
            group = texts[row * settings.samples : (row + 1) * settings.samples]
            results[i] = [text.strip() for text in group]
        if progress is not None:
            progress(len(chosen))
    return results
