"""The built-in sampler's decode loop, run in turns of a few steps so the model serves scoring between them.

A ``DecodeJob`` samples ``n`` rows for each of its prompts: one forward over the prompts (left-padded to
the longest, when they differ in length), each prompt's key/value cache repeated for its ``n`` rows, then one
step per token for all rows at once: each unfinished row draws its next token and feeds it back. A row
finishes at an end-of-turn token, when a stop string shows up in its text, or after its prompt's
``max_new_tokens``, and leaves the batch then. Batching prompts matters for small models, where a step's cost
is mostly the forward call's fixed cost: 64 rows cost little more than 8. ``advance`` runs steps until its
time budget is spent and returns, keeping the cache, so whoever calls it decides what the model does in
between (the scheduler runs scoring batches there).

Each row draws from its own ``torch.Generator``, seeded from its prompt's seed and the row, so a row's
tokens depend on the seed, the prompt and the settings only: not on how the steps were split into turns,
what ran between them, or when the other rows finished. (Which prompts share a job can move a logit in its
last bits, through padding and batch shapes, and so, rarely, a draw near a tie: a job's prompts are fixed by
its caller, so a request gives the same samples every time.) Token choice follows transformers' sampling, with
its own warpers in its order: temperature, then top-k, then top-p (the most likely token always stays),
softmax, one draw. Temperature 0 (below 1e-5) is greedy, and one row stands for all ``n`` (they would be
identical).
"""

from __future__ import annotations

import hashlib
import inspect
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from transformers import (
    DynamicCache,
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

# A stop string is looked for in the text of a row's last tokens: enough of them to spell the longest stop
# string even when each character takes several tokens (byte-level vocabularies), and a few more.
STOP_WINDOW_TOKENS_PER_CHAR = 4
STOP_WINDOW_SLACK = 8
GREEDY_BELOW_TEMPERATURE = 1e-5


@dataclass(frozen=True)
class Sampling:
    """What a job samples: ``n`` rows of at most ``max_new_tokens`` each; ``seed`` fixes every row."""

    n: int
    max_new_tokens: int
    temperature: float
    top_p: float
    top_k: int | None
    stops: tuple[str, ...]
    seed: int

    @property
    def greedy(self) -> bool:
        # Below this, logits / temperature overflow to inf and the softmax has no distribution left: such a
        # temperature means greedy anyway (vLLM draws the same line).
        return self.temperature < GREEDY_BELOW_TEMPERATURE


def row_seed(seed: int, row: int) -> int:
    """A row's seed: a 63-bit function of the prompt's seed and the row only."""
    digest = hashlib.sha256(f"xlreward.row:{seed}:{row}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


class DecodeJob:
    """``n`` samples of each of ``prompts``, advanced a turn at a time. ``samplings``: one per prompt; they
    may differ in ``seed`` and ``max_new_tokens`` only. ``rows`` holds the samples prompt by prompt (one row
    per prompt when greedy). Not thread-safe: one caller at a time, which holds whatever the model needs held
    (its lock, its adapter context, ``torch.inference_mode``)."""

    def __init__(
        self,
        model: Any,
        prompts: Sequence[Sequence[int]],
        samplings: Sequence[Sampling],
        *,
        stop_token_ids: frozenset[int],
        decode: Callable[[list[int]], str],
    ) -> None:
        if not prompts or len(prompts) != len(samplings):
            raise ValueError(f"one sampling per prompt: {len(prompts)} prompts, {len(samplings)} samplings")
        shared = {replace(sampling, seed=0, max_new_tokens=0) for sampling in samplings}
        if len(shared) != 1:
            raise ValueError("a job's prompts share their sampling settings but for seed and max_new_tokens")
        self.model = model
        self.prompts = [list(ids) for ids in prompts]
        self.samplings = list(samplings)
        self.sampling = samplings[0]
        self.stop_token_ids = stop_token_ids
        self.decode = decode
        self.rows_per_prompt = 1 if self.sampling.greedy else self.sampling.n
        count = len(prompts) * self.rows_per_prompt
        self.rows: list[list[int]] = [[] for _ in range(count)]
        self._limits = [samplings[row // self.rows_per_prompt].max_new_tokens for row in range(count)]
        self._active = list(range(count))  # rows still generating, in the cache's batch order
        self._cache: Any = None
        self._logits: torch.Tensor | None = None  # [active rows, vocabulary]: the next token's logits
        # With prompts of different lengths: [active rows, positions so far], 0 over the left padding.
        self._mask: torch.Tensor | None = None
        self._positions: torch.Tensor | None = None  # [active rows]: the position of each row's next token
        self._warpers = _warpers(self.sampling)
        self._generators: list[torch.Generator] = []
        longest_stop = max((len(stop) for stop in self.sampling.stops), default=0)
        self._stop_window = longest_stop * STOP_WINDOW_TOKENS_PER_CHAR + STOP_WINDOW_SLACK
        self.steps = 0  # forwards run, the prompt's included
        self.fed_tokens = 0  # generated tokens fed back: a finished row is fed no more
        # transformers 5.25 renamed the cache argument; earlier 5.x releases take the old name only.
        parameters = inspect.signature(model.forward).parameters
        self._cache_argument = "cache" if "cache" in parameters else "past_key_values"

    @property
    def done(self) -> bool:
        return not self._active

    @property
    def active_rows(self) -> int:
        return len(self._active)

    def prompt_rows(self, prompt: int) -> list[list[int]]:
        """The rows of prompt ``prompt`` (its position in ``prompts``)."""
        start = prompt * self.rows_per_prompt
        return self.rows[start : start + self.rows_per_prompt]

    def advance(self, budget_s: float) -> None:
        """Runs steps until ``budget_s`` seconds have passed (at least one step) or every row is done."""
        until = time.monotonic() + budget_s
        while not self.done:
            if self._logits is None:
                self._prefill()
            else:
                self._step()
            if time.monotonic() >= until:
                return

    def _prefill(self) -> None:
        device = self.model.get_input_embeddings().weight.device
        width = max(len(ids) for ids in self.prompts)
        padded = [[0] * (width - len(ids)) + ids for ids in self.prompts]  # left: all end at `width`
        arguments: dict[str, Any] = {}
        if any(len(ids) < width for ids in self.prompts):
            # Only with padding: a lone prompt (or prompts of one length) runs exactly as an unpadded forward.
            mask = torch.tensor(
                [[0] * (width - len(ids)) + [1] * len(ids) for ids in self.prompts], device=device
            )
            arguments["attention_mask"] = mask
            arguments["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.model.config)
        output = self.model(
            input_ids=torch.tensor(padded, dtype=torch.long, device=device),
            use_cache=True,
            logits_to_keep=1,
            **arguments,
            **{self._cache_argument: cache},
        )
        repeat = self.rows_per_prompt
        if repeat > 1:
            cache.batch_repeat_interleave(repeat)
        self._cache = cache
        if "attention_mask" in arguments:
            self._mask = arguments["attention_mask"].repeat_interleave(repeat, dim=0)
            self._positions = torch.tensor(
                [len(ids) for ids in self.prompts], device=device
            ).repeat_interleave(repeat)
        logits = output.logits[:, -1].float().repeat_interleave(repeat, dim=0)
        self._generators = [
            torch.Generator(device=logits.device).manual_seed(
                row_seed(self.samplings[row // repeat].seed, row % repeat)
            )
            for row in range(len(self.rows))
        ]
        self.steps += 1
        self._choose_and_feed(logits)

    def _step(self) -> None:
        assert self._logits is not None
        self._choose_and_feed(self._logits)

    def _choose_and_feed(self, logits: torch.Tensor) -> None:
        """Picks each active row's next token from ``logits``, retires the rows that finish, and runs the
        forward that gives the remaining rows' next logits."""
        tokens = self._choose(logits)
        still: list[int] = []
        for position, (row, token) in enumerate(zip(self._active, tokens, strict=True)):
            self.rows[row].append(token)
            if not self._finished(row):
                still.append(position)
        if not still:
            self._active, self._cache, self._logits, self._mask, self._positions = [], None, None, None, None
            return
        if len(still) < len(self._active):
            kept = torch.tensor(still, device=logits.device)
            self._cache.batch_select_indices(kept)
            if self._mask is not None and self._positions is not None:
                self._mask, self._positions = self._mask[kept], self._positions[kept]
            self._active = [self._active[position] for position in still]
        fed = torch.tensor([[self.rows[row][-1]] for row in self._active], device=logits.device)
        arguments: dict[str, Any] = {}
        if self._mask is not None and self._positions is not None:
            self._mask = torch.cat([self._mask, self._mask.new_ones((len(self._active), 1))], dim=-1)
            arguments = {"attention_mask": self._mask, "position_ids": self._positions[:, None]}
            self._positions = self._positions + 1
        output = self.model(input_ids=fed, use_cache=True, **arguments, **{self._cache_argument: self._cache})
        self._logits = output.logits[:, -1].float()
        self.steps += 1
        self.fed_tokens += len(self._active)

    def _choose(self, logits: torch.Tensor) -> list[int]:
        if self.sampling.greedy:
            return [int(token) for token in logits.argmax(dim=-1).tolist()]
        scores = self._warpers(None, logits)  # type: ignore[arg-type]  # these warpers never read input_ids
        probabilities = scores.softmax(dim=-1)
        return [
            int(torch.multinomial(probabilities[position], 1, generator=self._generators[row]).item())
            for position, row in enumerate(self._active)
        ]

    def _finished(self, row: int) -> bool:
        tokens = self.rows[row]
        if tokens[-1] in self.stop_token_ids or len(tokens) >= self._limits[row]:
            return True
        if not self.sampling.stops:
            return False
        tail = self.decode(tokens[-self._stop_window :])
        return any(stop in tail for stop in self.sampling.stops)


def _warpers(sampling: Sampling) -> LogitsProcessorList:
    """transformers' own temperature, top-k and top-p warpers, in the order its sampling applies them."""
    warpers = LogitsProcessorList()
    if sampling.greedy:
        return warpers
    if sampling.temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(sampling.temperature))
    if sampling.top_k:
        warpers.append(TopKLogitsWarper(sampling.top_k))
    if sampling.top_p < 1.0:
        warpers.append(TopPLogitsWarper(sampling.top_p))
    return warpers
