"""The real OpenAI Python SDK against the real server over a socket (issue 21): what the SDK, and the tools
built on it, need from /v1/models, /v1/completions and /v1/chat/completions. Full usage, the newer
``max_completion_tokens``, log-probs, text content parts, and a 400 naming every field we do not implement
(which used to be ignored silently)."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from serving import running_server
from xlreward.service.scoring.loading import load_tokenizer

KEY = "sk-sdk-test"


@pytest.fixture(scope="module")
def server(llama_pair, tmp_path_factory):  # type: ignore[no-untyped-def]
    with running_server(llama_pair, tmp_path_factory.mktemp("logs"), api_keys={KEY: "sdk"}) as url:
        yield url


@pytest.fixture(scope="module")
def client(server: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def tokenizer(llama_pair):  # type: ignore[no-untyped-def]
    return load_tokenizer(llama_pair.policy)


def templated_length(tokenizer: Any, messages: list[dict[str, str]]) -> int:
    encoded = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True
    )
    return len(encoded["input_ids"])


def test_models_list(client: openai.OpenAI) -> None:
    assert [model.id for model in client.models.list()]


def test_chat_usage_max_completion_tokens_and_logprobs(client: openai.OpenAI, tokenizer: Any) -> None:
    messages: Any = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
    chat = client.chat.completions.create(
        model="policy",
        messages=messages,
        n=2,
        temperature=0,
        max_completion_tokens=5,
        logprobs=True,
        top_logprobs=3,
    )
    assert chat.usage is not None
    assert chat.usage.prompt_tokens == templated_length(tokenizer, messages)  # once, not once per choice
    lengths = []
    for choice in chat.choices:
        assert choice.logprobs is not None and choice.logprobs.content is not None
        content = choice.logprobs.content
        lengths.append(len(content))
        assert 1 <= len(content) <= 5
        if choice.finish_reason == "length":
            assert len(content) == 5
        for entry in content:
            assert entry.logprob <= 0
            assert entry.bytes == list(entry.token.encode())
            top = [alternative.logprob for alternative in entry.top_logprobs]
            assert len(top) == 3 and top == sorted(top, reverse=True)
            # Greedy: the sampled token is the most likely one (up to a forward's float rounding).
            assert entry.token in [alternative.token for alternative in entry.top_logprobs]
            assert entry.logprob == pytest.approx(top[0], abs=1e-4)
    assert chat.usage.completion_tokens == sum(lengths)
    assert chat.usage.total_tokens == chat.usage.prompt_tokens + chat.usage.completion_tokens


def test_text_content_parts_and_developer_role(client: openai.OpenAI) -> None:
    """Text parts are joined with newlines (as vLLM joins them); "developer" is "system"'s newer name."""
    plain: Any = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi\nthere"}]
    parts: Any = [
        {"role": "developer", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "there"}]},
    ]
    answers = [
        client.chat.completions.create(model="policy", messages=m, temperature=0, max_tokens=4)
        for m in (plain, parts)
    ]
    assert answers[0].choices[0].message.content == answers[1].choices[0].message.content
    assert answers[0].usage == answers[1].usage


def test_text_completions_usage_and_logprobs(client: openai.OpenAI, tokenizer: Any) -> None:
    prompts = ["Once upon a time", "The quick brown fox jumps"]
    text = client.completions.create(
        model="policy", prompt=prompts, n=2, max_tokens=4, temperature=0, logprobs=2
    )
    assert text.usage is not None
    assert text.usage.prompt_tokens == sum(len(tokenizer(prompt)["input_ids"]) for prompt in prompts)
    lengths = []
    for choice in text.choices:
        logprobs = choice.logprobs
        assert logprobs is not None
        assert logprobs.tokens and logprobs.token_logprobs and logprobs.top_logprobs and logprobs.text_offset
        lengths.append(len(logprobs.tokens))
        assert len(logprobs.token_logprobs) == len(logprobs.top_logprobs) == len(logprobs.tokens) <= 4
        assert logprobs.text_offset[0] == 0 and logprobs.text_offset == sorted(logprobs.text_offset)
        for token, logprob, top in zip(
            logprobs.tokens, logprobs.token_logprobs, logprobs.top_logprobs, strict=True
        ):
            assert logprob <= 0 and token in top and 1 <= len(top) <= 2
            assert logprob == pytest.approx(max(top.values()), abs=1e-4)
    assert text.usage.completion_tokens == sum(lengths)
    assert text.usage.total_tokens == text.usage.prompt_tokens + text.usage.completion_tokens


def test_fields_that_change_nothing_pass(client: openai.OpenAI) -> None:
    chat = client.chat.completions.create(
        model="policy",
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=3,
        max_completion_tokens=3,
        presence_penalty=0,
        frequency_penalty=0,
        logit_bias={},
        n=1,
        stream=False,
        response_format={"type": "text"},
        user="someone",
        metadata={"run": "test"},
        store=False,
    )
    assert len(chat.choices) == 1 and chat.choices[0].logprobs is None


USER: Any = [{"role": "user", "content": "Hi"}]


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"logit_bias": {"42": 5}}, "logit_bias"),
        ({"extra_body": {"repetition_penalty": 1.2}}, "repetition_penalty"),
        ({"max_tokens": 4, "max_completion_tokens": 5}, "max_completion_tokens"),
        ({"stream": True}, "stream"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
            "messages[0].content[0]",
        ),
    ],
    ids=[
        "tools",
        "json-format",
        "presence-penalty",
        "logit-bias",
        "unknown",
        "both-limits",
        "stream",
        "image",
    ],
)
def test_unsupported_fields_are_400_naming_them(
    client: openai.OpenAI, fields: dict[str, Any], named: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(**{"model": "policy", "messages": USER, "max_tokens": 2, **fields})
    body: Any = caught.value.body
    assert body["code"] == "unsupported" and named in body["message"]
