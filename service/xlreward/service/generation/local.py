"""Sampling from the policy model in this process with transformers' ``generate``.

Each prompt gets one ``model.generate`` call that draws its ``n`` samples as one batch
(``num_return_sequences``), run on a worker thread under the lock the scoring engine shares, so the event
loop stays free and the model serves one caller at a time. Right before that call torch's RNG is seeded
from (seed, prompt index), so with a seed a prompt's samples depend on the seed, its index, the prompt and
the sampling settings only; without one it is seeded from the OS's randomness.

Completions end at any end-of-turn token (``stop_token_ids``, passed as ``eos_token_id``), at a stop string
(transformers' ``stop_strings``; the text is then cut just before the first stop string, as OpenAI does) or
after ``max_tokens`` tokens, clamped so that prompt + completion fits the model's context.

Asked for ``logprobs``, each distinct completion then gets one teacher-forced forward that scores its
tokens under the model's raw distribution (``token_logprobs``), outside the decode loop.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch

from xlreward.service.generation.base import chat_messages, first_stop, prompt_seed, raw_text
from xlreward.service.generation.errors import bad_prompt, too_long
from xlreward.service.generation.token_logprobs import completion_logprobs
from xlreward.service.protocol import (
    ChatMessage,
    Completion,
    GenerateRequest,
    GenerateResponse,
    GenerateResult,
    TokenLogprob,
)


class TransformersGenerator:
    """The built-in backend: the policy model in memory, shared with the scoring engine through ``lock``.

    ``max_length`` is the model's context (prompt + completion); ``stop_token_ids`` are the tokens that end
    a turn (``xlreward.service.scoring.templating.end_of_turn_ids``). ``context``: what sampling runs in,
    under the lock (a policy that is one of several adapters over a shared base makes its adapter active).
    """

    name = "transformers"
    supports_logprobs = True

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        model_name: str,
        lock: threading.Lock,
        max_length: int,
        stop_token_ids: frozenset[int],
        context: Callable[[], AbstractContextManager[Any]] = nullcontext,
    ) -> None:
        if not stop_token_ids:
            raise ValueError("stop_token_ids is empty: give at least the tokenizer's EOS token")
        self.model = model
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.lock = lock
        self.context = context
        self.max_length = max_length
        self.stop_token_ids = stop_token_ids
        self.device = model.get_input_embeddings().weight.device  # under a device map: the first layer's
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_token_id: int = pad if pad is not None else min(stop_token_ids)

    async def generate(self, request: GenerateRequest) -> GenerateResponse:
        # Every prompt is rendered (and refused, if it must be) before any sampling starts.
        rendered = await asyncio.to_thread(self._render_all, request)
        results = []
        for index, prompt_ids in enumerate(rendered):
            rows, completions = await asyncio.to_thread(self._sample, prompt_ids, request, index)
            if request.logprobs is not None:
                completions = await asyncio.to_thread(
                    self._with_logprobs, prompt_ids, rows, completions, request.logprobs
                )
            results.append(
                GenerateResult(index=index, completions=completions, prompt_tokens=len(prompt_ids))
            )
        return GenerateResponse(results=results, model=self.model_name)

    async def aclose(self) -> None:
        """Nothing to release: the model belongs to whoever loaded it."""

    # --- rendering -----------------------------------------------------------------------------------

    def _render_all(self, request: GenerateRequest) -> list[list[int]]:
        return [self.render(prompt, index, raw=request.raw) for index, prompt in enumerate(request.prompts)]

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

    def _sample(
        self, prompt_ids: list[int], request: GenerateRequest, index: int
    ) -> tuple[list[list[int]], list[Completion]]:
        """The generated rows (token ids, padded after their end) and their completions, one for one."""
        max_new = min(request.max_tokens, self.max_length - len(prompt_ids))
        greedy = request.temperature == 0
        kwargs = self._generate_kwargs(request, max_new, greedy)
        input_ids = torch.tensor([prompt_ids], dtype=torch.long, device=self.device)
        seed = prompt_seed(request.seed, index) if request.seed is not None else secrets.randbits(63)
        with self.lock, self.context(), torch.inference_mode():
            torch.manual_seed(seed)
            output = self.model.generate(
                input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **kwargs
            )
        rows: list[list[int]] = output[:, len(prompt_ids) :].tolist()
        if greedy:  # one greedy run stands for all n: they would be identical
            rows = rows[:1] * request.n
        return rows, [self._completion(row, request.stop, max_new) for row in rows]

    def _generate_kwargs(self, request: GenerateRequest, max_new: int, greedy: bool) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "max_new_tokens": max_new,
            "eos_token_id": sorted(self.stop_token_ids),
            "pad_token_id": self.pad_token_id,
        }
        if greedy:
            # transformers refuses num_return_sequences > 1 without sampling; sampling args would only warn.
            kwargs["do_sample"] = False
        else:
            # Every knob is passed, top_k=0 included: what is left unset is filled from the model's
            # generation_config and then transformers' defaults (top_k=50).
            kwargs.update(
                do_sample=True,
                num_return_sequences=request.n,
                temperature=request.temperature,
                top_p=request.top_p,
                top_k=request.top_k or 0,
            )
        if request.stop:
            kwargs.update(stop_strings=list(request.stop), tokenizer=self.tokenizer)
        return kwargs

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
        with self.lock, self.context(), torch.inference_mode():
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
