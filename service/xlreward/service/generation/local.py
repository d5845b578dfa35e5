"""Sampling from the policy model in this process.

Consecutive prompts of a request, up to ``MAX_JOB_ROWS`` samples, are one ``decode.DecodeJob``, run in
turns of about ``turn_s`` seconds, each under the lock the scoring engine shares (and in the policy's adapter
context). Where the turns run is the caller's: served, they queue in the scoring scheduler
(``turns.SchedulerTurns``), so scoring waits for one turn at most and tenants take turns; elsewhere they run
on a worker thread. With a seed (or a seed per prompt) a prompt's samples depend on its seed, the prompt and
the sampling settings (``decode``: and, in their last bits, on which prompts share its job); without one the
seed comes from the OS's randomness.

Completions end at any end-of-turn token (``stop_token_ids``), at a stop string (the text is then cut just
before the first stop string, as OpenAI does) or after ``max_tokens`` tokens. A ``max_tokens`` the request
sets must fit the model's context after the prompt (else 400, as vLLM and OpenAI answer); the default is cut
to fit.

Asked for ``logprobs``, each distinct completion then gets one teacher-forced forward that scores its
tokens under the model's raw distribution (``token_logprobs``), outside the decode loop.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from functools import partial
from typing import Any, TypeVar

import torch

from xlreward.service.generation.base import chat_messages, first_stop, raw_text, request_prompt_seed
from xlreward.service.generation.decode import DecodeJob, Sampling
from xlreward.service.generation.errors import GenerationError, bad_prompt, too_long
from xlreward.service.generation.token_logprobs import completion_logprobs
from xlreward.service.generation.turns import ModelTurns, ThreadTurns
from xlreward.service.protocol import (
    ChatMessage,
    Completion,
    GenerateRequest,
    GenerateResponse,
    GenerateResult,
    TokenLogprob,
)

T = TypeVar("T")
DEFAULT_TURN_S = 0.05
# The most rows (prompts x n) one decode job steps together. Consecutive prompts of a request share a job up
# to it: on a small model a step of 64 rows costs little more than one of 8, and a job's cache grows with it.
MAX_JOB_ROWS = 64


def job_prompts(prompts: int, n: int, max_rows: int) -> list[list[int]]:
    """The request's prompt positions, in order, cut into jobs of at most ``max_rows`` rows (at least one
    prompt each).

    >>> job_prompts(5, 8, 16)
    [[0, 1], [2, 3], [4]]
    >>> job_prompts(2, 64, 16)
    [[0], [1]]
    """
    per_job = max(1, max_rows // n)
    return [list(range(start, min(start + per_job, prompts))) for start in range(0, prompts, per_job)]


class TransformersGenerator:
    """The built-in backend: the policy model in memory, shared with the scoring engine through ``lock``.

    ``max_length`` is the model's context (prompt + completion); ``stop_token_ids`` are the tokens that end
    a turn (``xlreward.service.scoring.templating.end_of_turn_ids``). ``context``: what sampling runs in,
    under the lock (a policy that is one of several adapters over a shared base makes its adapter active).
    ``turn_s``: how long one turn of sampling runs on the model before it is handed back.
    """

    name = "transformers"
    supports_logprobs = True

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        model_name: str,
        lock: threading.RLock,
        max_length: int,
        stop_token_ids: frozenset[int],
        context: Callable[[], AbstractContextManager[Any]] = nullcontext,
        turn_s: float = DEFAULT_TURN_S,
    ) -> None:
        if not stop_token_ids:
            raise ValueError("stop_token_ids is empty: give at least the tokenizer's EOS token")
        self.model = model
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.lock = lock
        self.context = context
        self.turn_s = turn_s
        self.max_length = max_length
        self.stop_token_ids = stop_token_ids
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_token_id: int = pad if pad is not None else min(stop_token_ids)

    async def generate(self, request: GenerateRequest, turns: ModelTurns | None = None) -> GenerateResponse:
        """Samples every prompt, in ``turns`` (default: on a worker thread)."""
        turns = turns or ThreadTurns()
        # Every prompt is rendered (and refused, if it must be) before any sampling starts.
        rendered = await asyncio.to_thread(self._render_all, request)
        results = []
        for indices in job_prompts(len(rendered), request.n, MAX_JOB_ROWS):
            job = self._job([rendered[index] for index in indices], request, indices)
            while not job.done:
                await turns.run(partial(self._on_model, job.advance, self.turn_s), job.active_rows)
            for at, index in enumerate(indices):
                prompt_ids, limit = rendered[index], job.samplings[at].max_new_tokens
                rows = job.prompt_rows(at) * (request.n if job.sampling.greedy else 1)  # greedy: 1 row for n
                completions = [self._completion(row, request.stop, limit) for row in rows]
                if request.logprobs is not None:
                    scored = partial(self._with_logprobs, prompt_ids, rows, completions, request.logprobs)
                    completions = await turns.run(partial(self._on_model, scored), len(rows))
                results.append(
                    GenerateResult(index=index, completions=completions, prompt_tokens=len(prompt_ids))
                )
        return GenerateResponse(results=results, model=self.model_name)

    async def aclose(self) -> None:
        """Nothing to release: the model belongs to whoever loaded it."""

    # --- rendering -----------------------------------------------------------------------------------

    def _render_all(self, request: GenerateRequest) -> list[list[int]]:
        rendered = [self.render(prompt, at, raw=request.raw) for at, prompt in enumerate(request.prompts)]
        if request.max_tokens_asked():
            for index, prompt_ids in enumerate(rendered):
                self._check_room(len(prompt_ids), request.max_tokens, index)
        return rendered

    def _check_room(self, prompt_tokens: int, max_tokens: int, index: int) -> None:
        room = self.max_length - prompt_tokens
        if max_tokens > room:
            raise GenerationError(
                "too_long",
                f"max_tokens={max_tokens} does not fit: prompts[{index}] is {prompt_tokens} tokens and the "
                f"model's context {self.max_length}, which leaves room for {room}: ask for at most {room}, "
                "or leave max_tokens out",
                400,
                "max_tokens",
            )

    def render(self, prompt: str | Sequence[ChatMessage], index: int = 0, *, raw: bool = False) -> list[int]:
        """Prompt token ids: the chat template with the generation prompt, or (``raw``) the plain text."""
        if raw:
            ids = list(self.tokenizer(raw_text(prompt, index))["input_ids"])
        else:
            messages = chat_messages(prompt, index)
            if not getattr(self.tokenizer, "chat_template", None):
                raise bad_prompt(
                    f"the model {self.model_name} has no chat template: send raw=true to generate from plain "
                    "text (base models), or serve a tokenizer saved with a chat_template",
                    f"prompts[{index}]",
                )
            encoded = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=True, return_dict=True
            )
            ids = list(encoded["input_ids"])
        if not ids:
            raise bad_prompt(
                f"prompts[{index}] tokenizes to nothing: give a non-empty prompt", f"prompts[{index}]"
            )
        if len(ids) >= self.max_length:
            raise too_long(
                f"prompts[{index}] is {len(ids)} tokens long but the model's context is {self.max_length} "
                "tokens, which leaves no room for a completion: shorten the prompt",
                f"prompts[{index}]",
            )
        return ids

    # --- sampling ------------------------------------------------------------------------------------

    def _job(self, prompts: list[list[int]], request: GenerateRequest, indices: Sequence[int]) -> DecodeJob:
        samplings = []
        for prompt_ids, index in zip(prompts, indices, strict=True):
            seed = request_prompt_seed(request, index)
            samplings.append(
                Sampling(
                    n=request.n,
                    max_new_tokens=min(request.max_tokens, self.max_length - len(prompt_ids)),
                    temperature=request.temperature,
                    top_p=request.top_p,
                    top_k=request.top_k,
                    stops=tuple(request.stop),
                    seed=seed if seed is not None else secrets.randbits(63),
                )
            )
        return DecodeJob(
            self.model, prompts, samplings, stop_token_ids=self.stop_token_ids, decode=self._decode
        )

    def _on_model(self, work: Callable[..., T], *args: Any) -> T:
        """``work`` with the model to itself: under the lock, in the policy's context, without autograd."""
        with self.lock, self.context(), torch.inference_mode():
            return work(*args)

    def _completion(self, tokens: list[int], stops: Sequence[str], max_new: int) -> Completion:
        """One generated row (padded after its end) as text, finish reason and token count."""
        end = next((at for at, token in enumerate(tokens) if token in self.stop_token_ids), None)
        body = tokens if end is None else tokens[:end]
        text = self._decode(body)
        cut = first_stop(text, stops)
        if cut is not None:
            return Completion(
                text=text[:cut], finish_reason="stop", num_tokens=self._tokens_to_stop(body, stops)
            )
        if end is not None:
            return Completion(text=text, finish_reason="stop", num_tokens=end + 1)
        if len(tokens) >= max_new:
            return Completion(text=text, finish_reason="length", num_tokens=len(tokens))
        # Ended early with neither an end-of-turn token nor a stop string we can see in the text (a stop
        # string transformers matched on tokens): what follows is padding.
        while body and body[-1] == self.pad_token_id:
            body = body[:-1]
        return Completion(text=self._decode(body), finish_reason="stop", num_tokens=len(body))

    # --- log-probs (computed after sampling, apart from the decode loop: see token_logprobs) ------------

    def _with_logprobs(
        self, prompt_ids: list[int], rows: list[list[int]], completions: list[Completion], top: int
    ) -> list[Completion]:
        """The completions with the log-probs of their ``num_tokens`` generated tokens (identical rows,
        as greedy sampling gives, are computed once)."""
        computed: dict[tuple[int, ...], list[TokenLogprob]] = {}
        for row, completion in zip(rows, completions, strict=True):
            tokens = tuple(row[: completion.num_tokens])
            if tokens not in computed:
                computed[tokens] = completion_logprobs(
                    self.model, prompt_ids, list(tokens), top, self._decode_one
                )
        return [
            completion.model_copy(update={"logprobs": computed[tuple(row[: completion.num_tokens])]})
            for row, completion in zip(rows, completions, strict=True)
        ]

    def _decode_one(self, token: int) -> str:
        return str(self.tokenizer.decode([token]))

    def _tokens_to_stop(self, tokens: list[int], stops: Sequence[str]) -> int:
        """The fewest leading tokens whose text contains a stop string (the tokens generated up to it)."""
        low, high = 1, len(tokens)
        while low < high:
            middle = (low + high) // 2
            if first_stop(self._decode(tokens[:middle]), stops) is None:
                low = middle + 1
            else:
                high = middle
        return high

    def _decode(self, tokens: list[int]) -> str:
        return str(self.tokenizer.decode(tokens, skip_special_tokens=True))
