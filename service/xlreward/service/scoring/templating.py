"""Which tokens are scored: turning a (prompt, response) pair into token ids and a scored span.

Chat mode (the default): the prompt is rendered with the tokenizer's chat template as the conversation so
far plus the generation prompt; prompt + response is rendered as the whole conversation. The scored tokens
are what the second rendering adds after the first, up to and including the end-of-turn token: exactly the
tokens the policy would have generated. Template text after the end-of-turn token (ChatML's trailing "\\n")
is never generated, so it is not scored.

Raw mode (base models): prompt and prompt + response are tokenized as plain text, and the EOS token ends
the response.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from xlreward.service.protocol import ChatMessage
from xlreward.service.scoring.errors import ItemError

# For a tokenizer that does not list its vocabulary: longer than any token of the common vocabularies.
DEFAULT_LONGEST_TOKEN_CHARS = 256


class ChatTokenizer(Protocol):
    """The part of a transformers tokenizer the templating uses."""

    chat_template: str | None
    eos_token_id: int | None

    def apply_chat_template(self, conversation: list[dict[str, str]], **kwargs: Any) -> Any: ...
    def __call__(self, text: str, **kwargs: Any) -> Any: ...
    def decode(self, ids: Sequence[int], **kwargs: Any) -> str: ...


@dataclass(frozen=True)
class TemplateOptions:
    """How prompts are rendered. ``icr_compat`` reproduces the ICR reference code, which drops the first
    response token from the sum (an off-by-one; see METHOD.md); off by default."""

    use_chat_template: bool = True
    system_prompt: str | None = None
    icr_compat: bool = False


@dataclass(frozen=True)
class TokenizedItem:
    """A teacher-forced sequence and the span of it that is scored: tokens [score_start, score_end)."""

    input_ids: tuple[int, ...]
    score_start: int
    score_end: int
    truncated: bool = False  # the response was cut to fit the context (only when asked for)
    prompt_length: int | None = None  # the rendered prompt's tokens; None: up to ``score_start``

    @property
    def prompt_end(self) -> int:
        """Where the prompt ends: items of a group share ``input_ids[:prompt_end]``."""
        return self.score_start if self.prompt_length is None else self.prompt_length

    @property
    def num_scored(self) -> int:
        return self.score_end - self.score_start

    def __len__(self) -> int:
        return len(self.input_ids)


def end_of_turn_ids(tokenizer: Any, generation_eos: int | Iterable[int] | None = None) -> frozenset[int]:
    """Token ids that can end a turn: special added tokens (``<|eot_id|>``, ``<|im_end|>``...), the EOS
    token and the model's generation-config EOS ids."""
    ids = {i for i, token in getattr(tokenizer, "added_tokens_decoder", {}).items() if token.special}
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    if isinstance(generation_eos, int):
        ids.add(generation_eos)
    elif generation_eos is not None:
        ids.update(generation_eos)
    return frozenset(ids)


def longest_token_chars(tokenizer: Any) -> int:
    """Characters of the longest token's text, special tokens included: an upper bound on what one token
    can spell (a byte-level vocabulary's entries are at least as long as the bytes they stand for)."""
    vocabulary = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    return max((len(token) for token in vocabulary), default=0) or DEFAULT_LONGEST_TOKEN_CHARS


class ItemTokenizer:
    """Tokenizes (prompt, response) pairs for scoring, refusing items that cannot be scored exactly."""

    def __init__(
        self,
        tokenizer: ChatTokenizer,
        options: TemplateOptions,
        *,
        max_length: int,
        stop_ids: frozenset[int],
    ) -> None:
        if options.use_chat_template and not tokenizer.chat_template:
            raise ValueError(
                "the tokenizer has no chat template: score in raw mode (--raw / use_chat_template=False) "
                "or save a chat_template with the tokenizer"
            )
        self.tokenizer = tokenizer
        self.options = options
        self.max_length = max_length
        self.stop_ids = stop_ids
        # No token spells more characters than this, so text longer than max_length * this many characters
        # has more tokens than the context holds, whatever it says: refused (or cut) before tokenizing.
        self.max_chars = max_length * longest_token_chars(tokenizer)

    def __call__(
        self,
        prompt: str | Sequence[ChatMessage],
        response: str,
        *,
        truncate: bool = False,
        rendered: bool = False,
    ) -> TokenizedItem:
        """``truncate``: cut the response at the context length instead of refusing the item; the
        end-of-turn token is then not scored, and the item says ``truncated``. ``rendered``: the prompt is
        already rendered text (``_render_text``)."""
        response = self._check_chars(prompt, response, truncate)
        if rendered:
            prompt_ids, full_ids = self._render_text(prompt, response)
        elif self.options.use_chat_template:
            prompt_ids, full_ids = self._render_chat(prompt, response)
        else:
            prompt_ids, full_ids = self._render_raw(prompt, response)
        self._check_prefix_stable(prompt_ids, full_ids)
        start = len(prompt_ids)
        if start < 1:
            raise ItemError("empty_prompt", "the prompt tokenizes to nothing: give a non-empty prompt")
        end = self._end_of_response(full_ids, start)
        truncated = len(full_ids) > self.max_length
        if truncated:
            self._check_fits(len(full_ids), start, truncate)
            full_ids, end = full_ids[: self.max_length], min(end, self.max_length)
        if self.options.icr_compat:
            start = min(start + 1, end)
        return TokenizedItem(tuple(full_ids), start, end, truncated=truncated)

    def _check_chars(self, prompt: str | Sequence[ChatMessage], response: str, truncate: bool) -> str:
        """The response to tokenize: as given, or, when truncating, cut to twice the characters that could
        fill the context (so it still overflows it, and the kept head tokenizes as it does in the whole).
        Text that cannot fit is refused here, before a long text is tokenized (seconds per megabyte)."""
        prompt_chars = len(prompt) if isinstance(prompt, str) else sum(len(m.content) for m in prompt)
        if prompt_chars > self.max_chars:
            raise ItemError(
                "too_long",
                f"the prompt is {prompt_chars} characters, more than the models' context of "
                f"{self.max_length} tokens can hold: shorten the prompt",
            )
        if prompt_chars + len(response) <= self.max_chars:
            return response
        if truncate:
            return response[: 2 * self.max_chars]
        raise ItemError(
            "too_long",
            f"the item is {prompt_chars + len(response)} characters, more than the models' context of "
            f"{self.max_length} tokens can hold: shorten the prompt or the response (or ask for truncation)",
        )

    def _check_fits(self, length: int, prompt_length: int, truncate: bool) -> None:
        if not truncate:
            raise ItemError(
                "too_long",
                f"the item is {length} tokens long but the models' context is {self.max_length} "
                "tokens: shorten the prompt or the response (or ask for truncation)",
            )
        if prompt_length >= self.max_length:
            raise ItemError(
                "too_long",
                f"the prompt alone is {prompt_length} tokens but the models' context is {self.max_length} "
                "tokens: truncation cuts responses, not prompts; shorten the prompt",
            )

    def _render_chat(self, prompt: str | Sequence[ChatMessage], response: str) -> tuple[list[int], list[int]]:
        messages = self._messages(prompt)
        prompt_ids = self._apply_template(messages, add_generation_prompt=True)
        full_ids = self._apply_template([*messages, {"role": "assistant", "content": response}])
        return prompt_ids, full_ids

    def _apply_template(
        self, messages: list[dict[str, str]], add_generation_prompt: bool = False
    ) -> list[int]:
        encoded = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=add_generation_prompt, tokenize=True, return_dict=True
        )
        return list(encoded["input_ids"])

    def _messages(self, prompt: str | Sequence[ChatMessage]) -> list[dict[str, str]]:
        if isinstance(prompt, str):
            system = self.options.system_prompt
            head = [{"role": "system", "content": system}] if system else []
            return [*head, {"role": "user", "content": prompt}]
        if not prompt or prompt[-1].role != "user":
            raise ItemError(
                "bad_prompt",
                "a prompt given as chat messages must end with a user turn: the response follows it",
            )
        return [{"role": m.role, "content": m.content} for m in prompt]

    def _render_raw(self, prompt: str | Sequence[ChatMessage], response: str) -> tuple[list[int], list[int]]:
        if not isinstance(prompt, str):
            raise ItemError("bad_prompt", "raw mode scores plain-text prompts: give the prompt as a string")
        prompt_ids = list(self.tokenizer(prompt)["input_ids"])
        full_ids = list(self.tokenizer(prompt + response)["input_ids"])
        eos = self.tokenizer.eos_token_id
        if eos is not None and full_ids[-1:] != [eos]:
            full_ids.append(eos)
        return prompt_ids, full_ids

    def _render_text(self, prompt: str | Sequence[ChatMessage], response: str) -> tuple[list[int], list[int]]:
        """A prompt already in the model's format (its chat template applied, special tokens written out)
        and the response as generated after it: tokenized as written, no special tokens added. Trailing
        padding (a batch's decode keeps it) is dropped, but an end-of-turn token the pad id shares stays."""
        if not isinstance(prompt, str):
            raise ItemError("bad_prompt", "a rendered prompt is text: give it as a string")
        prompt_ids = list(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])
        full_ids = list(self.tokenizer(prompt + response, add_special_tokens=False)["input_ids"])
        pad = getattr(self.tokenizer, "pad_token_id", None)
        while (
            pad is not None
            and len(full_ids) > len(prompt_ids) + 1
            and full_ids[-1] == pad
            # a pad that is also the end-of-turn token stays when it ends the response itself
            and (pad not in self.stop_ids or full_ids[-2] == pad or full_ids[-2] in self.stop_ids)
        ):
            full_ids.pop()
        return prompt_ids, full_ids

    def _check_prefix_stable(self, prompt_ids: list[int], full_ids: list[int]) -> None:
        if full_ids[: len(prompt_ids)] == prompt_ids and len(full_ids) > len(prompt_ids):
            return
        at = next(
            (i for i, (a, b) in enumerate(zip(prompt_ids, full_ids, strict=False)) if a != b),
            min(len(prompt_ids), len(full_ids)),
        )
        alone = self.tokenizer.decode(prompt_ids[at : at + 8])
        joined = self.tokenizer.decode(full_ids[at : at + 8])
        raise ItemError(
            "not_prefix_stable",
            f"the prompt is not a token prefix of prompt + response (they part at token {at}: "
            f"{alone!r} alone vs {joined!r} with the response), so the response's log-prob is undefined: "
            "strip leading whitespace from the response, end the prompt on a token boundary, or use a chat "
            "template that renders the prompt the same way in both cases",
        )

    def _end_of_response(self, full_ids: list[int], start: int) -> int:
        """End (exclusive) of the scored span: just after the last end-of-turn token, if there is one."""
        for index in range(len(full_ids) - 1, start - 1, -1):
            if full_ids[index] in self.stop_ids:
                return index + 1
        return len(full_ids)
