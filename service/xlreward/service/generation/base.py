"""The interface both generation backends implement, and what they share. Torch-free."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Protocol

from xlreward.service.generation.errors import bad_prompt
from xlreward.service.generation.turns import ModelTurns
from xlreward.service.protocol import ChatMessage, GenerateRequest, GenerateResponse


class GenerationBackend(Protocol):
    """Samples ``n`` completions per prompt. ``GenerationError`` says what went wrong."""

    name: str

    async def generate(self, request: GenerateRequest, turns: ModelTurns | None = None) -> GenerateResponse:
        """``turns``: where work on a model in this process runs (a backend that samples elsewhere, such
        as an upstream server, ignores it)."""
        ...

    async def aclose(self) -> None: ...


def prompt_seed(seed: int, index: int) -> int:
    """The seed of prompt ``index`` of a request seeded with ``seed``: a 63-bit function of both, so each
    prompt's samples depend on (seed, index, prompt, params) only, never on the other prompts."""
    digest = hashlib.sha256(f"xlreward.generate:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def request_prompt_seed(request: GenerateRequest, index: int) -> int | None:
    """Prompt ``index``'s seed: with ``seeds``, the seed that prompt would get sent alone with its own entry
    as ``seed`` (so grouping prompts into requests changes nothing); with ``seed``, ``prompt_seed(seed,
    index)``; else None (the backend draws one)."""
    if request.seeds is not None:
        return prompt_seed(request.seeds[index], 0)
    return prompt_seed(request.seed, index) if request.seed is not None else None


def chat_messages(prompt: str | Sequence[ChatMessage], index: int) -> list[dict[str, str]]:
    """A prompt as chat messages: text is one user turn; messages must end with a user turn."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if not prompt or prompt[-1].role != "user":
        raise bad_prompt(
            f"prompts[{index}] is a conversation that ends with a {prompt[-1].role if prompt else 'missing'} "
            "turn: a prompt given as chat messages must end with a user turn, which the completion answers",
            f"prompts[{index}]",
        )
    return [{"role": m.role, "content": m.content} for m in prompt]


def raw_text(prompt: str | Sequence[ChatMessage], index: int) -> str:
    if not isinstance(prompt, str):
        raise bad_prompt(
            f"prompts[{index}] is a list of chat messages but raw=true renders plain text: give the prompt "
            "as a string, or drop raw to use the chat template",
            f"prompts[{index}]",
        )
    return prompt


def first_stop(text: str, stops: Sequence[str]) -> int | None:
    """Where the earliest of the stop strings starts in ``text``, or None."""
    found = [at for at in (text.find(stop) for stop in stops) if at >= 0]
    return min(found) if found else None
