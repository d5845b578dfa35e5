"""Which tokens are scored: chat templates, raw mode, the ICR off-by-one, and what is refused."""

from __future__ import annotations

import copy

import pytest

from xlreward.service.protocol import ChatMessage
from xlreward.service.scoring.errors import ItemError
from xlreward.service.scoring.loading import load_tokenizer
from xlreward.service.scoring.templating import (
    ItemTokenizer,
    TemplateOptions,
    TokenizedItem,
    end_of_turn_ids,
)
from xlreward.trainer.tiny_models import TinySpec, build_tiny_pair

END_OF_TURN = {"llama3": "<|eot_id|>", "chatml": "<|im_end|>"}


@pytest.fixture(scope="module", params=["llama3", "chatml"])
def template_tokenizer(request, model_cache):
    arch = "llama" if request.param == "llama3" else "qwen2"
    pair = build_tiny_pair(model_cache, TinySpec(arch=arch, template=request.param))
    return request.param, load_tokenizer(pair.policy)


def make(tokenizer, max_length: int = 1024, **options) -> ItemTokenizer:
    return ItemTokenizer(
        tokenizer, TemplateOptions(**options), max_length=max_length, stop_ids=end_of_turn_ids(tokenizer)
    )


def scored_text(tokenizer, item: TokenizedItem) -> str:
    return tokenizer.decode(list(item.input_ids[item.score_start : item.score_end]))


def test_scored_tokens_are_response_and_end_of_turn(template_tokenizer) -> None:
    style, tokenizer = template_tokenizer
    item = make(tokenizer)("Translate: hello", "Hola, ¿qué tal? 你好")
    assert scored_text(tokenizer, item) == "Hola, ¿qué tal? 你好" + END_OF_TURN[style]
    prompt_ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Translate: hello"}], add_generation_prompt=True, return_dict=True
    )["input_ids"]
    assert item.score_start == len(prompt_ids)
    assert list(item.input_ids[: item.score_start]) == list(prompt_ids)


def test_chatml_trailing_newline_is_not_scored(model_cache) -> None:
    """ChatML renders "<|im_end|>\\n" after every turn; the policy stops at <|im_end|> and never generates
    the newline, so it is in the sequence but outside the scored span."""
    pair = build_tiny_pair(model_cache, TinySpec(arch="qwen2", template="chatml"))
    tokenizer = load_tokenizer(pair.policy)
    item = make(tokenizer)("Say hi", "hi")
    assert tokenizer.decode(list(item.input_ids)).endswith("hi<|im_end|>\n")
    assert item.score_end == len(item.input_ids) - 1


def test_one_token_response(template_tokenizer) -> None:
    style, tokenizer = template_tokenizer
    item = make(tokenizer)("What is 2+2?", "4")
    assert item.num_scored == 2  # "4" and the end-of-turn token
    assert scored_text(tokenizer, item) == "4" + END_OF_TURN[style]


def test_messages_prompt_and_system_prompt(template_tokenizer) -> None:
    _, tokenizer = template_tokenizer
    messages = [ChatMessage(role="system", content="Be brief."), ChatMessage(role="user", content="Hi")]
    as_messages = make(tokenizer)(messages, "Hello")
    as_system_option = make(tokenizer, system_prompt="Be brief.")("Hi", "Hello")
    assert as_messages == as_system_option
    assert as_messages != make(tokenizer)("Hi", "Hello")


def test_multi_turn_prompt_scores_only_the_last_response(template_tokenizer) -> None:
    style, tokenizer = template_tokenizer
    messages = [
        ChatMessage(role="user", content="Count to two"),
        ChatMessage(role="assistant", content="1 2"),
        ChatMessage(role="user", content="Now three"),
    ]
    item = make(tokenizer)(messages, "1 2 3")
    assert scored_text(tokenizer, item) == "1 2 3" + END_OF_TURN[style]


def test_icr_compat_drops_the_first_response_token(template_tokenizer) -> None:
    _, tokenizer = template_tokenizer
    exact = make(tokenizer)("Q", "A longer answer")
    compat = make(tokenizer, icr_compat=True)("Q", "A longer answer")
    assert compat.input_ids == exact.input_ids
    assert (compat.score_start, compat.score_end) == (exact.score_start + 1, exact.score_end)


def test_raw_mode_appends_eos_after_plain_text(llama_pair) -> None:
    tokenizer = load_tokenizer(llama_pair.policy)
    item = make(tokenizer, use_chat_template=False)("Question: 2+2? Answer:", " 4")
    assert item.input_ids[0] == tokenizer.bos_token_id  # like Llama 3, plain tokenization starts with BOS
    assert item.input_ids[-1] == tokenizer.eos_token_id
    assert scored_text(tokenizer, item) == " 4" + tokenizer.eos_token
    prompt_ids = tokenizer("Question: 2+2? Answer:")["input_ids"]
    assert list(item.input_ids[: item.score_start]) == prompt_ids


def test_raw_mode_refuses_chat_messages(llama_pair) -> None:
    tokenizer = load_tokenizer(llama_pair.policy)
    with pytest.raises(ItemError, match="plain-text prompts") as info:
        make(tokenizer, use_chat_template=False)([ChatMessage(role="user", content="hi")], "x")
    assert info.value.reason == "bad_prompt"


def test_messages_must_end_with_a_user_turn(template_tokenizer) -> None:
    _, tokenizer = template_tokenizer
    messages = [ChatMessage(role="user", content="hi"), ChatMessage(role="assistant", content="hello")]
    with pytest.raises(ItemError, match="end with a user turn"):
        make(tokenizer)(messages, "x")


def test_item_longer_than_context_is_refused(template_tokenizer) -> None:
    _, tokenizer = template_tokenizer
    with pytest.raises(ItemError, match=r"tokens long but the models' context is 32 tokens") as info:
        make(tokenizer, max_length=32)("Q", "word " * 40)
    assert info.value.reason == "too_long"


def test_template_that_is_not_prefix_stable_is_refused(llama_pair) -> None:
    """A template that renders the prompt differently once the assistant turn is present makes the
    response's log-prob undefined: refuse instead of scoring the wrong tokens."""
    tokenizer = copy.deepcopy(load_tokenizer(llama_pair.policy))
    tokenizer.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant (thinking): {% endif %}"
    )
    with pytest.raises(ItemError, match="not a token prefix") as info:
        make(tokenizer)("Q", "A")
    assert info.value.reason == "not_prefix_stable"


def test_tokenizer_without_chat_template_needs_raw_mode(llama_pair) -> None:
    tokenizer = copy.deepcopy(load_tokenizer(llama_pair.policy))
    tokenizer.chat_template = None
    with pytest.raises(ValueError, match="raw mode"):
        make(tokenizer)


def test_truncation_only_when_asked_cuts_the_response(template_tokenizer) -> None:
    _, tokenizer = template_tokenizer
    tokenize = make(tokenizer, max_length=32)
    cut = tokenize("Q", "word " * 40, truncate=True)
    assert cut.truncated and len(cut.input_ids) == 32 and cut.score_end == 32
    assert cut.input_ids == tokenize("Q", "word " * 40 + "more", truncate=True).input_ids
    assert not tokenize("Q", "short", truncate=True).truncated
    with pytest.raises(ItemError, match="the prompt alone is"):
        tokenize("long prompt " * 20, "x", truncate=True)


class CountingTokenizer:
    """A real tokenizer that counts the characters it is asked to tokenize."""

    def __init__(self, tokenizer) -> None:  # type: ignore[no-untyped-def]
        self.inner, self.chars = tokenizer, 0

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self.inner, name)

    def apply_chat_template(self, conversation, **kwargs):  # type: ignore[no-untyped-def]
        self.chars += sum(len(m["content"]) for m in conversation)
        return self.inner.apply_chat_template(conversation, **kwargs)


def test_text_that_cannot_fit_is_refused_before_it_is_tokenized(template_tokenizer) -> None:
    """No token spells more than the vocabulary's longest entry, so a text longer than context x that
    cannot fit: refused without tokenizing a megabyte; cut to a bounded head when truncating."""
    _, tokenizer = template_tokenizer
    counting = CountingTokenizer(tokenizer)
    tokenize = make(counting, max_length=32)
    huge = "word " * 200_000
    with pytest.raises(ItemError, match="characters, more than the models' context of 32 tokens") as info:
        tokenize("Q", huge)
    assert info.value.reason == "too_long" and counting.chars == 0
    with pytest.raises(ItemError, match="the prompt is"):
        tokenize(huge, "x", truncate=True)
    cut = tokenize("Q", huge, truncate=True)
    assert counting.chars <= 2 * 2 * tokenize.max_chars  # prompt and prompt + response, each cut
    assert cut.input_ids == tokenize("Q", "word " * 40, truncate=True).input_ids
