"""Wire schemas shared by the server, the client, the CLI and the JSONL files. Torch-free by design.

Every request model forbids unknown fields, so a typo is a 422 that names the field, never a silently
ignored option. The OpenAI-compatible requests instead refuse what they do not implement with a 400 that
names the field, and let pass what changes nothing (OpenAI clients send fields we have no use for).
Responses are parsed leniently, so that servers can grow.

The requests' JSON schemas are the server's OpenAPI document, and tests/test_contract.py holds the server to
it: a request the schema allows is served (or refused only for a reason no schema can state, such as a prompt
longer than the model's context), and one it does not allow is refused with a 4xx. So request fields take
JSON's types as they are (``"2"`` is not 2, ``0`` is not false), every text must be Unicode (a lone UTF-16
surrogate is refused), and each field that costs work per character or per item is bounded.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import PydanticCustomError

Role = Literal["system", "user", "assistant", "tool"]

# Responses ignore fields they do not know, so a newer server can add fields without breaking older clients.
RESPONSE_CONFIG = ConfigDict(extra="ignore", frozen=True)

MAX_TOP_LOGPROBS = 20  # alternatives per token a request may ask for (OpenAI's chat limit, vLLM's default)


def _json_integer(value: Any) -> Any:
    if isinstance(value, bool | str):
        raise PydanticCustomError("int_type", "Input should be a valid integer")
    return value


# JSON's types as JSON Schema reads them: 2.0 is an integer and 2 a number, but true is neither, and "2" is a
# string (pydantic's lax mode would take true and "2" for 2, and "yes" for true). NaN and Infinity, JSON
# extensions, are refused.
JSON_INTEGER = BeforeValidator(_json_integer)
JsonInt = Annotated[int, JSON_INTEGER]
FiniteFloat = Annotated[float, Field(strict=True, allow_inf_nan=False)]
# Bounds go before JSON_INTEGER: after it, pydantic writes them into the OpenAPI schema as "ge" and "le",
# which JSON Schema does not know.
TopLogprobs = Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS), JSON_INTEGER]
TokenLimit = Annotated[int, Field(ge=1), JSON_INTEGER]
Id = str | JsonInt | None  # echoed back as given

# Stop strings: how many, and how long each (stop sequences are words or markers; matching them costs work
# per character on every step). 16 of 100,000 characters once grew a server by gigabytes.
MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 256
# An implicit reward is beta * (log-prob difference); a larger beta would overflow it to infinity, which JSON
# cannot carry. Rewards are scaled in the tenths, not the thousands.
MAX_BETA = 1000.0

StopString = Annotated[str, Field(min_length=1, max_length=MAX_STOP_CHARS)]

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def lone_surrogate_at(data: Any) -> str | None:
    """Where ``data`` (JSON as parsed) holds a string with a lone UTF-16 surrogate, e.g. "items[0].prompt",
    or None. JSON's escapes can spell one ("\\ud800"), but it is no Unicode character: it cannot be encoded
    as UTF-8, so neither a tokenizer nor a response could carry it. Iterative, so deep nesting cannot
    exhaust the stack."""
    stack: list[tuple[str, Any]] = [("", data)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, str):
            # isascii() is a fast C check that settles most text; only the rest is searched
            if not value.isascii() and _LONE_SURROGATE.search(value):
                return where or "the body"
        elif isinstance(value, dict):
            for key, item in reversed(value.items()):
                if isinstance(key, str) and _LONE_SURROGATE.search(key):
                    return f"a field name in {where or 'the body'}"
                stack.append((f"{where}.{key}" if where else str(key), item))
        elif isinstance(value, list):
            stack.extend((f"{where}[{at}]", item) for at, item in reversed(list(enumerate(value))))
    return None


class UnicodeRequest(BaseModel):
    """A request body whose every string, field names included, must be Unicode text (checked once, at the
    request's root, before the fields are validated)."""

    @model_validator(mode="before")
    @classmethod
    def _unicode_text(cls, data: Any) -> Any:
        where = lone_surrogate_at(data)
        if where is not None:
            raise PydanticCustomError(
                "lone_surrogate",
                "{where} holds a lone UTF-16 surrogate (an escape such as \\ud800 without its pair), which "
                "is not Unicode text: send the character itself, or both halves of its surrogate pair",
                {"where": where},
            )
        return data


class ChatMessage(BaseModel):
    """One turn of a conversation, as chat templates take it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Role
    content: str


NonEmptyText = Annotated[str, Field(min_length=1)]
Prompt = NonEmptyText | Annotated[list[ChatMessage], Field(min_length=1)]


# --- /reward -------------------------------------------------------------------------------------------


class RewardItem(BaseModel):
    """A (prompt, response) pair to score.

    ``prompt`` is either the instruction as plain text (rendered as one user turn) or the whole conversation
    before the response as chat messages, ending with a user turn.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Id = None
    prompt: Prompt
    response: str


class RewardGroup(BaseModel):
    """One prompt with several responses (the annotation shape: the method samples 10 per prompt).
    Scored together, the prompt computed once, and returned ranked by reward."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Id = None
    prompt: Prompt
    responses: list[str] = Field(min_length=1)


def _document_something_to_score(schema: dict[str, Any]) -> None:
    schema["anyOf"] = [
        {"required": [name], "properties": {name: {"minItems": 1}}} for name in ("items", "groups")
    ]


class RewardRequest(UnicodeRequest):
    """``items`` and/or ``groups``; ``model``: which served reward model scores them (``GET /v1/models``
    lists them; default: the server's first); ``beta`` overrides an implicit model's reward scale for this
    request. ``truncate``: cut responses that do not fit the context instead of refusing them (413)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_document_something_to_score)

    model: str | None = None
    items: list[RewardItem] = Field(default_factory=list)
    groups: list[RewardGroup] = Field(default_factory=list)
    beta: Annotated[FiniteFloat, Field(ge=0, le=MAX_BETA)] | None = None
    truncate: StrictBool = False
    rendered: StrictBool = Field(
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


class SamplingParams(UnicodeRequest):
    """Sampling settings. ``temperature`` 0 is greedy; ``top_k`` None or 0 is off; ``seed`` makes the
    samples of a prompt reproducible. ``max_tokens``: a limit the request sets must fit the model's context
    after the prompt (else 400); left out, the default is cut to the room the prompt leaves."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n: JsonInt = Field(default=1, ge=1, le=64)
    temperature: Annotated[FiniteFloat, Field(ge=0, le=10)] = 1.0
    top_p: Annotated[FiniteFloat, Field(gt=0, le=1)] = 1.0
    top_k: Annotated[int, Field(ge=0), JSON_INTEGER] | None = None
    max_tokens: JsonInt = Field(default=256, ge=1)
    stop: list[StopString] = Field(default_factory=list, max_length=MAX_STOP_STRINGS)
    seed: JsonInt | None = None

    def max_tokens_asked(self) -> bool:
        """Whether the request set ``max_tokens`` (refused when it does not fit) rather than leaving the
        default (cut to fit)."""
        return "max_tokens" in self.model_fields_set


class GenerateRequest(SamplingParams):
    """n completions for each prompt from the policy model, the prompt rendered with its chat template
    (``raw``: as plain text, for base models)."""

    prompts: list[Prompt] = Field(min_length=1)
    seeds: list[JsonInt] | None = Field(
        default=None,
        description="one seed per prompt, in order, instead of seed: each prompt samples as it would sent "
        "alone with its entry as seed, so how prompts are grouped into requests changes nothing",
    )
    raw: StrictBool = False
    logprobs: TopLogprobs | None = Field(
        default=None,
        description="return each completion token's log-prob with this many most likely alternatives "
        "(0: none); null: no log-probs",
    )

    def seeds_problem(self) -> str | None:
        """What is wrong with ``seeds`` beside the other fields, if anything. (Checked by the route, not the
        schema: a JSON schema cannot tie one array's length to another's.)"""
        if self.seeds is not None and self.seed is not None:
            return 'give "seed" or "seeds", not both'
        if self.seeds is not None and len(self.seeds) != len(self.prompts):
            return f'"seeds" has {len(self.seeds)} entries for {len(self.prompts)} prompts: give one each'
        return None


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

    id: Id = None
    prompt: Prompt
    reward_prompt: Prompt | None = None


class BestOfNRequest(SamplingParams):
    """``n`` samples per prompt, each scored by the reward model ``model`` names (default: the first
    served), returned best first. ``sampler``: the served implicit model whose policy samples (default:
    the server's generation backend, i.e. the first model's policy or the upstream); ``sampler_role``
    "reference" samples from its reference instead (the SFT model, as "Reuse Your Rewards" reranks).
    ``truncate`` (on by default): a sample too long for the reward model's context is cut, and says so,
    instead of failing the request."""

    n: JsonInt = Field(default=16, ge=1, le=64)
    prompts: list[BestOfNPrompt] = Field(min_length=1)
    model: str | None = None
    sampler: str | None = None
    sampler_role: Literal["policy", "reference"] = "policy"
    raw: StrictBool = False
    truncate: StrictBool = True


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


class OpenRLHFRewardRequest(UnicodeRequest):
    """What OpenRLHF posts to ``--remote_rm_url``: per sample the whole sequence as decoded text (``query``:
    the rendered prompt, the response, any padding) and its rendered prompt; ``labels`` are its dataset
    labels (unused by a reward model). ``prompts[i]`` pairs with ``query[i]``, which starts with it (a
    request where they do not pair is refused with a 422, code "query_mismatch")."""

    model_config = ConfigDict(extra="ignore")

    query: list[str] = Field(min_length=1)
    prompts: list[NonEmptyText]
    labels: list[Any] | None = None

    def mismatch(self) -> tuple[str, str] | None:
        """Why the queries and prompts do not pair up, and where; None when they do."""
        if len(self.prompts) != len(self.query):
            return (
                f"{len(self.query)} queries but {len(self.prompts)} prompts: give one prompt per query",
                "prompts",
            )
        for index, (query, prompt) in enumerate(zip(self.query, self.prompts, strict=True)):
            if not query.startswith(prompt):
                return (
                    f"query[{index}] does not start with prompts[{index}]: OpenRLHF's query is the prompt "
                    "followed by the response; send both as decoded from the same tokens",
                    f"query[{index}]",
                )
        return None


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


def json_equal(left: Any, right: Any) -> bool:
    """Equality of parsed JSON as JSON Schema's ``enum`` sees it: 0 equals 0.0, but false is not 0 (as it
    is in Python), nor [false] [0]."""
    if isinstance(left, bool) or isinstance(right, bool):
        return left is right
    if isinstance(left, dict) and isinstance(right, dict):
        return left.keys() == right.keys() and all(json_equal(left[key], right[key]) for key in left)
    if isinstance(left, list) and isinstance(right, list):
        return len(left) == len(right) and all(map(json_equal, left, right))
    if isinstance(left, int | float) and isinstance(right, int | float):
        return left == right
    return type(left) is type(right) and left == right


def _refuse_extra(name: str, value: Any) -> UnsupportedField | None:
    """Why a field outside our schema is refused, or None when it changes nothing."""
    if name in OPENAI_HARMLESS_FIELDS:
        return None
    inert = OPENAI_INERT_VALUES.get(name)
    if inert is None:
        return UnsupportedField(name, f"{name} is not supported by this server: drop it")
    if any(json_equal(value, accepted) for accepted in inert):
        return None
    shown = json.dumps(value)
    shown = shown if len(shown) <= 60 else shown[:60] + "..."
    return UnsupportedField(
        name, f"{name}={shown} is not supported by this server: drop it or send {json.dumps(inert[0])}"
    )


# What the OpenAI routes serve, as their OpenAPI schemas state it. The models below accept more (any JSON in
# the unsupported places) so that problems() can refuse each with a 400 that names it; the schema documents
# only what is served, so a request it allows is never refused, and one it does not allow always is.
EMPTY_VALUES: tuple[Any, ...] = (None, "", [])
TEXT_CONTENT_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "string"},
        {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"type": {"const": "text"}, "text": {"type": "string"}},
                "required": ["type", "text"],
            },
        },
    ],
    "title": "Content",
    "description": "the text, or text content parts (joined with newlines); no other part types",
}


def _document_chat_message(schema: dict[str, Any]) -> None:
    schema["required"] = ["role", "content"]
    schema["additionalProperties"] = {
        "enum": list(EMPTY_VALUES),
        "description": "other message fields (name, refusal, tool_calls...) only when empty",
    }


def _document_openai_extras(schema: dict[str, Any]) -> None:
    """OpenAI's fields we accept without implementing them: each with the values that change nothing, and
    the harmless ones with any value; no other field."""
    properties = schema["properties"]
    for name, values in OPENAI_INERT_VALUES.items():
        properties[name] = {
            "enum": list(values),
            "description": "not implemented: only a value that changes nothing",
        }
    for name in sorted(OPENAI_HARMLESS_FIELDS):
        properties[name] = {"description": "accepted and ignored: it changes nothing that is sampled"}
    schema["additionalProperties"] = False


def _document_chat_request(schema: dict[str, Any]) -> None:
    _document_openai_extras(schema)
    # top_logprobs alternatives come with the log-probs only.
    schema["if"] = {
        "properties": {"top_logprobs": {"type": "integer", "minimum": 1}},
        "required": ["top_logprobs"],
    }
    schema["then"] = {"properties": {"logprobs": {"const": True}}, "required": ["logprobs"]}


class OpenAIChatMessage(BaseModel):
    """A chat message as OpenAI clients send it. ``content`` is a string or a list of content parts, of
    which only text parts are supported (joined with newlines, as vLLM joins them); "developer" is OpenAI's
    newer name for "system". Other fields are accepted only when empty: an assistant message echoed back
    from a response may carry ``refusal: null`` or ``tool_calls: null``."""

    model_config = ConfigDict(extra="allow", json_schema_extra=_document_chat_message)

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Annotated[str | list[dict[str, Any]] | None, WithJsonSchema(TEXT_CONTENT_SCHEMA)] = None

    def problems(self, location: str) -> list[UnsupportedField]:
        found = [
            UnsupportedField(
                f"{location}.{name}", f"{location}.{name} is not supported by this server: drop it"
            )
            for name, value in (self.model_extra or {}).items()
            if not any(json_equal(value, empty) for empty in EMPTY_VALUES)
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


class _OpenAIRequest(UnicodeRequest):
    # Fields outside the schema are kept (extra="allow") so that problems() can refuse each by name, or let
    # it pass when it changes nothing (OPENAI_INERT_VALUES, OPENAI_HARMLESS_FIELDS).
    model_config = ConfigDict(extra="allow", json_schema_extra=_document_openai_extras)

    model: str | None = None
    n: JsonInt = Field(default=1, ge=1, le=64)
    temperature: Annotated[FiniteFloat, Field(ge=0, le=10)] = 1.0
    top_p: Annotated[FiniteFloat, Field(gt=0, le=1)] = 1.0
    top_k: Annotated[int, Field(ge=-1), JSON_INTEGER] | None = None  # vLLM's extension; -1 or 0 is off
    max_tokens: TokenLimit | None = Field(
        default=None, description="must fit the model's context after the prompt; left out: the default"
    )
    stop: StopString | Annotated[list[StopString], Field(max_length=MAX_STOP_STRINGS)] | None = None
    seed: JsonInt | None = None
    stream: Annotated[
        StrictBool, WithJsonSchema({"const": False, "description": "streaming is not supported"})
    ] = False

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

    prompt: NonEmptyText | Annotated[list[NonEmptyText], Field(min_length=1)]
    logprobs: TopLogprobs | None = None

    def native_logprobs(self) -> int | None:
        return self.logprobs


class ChatCompletionsRequest(_OpenAIRequest):
    """``max_completion_tokens`` is the newer name of ``max_tokens``: give either, or both with the same
    value (different values are refused, not resolved silently). ``logprobs`` true returns each completion
    token's log-prob, with ``top_logprobs`` alternatives."""

    model_config = ConfigDict(json_schema_extra=_document_chat_request)

    messages: list[OpenAIChatMessage] = Field(min_length=1)
    max_completion_tokens: TokenLimit | None = None
    logprobs: StrictBool | None = None
    top_logprobs: TopLogprobs | None = None

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
