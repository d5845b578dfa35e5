"""Next-token training of the demo's tiny models: pretraining on text, SFT on chat-templated pairs.

A plain torch loop rather than TRL's SFTTrainer: these models are 0.35M parameters and a step is about
0.1 s of compute on one core, so the Trainer machinery's per-step cost (callbacks, logging, data loader
workers) would be a large share of the demo's run time, and a plain loop can change its thread count between
steps (``thread_choice``). The DPO stages use the project's trainer (TRL's DPOTrainer).

Sequences are (input_ids, labels) with labels -100 where no loss is taken (the prompt in SFT, padding).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from xlreward.demo.thread_choice import ThreadChooser

IGNORE = -100
Sequence_ = tuple[list[int], list[int]]


@dataclass(frozen=True)
class LMTraining:
    steps: int
    batch_size: int = 32
    lr: float = 3e-3
    warmup: int = 20
    weight_decay: float = 0.01
    seed: int = 0


def text_sequences(tokenizer: Any, texts: Sequence[str]) -> list[Sequence_]:
    """Plain text documents (BOS first when the tokenizer adds one), loss on every token, EOS at the end."""
    sequences = []
    for text in texts:
        ids = [*tokenizer(text)["input_ids"], tokenizer.eos_token_id]
        sequences.append((ids, list(ids)))
    return sequences


def chat_sequences(tokenizer: Any, pairs: Sequence[tuple[str, str]]) -> list[Sequence_]:
    """(prompt, response) as one user and one assistant turn; loss on exactly the span the reward service
    scores (the response and its end-of-turn token), rendered by the scorer's own ``ItemTokenizer``, which
    also refuses a prompt whose tokens are not a prefix of prompt + response's."""
    from xlreward.service.scoring.templating import ItemTokenizer, TemplateOptions, end_of_turn_ids

    render = ItemTokenizer(
        tokenizer,
        TemplateOptions(),
        max_length=tokenizer.model_max_length,
        stop_ids=end_of_turn_ids(tokenizer),
    )
    sequences = []
    for prompt, response in pairs:
        item = render(prompt, response)
        ids = list(item.input_ids[: item.score_end])  # nothing after the end-of-turn token is trained on
        sequences.append((ids, [IGNORE] * item.score_start + ids[item.score_start :]))
    return sequences


def train_lm(
    model: Any,
    sequences: list[Sequence_],
    settings: LMTraining,
    pad_token_id: int,
    chooser: ThreadChooser | None = None,
) -> list[float]:
    """AdamW with linear warm-up and cosine decay over random batches; returns the loss every 50 steps.
    ``chooser`` sets the thread count step by step (``thread_choice``; the numbers do not depend on it);
    without one, torch's count as it is."""
    import torch

    threads_before = torch.get_num_threads()
    torch.manual_seed(settings.seed)
    rng = random.Random(settings.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _lr_factor(step, settings))
    model.train()
    losses = []
    for step in range(settings.steps):
        if chooser:
            chooser.before_step(step)
        ids, labels, mask = _batch(
            rng.sample(sequences, min(settings.batch_size, len(sequences))), pad_token_id
        )
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if chooser:
            chooser.after_step()
        if step % 50 == 0 or step == settings.steps - 1:
            losses.append(round(float(loss.detach()), 4))
    torch.set_num_threads(threads_before)
    model.eval()
    return losses


def _lr_factor(step: int, settings: LMTraining) -> float:
    if step < settings.warmup:
        return (step + 1) / settings.warmup
    progress = (step - settings.warmup) / max(1, settings.steps - settings.warmup)
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))


def _batch(chosen: list[Sequence_], pad_token_id: int) -> tuple[Any, Any, Any]:
    import torch

    width = max(len(ids) for ids, _ in chosen)
    ids = torch.full((len(chosen), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(chosen), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(chosen), width), dtype=torch.long)
    for row, (seq, seq_labels) in enumerate(chosen):  # right padding: no generation happens here
        ids[row, : len(seq)] = torch.tensor(seq)
        labels[row, : len(seq)] = torch.tensor(seq_labels)
        mask[row, : len(seq)] = 1
    return ids, labels, mask
