"""Wire schemas shared by the server, the client, the CLI and the JSONL files. Torch-free by design.

Every request model forbids unknown fields, so a typo is a 422 that names the field, never a silently
ignored option. The OpenAI-compatible requests instead refuse what they do not implement with a 400 that
names the field, and let pass what changes nothing (OpenAI clients send fields we have no use for).
Responses are parsed leniently, so that servers can grow.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, model_validator

Role = Literal["system", "user", "assistant", "tool"]

# Responses ignore fields they do not know, so a newer server can add fields without breaking older clients.
RESPONSE_CONFIG = ConfigDict(extra="ignore", frozen=True)


FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]  # JSON's NaN/Infinity extensions are refused

MAX_TOP_LOGPROBS = 20  # alternatives per token a request may ask for (OpenAI's chat limit, vLLM's default)


class ChatMessage(BaseModel):
    """One turn of a conversation, as chat templates take it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Role
    content: str


Prompt = Annotated[str | list[ChatMessage], Field(min_length=1)]


# --- /reward -------------------------------------------------------------------------------------------


class RewardItem(BaseModel):
    """A (prompt, response) pair to score.

    ``prompt`` is either the instruction as plain text (rendered as one user turn) or the whole conversation
    before the response as chat messages, ending with a user turn.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str | int | None = None
    prompt: Prompt
    response: str


class RewardGroup(BaseModel):
    """One prompt with several responses (the annotation shape: the method samples 10 per prompt).
    Scored together, the prompt computed once, and returned ranked by reward."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str | int | None = None
    prompt: Prompt
    responses: list[str] = Field(min_length=1)


class RewardRequest(BaseModel):
    """``items`` and/or ``groups``; ``model``: which served reward model scores them (``GET /v1/models``
    lists them; default: the server's first); ``beta`` overrides an implicit model's reward scale for this
    request. ``truncate``: cut responses that do not fit the context instead of refusing them (413)."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    items: list[RewardItem] = Field(default_factory=list)
    groups: list[RewardGroup] = Field(default_factory=list)
    beta: Annotated[FiniteFloat, Field(ge=0)] | None = None
    truncate: bool = False
    rendered: bool = Field(
        default=False,
        description="prompts are text already in the model's chat format (special tokens written out); "
        "each response is scored as it follows its prompt verbatim",
    )

    @model_validator(mode="after")
    def _not_empty(self) -> RewardRequest:
        if not self.items and not self.groups:
            raise ValueError('give at least one entry in "items" or "groups"')
        return self


class RewardResult(BaseModel):
    """Scores of one item.

    An implicit model: ``policy_logp`` and ``reference_logp`` are SUMS of token log-probabilities over the
    scored tokens (the response and its end-of-turn token); ``reward = beta * (policy_logp -
    reference_logp)``. The ``*_mean`` fields divide by ``num_response_tokens`` (length-normalised variants;
    0.0 when nothing is scored).

    A classifier model: ``reward`` is its head's scalar for the prompt and response rendered as one
    conversation; the log-prob fields and ``reward_mean`` are null, and ``num_response_tokens`` counts the
    response's tokens in that conversation.
    """

    model_config = RESPONSE_CONFIG

    id: str | int | None = None
    reward: float
    policy_logp: float | None = None
    reference_logp: float | None = None
    num_response_tokens: int
    reward_mean: float | None = None
    policy_logp_mean: float | None = None
    reference_logp_mean: float | None = None
    truncated: bool = False


class RankedResult(RewardResult):
    """A group member's scores; ``index`` is its position in the request's ``responses``."""

    index: int
    rank: int  # 0 = highest reward


class GroupResult(BaseModel):
    model_config = RESPONSE_CONFIG

    id: str | int | None = None
    results: list[RankedResult]  # highest reward first


class Usage(BaseModel):
    model_config = RESPONSE_CONFIG

    items: int
    scored_tokens: int


class RewardResponse(BaseModel):
    model_config = RESPONSE_CONFIG

    results: list[RewardResult]  # one per request item, in input order
    groups: list[GroupResult]  # one per request group, in input order
    beta: float | None  # null for a classifier model
    usage: Usage
    model: str | None = None  # the served model that scored the request


# --- /generate -----------------------------------------------------------------------------------------


class SamplingParams(BaseModel):
    """Sampling settings. ``temperature`` 0 is greedy; ``top_k`` None or 0 is off; ``seed`` makes the
    samples of a prompt reproducible."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n: int = Field(default=1, ge=1, le=64)
    temperature: Annotated[FiniteFloat, Field(ge=0, le=10)] = 1.0
    top_p: Annotated[FiniteFloat, Field(gt=0, le=1)] = 1.0
    top_k: Annotated[int, Field(ge=0)] | None = None
    max_tokens: int = Field(default=256, ge=1)
    stop: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list, max_length=16)
    seed: int | None = None


class GenerateRequest(SamplingParams):
    """n completions for each prompt from the policy model, the prompt rendered with its chat template
    (``raw``: as plain text, for base models)."""

    prompts: list[Prompt] = Field(min_length=1)
    raw: bool = False
    logprobs: int | None = Field(
        default=None,
        ge=0,
        le=MAX_TOP_LOGPROBS,
        description="return each completion token's log-prob with this many most likely alternatives "
        "(0: none); null: no log-probs",
    )


FinishReason = Literal["stop", "length"]


class TopLogprob(BaseModel):
    """A token and its log-prob. ``token`` is the token's text on its own (a partial UTF-8 character shows
    as U+FFFD); ``bytes`` is that text's UTF-8 encoding, as vLLM gives it (OpenAI gives the token's raw
    bytes, which differ only for a partial character)."""

    model_config = RESPONSE_CONFIG

    token: str
    logprob: float
    bytes: list[int]


class TokenLogprob(TopLogprob):
    """A completion token, its log-prob and the ``top_logprobs`` most likely tokens at its position, most
    likely first (OpenAI's chat ``logprobs.content`` entry)."""

    top_logprobs: list[TopLogprob]


class Completion(BaseModel):
    model_config = RESPONSE_CONFIG

    text: str
    finish_reason: FinishReason
    num_tokens: int
    # One entry per generated token (num_tokens of them, an end-of-turn token included) when asked for.
    logprobs: list[TokenLogprob] | None = None


class GenerateResult(BaseModel):
    model_config = RESPONSE_CONFIG

    index: int  # the prompt's position in the request
    completions: list[Completion]
    prompt_tokens: int | None = None  # the tokens the model saw for the prompt (null: cannot tell)


class GenerateResponse(BaseModel):
    model_config = RESPONSE_CONFIG

    results: list[GenerateResult]
    model: str


# --- /best-of-n ----------------------------------------------------------------------------------------


class BestOfNPrompt(BaseModel):
    """What to sample from, and what to score the samples against: ``reward_prompt`` when given (the
    English instruction behind a target-language prompt, as cross-lingual rewarding scores), else
    ``prompt`` itself (as "Reuse Your Rewards" scores)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str | int | None = None
    prompt: Prompt
    reward_prompt: Prompt | None = None


class BestOfNRequest(SamplingParams):
    """``n`` samples per prompt, each scored by the reward model ``model`` names (default: the first
    served), returned best first. ``sampler``: the served implicit model whose policy samples (default:
    the server's generation backend, i.e. the first model's policy or the upstream); ``sampler_role``
    "reference" samples from its reference instead (the SFT model, as "Reuse Your Rewards" reranks).
    ``truncate`` (on by default): a sample too long for the reward model's context is cut, and says so,
    instead of failing the request."""

    n: int = Field(default=16, ge=1, le=64)
    prompts: list[BestOfNPrompt] = Field(min_length=1)
    model: str | None = None
    sampler: str | None = None
    sampler_role: Literal["policy", "reference"] = "policy"
    raw: bool = False
    truncate: bool = True


class Candidate(BaseModel):
    model_config = RESPONSE_CONFIG

    index: int  # the sample's position among the prompt's n
    text: str
    score: float  # the reward model's reward, as /reward gives it for (reward prompt, text)
    finish_reason: FinishReason
    truncated: bool = False  # cut to fit the reward model's context before it was scored


class BestOfNResult(BaseModel):
    model_config = RESPONSE_CONFIG

    id: str | int | None = None
    best: Candidate
    candidates: list[Candidate]  # highest score first


class BestOfNResponse(BaseModel):
    model_config = RESPONSE_CONFIG

    results: list[BestOfNResult]  # one per prompt, in request order
    model: str  # the reward model that scored
    sampler: str  # the model that sampled


# --- OpenRLHF's remote reward model --------------------------------------------------------------------


class OpenRLHFRewardRequest(BaseModel):
    """What OpenRLHF posts to ``--remote_rm_url``: per sample the whole sequence as decoded text (``query``:
    the rendered prompt, the response, any padding) and its rendered prompt; ``labels`` are its dataset
    labels (unused by a reward model)."""

    model_config = ConfigDict(extra="ignore")

    query: list[str] = Field(min_length=1)
    prompts: list[str]
    labels: list[Any] | None = None

    @model_validator(mode="after")
    def _paired(self) -> OpenRLHFRewardRequest:
        if len(self.prompts) != len(self.query):
            raise ValueError(
                f"{len(self.query)} queries but {len(self.prompts)} prompts: give one prompt per query"
            )
        return self


class OpenRLHFRewardResponse(BaseModel):
    model_config = RESPONSE_CONFIG

    rewards: list[float]  # what OpenRLHF reads (its score_key)
    scores: list[float]  # the same values, under the name newer OpenRLHF versions also read


# --- OpenAI-compatible ---------------------------------------------------------------------------------


class UnsupportedField(NamedTuple):
    """Part of an OpenAI request that this server does not implement: the route refuses it with a 400."""

    location: str  # e.g. "presence_penalty", "messages[1].content[0]"
    message: str  # names the field and says what to send instead


# OpenAI request fields we do not implement, with the values that change nothing (the APIs' defaults, which
# some tools send explicitly). Any other value is refused with a 400 that names the field: an option we
# silently ignored would make a caller believe it had been applied.
OPENAI_INERT_VALUES: dict[str, tuple[Any, ...]] = {
    "presence_penalty": (0, None),
    "frequency_penalty": (0, None),
    "logit_bias": ({}, None),
    "response_format": ({"type": "text"}, None),
    "tools": ([], None),
    "tool_choice": ("none", "auto", None),  # without tools (refused) both mean plain text
    "functions": ([], None),
    "function_call": ("none", "auto", None),
    "stream_options": (None,),
    "best_of": (1, None),
    "echo": (False, None),
    "suffix": ("", None),
    "modalities": (["text"], None),
    "audio": (None,),
    "prediction": (None,),
    "reasoning_effort": (None,),
    "verbosity": (None,),
    "web_search_options": (None,),
}
# Fields that never change what is sampled, accepted whatever their value: who asks (user,
# safety_identifier), what OpenAI would keep or bill (metadata, store, service_tier, prompt_cache_key), and
# parallel_tool_calls, which matters only with tools (refused).
OPENAI_HARMLESS_FIELDS = frozenset(
    [
        "user",
        "safety_identifier",
        "metadata",
        "store",
        "service_tier",
        "prompt_cache_key",
        "parallel_tool_calls",
    ]
)


def _refuse_extra(name: str, value: Any) -> UnsupportedField | None:
    """Why a field outside our schema is refused, or None when it changes nothing."""
    if name in OPENAI_HARMLESS_FIELDS:
        return None
    inert = OPENAI_INERT_VALUES.get(name)
    if inert is None:
        return UnsupportedField(name, f"{name} is not supported by this server: drop it")
    if value in inert:
        return None
    shown = json.dumps(value)
    shown = shown if len(shown) <= 60 else shown[:60] + "..."
    return UnsupportedField(
        name, f"{name}={shown} is not supported by this server: drop it or send {json.dumps(inert[0])}"
    )


class OpenAIChatMessage(BaseModel):
    """A chat message as OpenAI clients send it. ``content`` is a string or a list of content parts, of
    which only text parts are supported (joined with newlines, as vLLM joins them); "developer" is OpenAI's
    newer name for "system". Other fields are accepted only when empty: an assistant message echoed back
    from a response may carry ``refusal: null`` or ``tool_calls: null``."""

    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None

    def problems(self, location: str) -> list[UnsupportedField]:
        found = [
            UnsupportedField(
                f"{location}.{name}", f"{location}.{name} is not supported by this server: drop it"
            )
            for name, value in (self.model_extra or {}).items()
            if value not in (None, [], "")
        ]
        if self.content is None:
            found.append(
                UnsupportedField(f"{location}.content", f"{location}.content is null: give its text")
            )
        for at, part in enumerate(self.content if isinstance(self.content, list) else []):
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                where = f"{location}.content[{at}]"
                found.append(
                    UnsupportedField(
                        where,
                        f"{where} is a {json.dumps(part.get('type'))} part: only text parts "
                        '({"type": "text", "text": "..."}) are supported',
                    )
                )
        return found

    def as_chat_message(self) -> ChatMessage:
        """Our message; call once ``problems`` is empty."""
        parts = self.content if isinstance(self.content, list) else []
        content = self.content if isinstance(self.content, str) else "\n".join(part["text"] for part in parts)
        return ChatMessage(role="system" if self.role == "developer" else self.role, content=content)


class _OpenAIRequest(BaseModel):
    # Fields outside the schema are kept (extra="allow") so that problems() can refuse each by name, or let
    # it pass when it changes nothing (OPENAI_INERT_VALUES, OPENAI_HARMLESS_FIELDS).
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    n: int = Field(default=1, ge=1, le=64)
    temperature: Annotated[FiniteFloat, Field(ge=0, le=10)] = 1.0
    top_p: Annotated[FiniteFloat, Field(gt=0, le=1)] = 1.0
    top_k: Annotated[int, Field(ge=-1)] | None = None  # vLLM's extension; -1 or 0 is off
    max_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False

    def problems(self) -> list[UnsupportedField]:
        """What in the request this server does not implement; the route refuses it with a 400."""
        found = [_refuse_extra(name, value) for name, value in (self.model_extra or {}).items()]
        if self.stream:
            found.append(
                UnsupportedField("stream", "streaming is not supported: send the request with stream=false")
            )
        return [problem for problem in found if problem is not None]

    def token_limit(self) -> int | None:
        return self.max_tokens

    def native_logprobs(self) -> int | None:
        """The native ``logprobs``: alternatives per token, or None for no log-probs."""
        return None

    def sampling(self, default_max_tokens: int) -> dict[str, Any]:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return {
            "n": self.n,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k if self.top_k and self.top_k > 0 else None,
            "max_tokens": self.token_limit() or default_max_tokens,
            "stop": stop,
            "seed": self.seed,
            "logprobs": self.native_logprobs(),
        }


class CompletionsRequest(_OpenAIRequest):
    """``logprobs``: the log-prob of each completion token with this many alternatives (OpenAI allows up to
    5, we up to 20 as vLLM does)."""

    prompt: str | list[str]
    logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)

    def native_logprobs(self) -> int | None:
        return self.logprobs


class ChatCompletionsRequest(_OpenAIRequest):
    """``max_completion_tokens`` is the newer name of ``max_tokens``: give either, or both with the same
    value (different values are refused, not resolved silently). ``logprobs`` true returns each completion
    token's log-prob, with ``top_logprobs`` alternatives."""

    messages: list[OpenAIChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)

    def problems(self) -> list[UnsupportedField]:
        found = super().problems()
        for at, message in enumerate(self.messages):
            found += message.problems(f"messages[{at}]")
        limits = {self.max_tokens, self.max_completion_tokens} - {None}
        if len(limits) > 1:
            found.append(
                UnsupportedField(
                    "max_completion_tokens",
                    f"max_completion_tokens={self.max_completion_tokens} and max_tokens={self.max_tokens} "
                    "disagree: give only max_completion_tokens (max_tokens is its older name)",
                )
            )
        if self.top_logprobs and not self.logprobs:
            found.append(UnsupportedField("top_logprobs", "top_logprobs needs logprobs=true: set it"))
        return found

    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def native_logprobs(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    def conversation(self) -> list[ChatMessage]:
        """The messages as ours; call once ``problems`` is empty."""
        return [message.as_chat_message() for message in self.messages]


# --- errors --------------------------------------------------------------------------------------------


class ErrorDetail(BaseModel):
    model_config = RESPONSE_CONFIG

    code: str  # stable, machine-readable: "invalid_request", "too_long", "queue_full", "timeout", ...
    message: str  # what went wrong and what to do about it
    location: str | None = None  # e.g. "items[3].response"


class ErrorEnvelope(BaseModel):
    """Every error the server returns, whatever its status."""

    model_config = RESPONSE_CONFIG

    error: ErrorDetail
