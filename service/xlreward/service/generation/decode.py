"""The built-in sampler's decode loop, run in turns of a few steps so the model serves scoring between them.

A prompt's ``n`` samples are one ``DecodeJob``: one forward over the prompt, its key/value cache repeated
for ``n`` rows, then one step per token: each unfinished row draws its next token and feeds it back. A row
finishes at an end-of-turn token, when a stop string shows up in its text, or after ``max_new_tokens``, and
leaves the batch then. ``advance`` runs steps until its time budget is spent and returns, keeping the cache,
so whoever calls it decides what the model does in between (the scheduler runs scoring batches there).

Each row draws from its own ``torch.Generator``, seeded from the prompt's seed and the row, so a row's
tokens depend on the seed, the prompt and the settings only: not on how the steps were split into turns,
what ran between them, or when the other rows finished. Token choice follows transformers' sampling, with
its own warpers in its order: temperature, then top-k, then top-p (the most likely token always stays),
softmax, one draw. Temperature 0 (below 1e-5) is greedy, and one row stands for all ``n`` (they would be
identical).
"""

from __future__ import annotations

import hashlib
import inspect
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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
    """One prompt's ``n`` samples, advanced a turn at a time. Not thread-safe: one caller at a time, which
    holds whatever the model needs held (its lock, its adapter context, ``torch.inference_mode``)."""

    def __init__(
        self,
        model: Any,
        prompt_ids: Sequence[int],
        sampling: Sampling,
        *,
        stop_token_ids: frozenset[int],
        decode: Callable[[list[int]], str],
    ) -> None:
        self.model = model
        self.prompt_ids = list(prompt_ids)
        self.sampling = sampling
        self.stop_token_ids = stop_token_ids
        self.decode = decode
        rows = 1 if sampling.greedy else sampling.n
        self.rows: list[list[int]] = [[] for _ in range(rows)]
        self._active = list(range(rows))  # rows still generating, in the cache's batch order
        self._cache: Any = None
        self._logits: torch.Tensor | None = None  # [active rows, vocabulary]: the next token's logits
        self._warpers = _warpers(sampling)
        self._generators: list[torch.Generator] = []
        longest_stop = max((len(stop) for stop in sampling.stops), default=0)
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
        input_ids = torch.tensor([self.prompt_ids], dtype=torch.long, device=device)
        cache = DynamicCache(config=self.model.config)
        output = self.model(
            input_ids=input_ids, use_cache=True, logits_to_keep=1, **{self._cache_argument: cache}
        )
        rows = len(self.rows)
        if rows > 1:
            cache.batch_repeat_interleave(rows)
        self._cache = cache
        logits = output.logits[:, -1].float()
        self._generators = [
            torch.Generator(device=logits.device).manual_seed(row_seed(self.sampling.seed, row))
            for row in range(rows)
        ]
        self.steps += 1
        self._choose_and_feed(logits.expand(rows, -1))

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
            if not self._finished(self.rows[row]):
                still.append(position)
        if not still:
            self._active, self._cache, self._logits = [], None, None
            return
        if len(still) < len(self._active):
            self._cache.batch_select_indices(torch.tensor(still, device=logits.device))
            self._active = [self._active[position] for position in still]
        fed = torch.tensor([[self.rows[row][-1]] for row in self._active], device=logits.device)
        output = self.model(input_ids=fed, use_cache=True, **{self._cache_argument: self._cache})
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

    def _finished(self, tokens: list[int]) -> bool:
        if tokens[-1] in self.stop_token_ids or len(tokens) >= self.sampling.max_new_tokens:
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
