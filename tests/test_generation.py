"""Generation backends: the in-process transformers sampler on tiny random models, and the OpenAI-compatible
upstream against a mock server."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from typing import Any

import httpx
import pytest
import torch

from xlreward.service.generation import GenerationBackend, GenerationError, OpenAIUpstream, prompt_seed
from xlreward.service.generation.local import TransformersGenerator
from xlreward.service.protocol import ChatMessage, GenerateRequest, GenerateResponse
from xlreward.service.scoring.core import context_length
from xlreward.service.scoring.loading import load_causal_lm, load_tokenizer
from xlreward.service.scoring.templating import end_of_turn_ids

PROMPTS: list[Any] = [
    "Write a short poem about the sea.",
    [
        ChatMessage(role="system", content="Answer in Spanish."),
        ChatMessage(role="user", content="¿Cuánto es 12 + 30?"),
    ],
    "Bitte beantworte die folgende Anweisung nur auf Deutsch.",
]


def run(backend: GenerationBackend, **fields: Any) -> GenerateResponse:
    return asyncio.run(backend.generate(GenerateRequest(**fields)))


def texts(response: GenerateResponse) -> list[list[str]]:
    return [[c.text for c in result.completions] for result in response.results]


def make_generator(pair_dir: Any) -> TransformersGenerator:
    model = load_causal_lm(pair_dir, torch.device("cpu"), torch.float32)
    tokenizer = load_tokenizer(pair_dir)
    return TransformersGenerator(
        model,
        tokenizer,
        model_name="tiny-policy",
        lock=threading.Lock(),
        max_length=context_length(model),
        stop_token_ids=end_of_turn_ids(tokenizer, model.generation_config.eos_token_id),
    )


def variant(generator: TransformersGenerator, **overrides: Any) -> TransformersGenerator:
    """Another generator over the same model and tokenizer, with some settings changed."""
    options: dict[str, Any] = {
        "model_name": generator.model_name,
        "lock": generator.lock,
        "max_length": generator.max_length,
        "stop_token_ids": generator.stop_token_ids,
        **overrides,
    }
    return TransformersGenerator(generator.model, generator.tokenizer, **options)


@pytest.fixture(scope="module")
def generator(tiny_pair: Any) -> TransformersGenerator:
    return make_generator(tiny_pair.policy)


# --- the transformers backend --------------------------------------------------------------------------


def test_n_samples_per_prompt_in_order(generator: TransformersGenerator) -> None:
    response = run(generator, prompts=PROMPTS, n=3, max_tokens=6, seed=1)
    assert response.model == "tiny-policy"
    assert [result.index for result in response.results] == [0, 1, 2]
    for result in response.results:
        assert len(result.completions) == 3
        for completion in result.completions:
            assert 1 <= completion.num_tokens <= 6
            assert completion.finish_reason in ("stop", "length")
            if completion.finish_reason == "length":
                assert completion.num_tokens == 6
    assert len({text for row in texts(response) for text in row}) > 1  # sampled, not copies


def test_same_seed_same_samples_and_other_seed_differs(generator: TransformersGenerator) -> None:
    request = {"prompts": PROMPTS[:2], "n": 4, "temperature": 1.0, "max_tokens": 12}
    first = texts(run(generator, **request, seed=1234))
    assert texts(run(generator, **request, seed=1234)) == first
    assert texts(run(generator, **request, seed=4321)) != first
    assert texts(run(generator, **request)) != first  # unseeded: random


def test_samples_of_a_prompt_depend_only_on_seed_index_prompt(generator: TransformersGenerator) -> None:
    request = {"n": 2, "max_tokens": 10, "seed": 7}
    a = texts(run(generator, prompts=[PROMPTS[0], PROMPTS[1]], **request))
    b = texts(run(generator, prompts=[PROMPTS[0], PROMPTS[2]], **request))
    assert a[0] == b[0]
    # The same prompt at another index is sampled with another seed.
    c = texts(run(generator, prompts=[PROMPTS[0], PROMPTS[0]], **request))
    assert c[0] == a[0] and c[1] != c[0]


def test_a_seed_per_prompt_samples_each_as_it_would_alone(generator: TransformersGenerator) -> None:
    """``seeds``: how prompts are grouped into requests changes nothing (the annotation runs group units)."""
    request = {"n": 3, "max_tokens": 10}
    together = texts(run(generator, prompts=PROMPTS, seeds=[5, 6, 7], **request))
    alone = [
        texts(run(generator, prompts=[prompt], seed=seed, **request))[0]
        for prompt, seed in zip(PROMPTS, [5, 6, 7], strict=True)
    ]
    assert together == alone
    assert len({tuple(row) for row in together}) == 3


def test_greedy_is_deterministic(generator: TransformersGenerator) -> None:
    first = run(generator, prompts=PROMPTS, n=2, temperature=0, max_tokens=10, seed=1)
    again = run(generator, prompts=PROMPTS, n=2, temperature=0, max_tokens=10, seed=99)
    assert first.results == again.results
    for result in first.results:
        assert result.completions[0] == result.completions[1]


def test_max_tokens_ends_with_length(generator: TransformersGenerator) -> None:
    response = run(generator, prompts=PROMPTS, n=4, max_tokens=3, seed=5)
    completions = [c for result in response.results for c in result.completions]
    assert all(c.num_tokens <= 3 for c in completions)
    assert all(c.num_tokens == 3 for c in completions if c.finish_reason == "length")
    assert any(c.finish_reason == "length" for c in completions)


def test_max_tokens_beyond_the_context_refused_and_the_default_cut(generator: TransformersGenerator) -> None:
    """A max_tokens the request sets must fit after the prompt (a 400, as vLLM answers; it used to be cut
    silently); the default is cut to the room the prompt leaves."""
    length = len(generator.render(PROMPTS[0]))
    small = variant(generator, max_length=length + 2)
    with pytest.raises(GenerationError) as caught:
        run(small, prompts=[PROMPTS[0]], temperature=0, max_tokens=50)
    assert (caught.value.code, caught.value.status, caught.value.location) == ("too_long", 400, "max_tokens")
    assert "at most 2" in caught.value.message
    completion = run(small, prompts=[PROMPTS[0]], temperature=0).results[0].completions[0]
    assert completion.num_tokens <= 2
    with pytest.raises(GenerationError) as caught:
        run(variant(generator, max_length=length), prompts=["hi", PROMPTS[0]], max_tokens=5)
    assert (caught.value.code, caught.value.status, caught.value.location) == ("too_long", 413, "prompts[1]")
    assert "shorten the prompt" in caught.value.message


def test_too_long_prompt(generator: TransformersGenerator) -> None:
    with pytest.raises(GenerationError) as caught:
        run(generator, prompts=["The quick brown fox. " * 400], max_tokens=5)
    assert caught.value.code == "too_long" and caught.value.status == 413


def clean_pair(text: str) -> str | None:
    """A 2-character stop string from ``text``: printable and free of U+FFFD (partial UTF-8 from a random
    model), whose first occurrence is not at the start."""
    for at in range(1, len(text) - 1):
        pair = text[at : at + 2]
        if pair.isprintable() and "\ufffd" not in pair and pair.strip() == pair and text.find(pair) == at:
            return pair
    return None


def test_stop_string_cuts_before_it(generator: TransformersGenerator) -> None:
    for prompt in [*PROMPTS, "Hello", "Count to ten", "Where is the library?"]:
        full = run(generator, prompts=[prompt], temperature=0, max_tokens=24).results[0].completions[0]
        stop = clean_pair(full.text[:-2])  # not at the very end, where a cut token could change it
        if stop is not None:
            break
    else:
        pytest.fail("no greedy completion had a usable 2-character substring")
    stopped = run(generator, prompts=[prompt], temperature=0, max_tokens=24, stop=["\x00never", stop])
    completion = stopped.results[0].completions[0]
    assert completion.text == full.text[: full.text.index(stop)]
    assert completion.finish_reason == "stop"
    assert 1 <= completion.num_tokens <= full.num_tokens
    # Sampled, n > 1: no completion contains a stop string.
    sampled = run(generator, prompts=[prompt], n=4, max_tokens=24, stop=[stop], seed=3).results[0]
    assert all(stop not in c.text for c in sampled.completions)
    # A stop string that never occurs changes nothing.
    unchanged = run(generator, prompts=[prompt], temperature=0, max_tokens=24, stop=["\x00never"])
    assert unchanged.results[0].completions[0] == full


def test_end_of_turn_token_ends_with_stop(generator: TransformersGenerator) -> None:
    """Random models rarely emit EOS: declare a token they do generate an end-of-turn token."""
    prompt_ids = generator.render(PROMPTS[0])
    ids = torch.tensor([prompt_ids])
    output = generator.model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        do_sample=False,
        max_new_tokens=12,
        eos_token_id=sorted(generator.stop_token_ids),
        pad_token_id=generator.pad_token_id,
    )
    new = output[0, len(prompt_ids) :].tolist()
    token = new[3]
    at = new.index(token)
    stopping = variant(generator, stop_token_ids=generator.stop_token_ids | {token})
    completion = run(stopping, prompts=[PROMPTS[0]], temperature=0, max_tokens=12).results[0].completions[0]
    assert completion.finish_reason == "stop"
    assert completion.num_tokens == at + 1  # the end-of-turn token counts
    assert completion.text == generator.tokenizer.decode(new[:at], skip_special_tokens=True)


def test_logprobs_are_the_raw_models_with_its_top_tokens(generator: TransformersGenerator) -> None:
    """Log-probs, one per counted token, equal a plain forward's log-softmax of the unscaled logits."""
    prompt_ids = generator.render(PROMPTS[1])
    greedy = run(generator, prompts=[PROMPTS[1]], temperature=0, max_tokens=6, logprobs=3).results[0]
    sampled = run(generator, prompts=[PROMPTS[1]], n=2, temperature=0.3, max_tokens=6, seed=2, logprobs=3)
    assert greedy.prompt_tokens == len(prompt_ids) == sampled.results[0].prompt_tokens
    ids = torch.tensor([prompt_ids])
    new = generator.model.generate(
        input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=6
    )[0, len(prompt_ids) :]
    with torch.inference_mode():
        logits = generator.model(torch.cat([ids[0], new])[None]).logits[0, len(prompt_ids) - 1 : -1]
    expected = torch.log_softmax(logits.float(), dim=-1)  # (6, V): the raw distribution, temperature 1
    completion = greedy.completions[0]
    assert completion.logprobs is not None and len(completion.logprobs) == completion.num_tokens
    for at, entry in enumerate(completion.logprobs):
        assert entry.logprob == pytest.approx(expected[at, new[at]].item(), abs=1e-4)
        values, top_ids = expected[at].topk(3)
        assert [top.logprob for top in entry.top_logprobs] == pytest.approx(values.tolist(), abs=1e-4)
        assert [top.token for top in entry.top_logprobs] == [generator.tokenizer.decode([i]) for i in top_ids]
    for completion in sampled.results[0].completions:  # sampled at temperature 0.3, reported at 1
        assert completion.logprobs is not None and len(completion.logprobs) == completion.num_tokens
        first = [top.logprob for top in completion.logprobs[0].top_logprobs]
        assert first == pytest.approx(expected[0].topk(3).values.tolist(), abs=1e-4)


def test_raw_prompts(generator: TransformersGenerator) -> None:
    response = run(generator, prompts=["The quick brown fox"], raw=True, n=2, max_tokens=4, seed=0)
    assert len(response.results[0].completions) == 2
    with pytest.raises(GenerationError) as caught:
        run(generator, prompts=[PROMPTS[1]], raw=True)
    assert caught.value.code == "bad_prompt" and caught.value.status == 422


def test_messages_must_end_with_a_user_turn(generator: TransformersGenerator) -> None:
    prompt = [ChatMessage(role="user", content="Hi"), ChatMessage(role="assistant", content="Hello!")]
    with pytest.raises(GenerationError) as caught:
        run(generator, prompts=["fine", prompt])
    assert caught.value.code == "bad_prompt" and caught.value.status == 422
    assert caught.value.location == "prompts[1]" and "user turn" in caught.value.message


def test_generation_waits_for_the_shared_lock(generator: TransformersGenerator) -> None:
    async def scenario() -> None:
        with generator.lock:  # the scoring engine holds the model
            task = asyncio.create_task(generator.generate(GenerateRequest(prompts=["hi"], max_tokens=2)))
            await asyncio.sleep(0.3)
            assert not task.done()
        assert len((await asyncio.wait_for(task, 30)).results) == 1

    asyncio.run(scenario())


def test_package_import_is_torch_free() -> None:
    probe = "import sys, xlreward.service.generation\nprint('torch' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "False"


# --- the OpenAI-compatible upstream --------------------------------------------------------------------


class FakeOpenAI:
    """An OpenAI-compatible server in a MockTransport: records requests, answers with choices out of order."""

    def __init__(self, status: int = 200, reply: Any = None) -> None:
        self.requests: list[httpx.Request] = []
        self.status = status
        self.reply = reply

    @property
    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(request.content) for request in self.requests]

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.reply is not None:
            return httpx.Response(self.status, json=self.reply)
        body = json.loads(request.content)
        chat = request.url.path.endswith("/chat/completions")
        choices = []
        for index in reversed(range(body["n"])):
            text = f"answer {index} to {len(self.requests)}"
            reason = ["eos", "length", "stop"][index % 3]
            content = {"message": {"role": "assistant", "content": text}} if chat else {"text": text}
            choices.append({"index": index, "finish_reason": reason, **content})
        usage = {"prompt_tokens": 5, "completion_tokens": 17, "total_tokens": 22}
        return httpx.Response(self.status, json={"id": "x", "choices": choices, "usage": usage})


def upstream(server: Any, **options: Any) -> OpenAIUpstream:
    return OpenAIUpstream(
        "http://upstream.test:8000/v1/", model="policy-7b", transport=httpx.MockTransport(server), **options
    )


def test_upstream_chat_requests_and_mapping() -> None:
    server = FakeOpenAI()
    backend = upstream(server, api_key="sk-test")
    prompts: list[Any] = ["Hi", PROMPTS[1]]
    response = run(
        backend, prompts=prompts, n=3, temperature=0.7, top_p=0.9, max_tokens=32, stop=["\n\n"], seed=7
    )
    asyncio.run(backend.aclose())
    assert [str(r.url) for r in server.requests] == ["http://upstream.test:8000/v1/chat/completions"] * 2
    assert all(r.headers["authorization"] == "Bearer sk-test" for r in server.requests)
    bodies = sorted(server.bodies, key=lambda body: len(body["messages"]))
    assert bodies[0] == {
        "model": "policy-7b",
        "messages": [{"role": "user", "content": "Hi"}],
        "n": 3,
        "temperature": 0.7,
        "top_p": 0.9,
        "max_tokens": 32,
        "stop": ["\n\n"],
        "seed": prompt_seed(7, 0),
    }
    assert bodies[1]["messages"] == [m.model_dump() for m in PROMPTS[1]]
    assert bodies[1]["seed"] == prompt_seed(7, 1) != prompt_seed(7, 0)
    assert response.model == "policy-7b"
    assert [result.index for result in response.results] == [0, 1]
    for result in response.results:
        completions = result.completions
        assert [c.text.split(" to ")[0] for c in completions] == ["answer 0", "answer 1", "answer 2"]
        assert [c.finish_reason for c in completions] == ["stop", "length", "stop"]  # "eos" -> "stop"
        assert [c.num_tokens for c in completions] == [0, 0, 0]  # n > 1 and no tokenizer: unknown


def test_upstream_optional_fields_and_raw_prompts() -> None:
    server = FakeOpenAI()
    backend = upstream(server)
    response = run(backend, prompts=["Once upon a time"], raw=True, top_k=20, max_tokens=8)
    (request,) = server.requests
    assert request.url.path == "/v1/completions" and "authorization" not in request.headers
    body = server.bodies[0]
    assert body["prompt"] == "Once upon a time" and body["top_k"] == 20 and body["n"] == 1
    assert "seed" not in body and "stop" not in body and "messages" not in body
    (completion,) = response.results[0].completions
    assert completion.text == "answer 0 to 1" and completion.num_tokens == 17  # n == 1: from usage
    assert response.results[0].prompt_tokens == 5  # the upstream's count
    run(backend, prompts=["x"], top_k=0)
    assert "top_k" not in server.bodies[-1]
    run(backend, prompts=["x", "y"], seeds=[3, 4])  # each prompt is sent the seed it gets sent alone
    run(backend, prompts=["y"], seed=4)
    assert [body["seed"] for body in server.bodies[-3:]] == [
        prompt_seed(3, 0),
        prompt_seed(4, 0),
        prompt_seed(4, 0),
    ]
    with pytest.raises(GenerationError) as caught:
        run(backend, prompts=[[ChatMessage(role="assistant", content="hm")]])
    assert caught.value.code == "bad_prompt"


def test_upstream_counts_tokens_with_a_tokenizer(llama_pair: Any) -> None:
    tokenizer = load_tokenizer(llama_pair.policy)
    response = run(upstream(FakeOpenAI(), tokenizer=tokenizer), prompts=["Hi"], n=2)
    for completion in response.results[0].completions:
        expected = len(tokenizer(completion.text, add_special_tokens=False)["input_ids"])
        assert completion.num_tokens == expected + (completion.finish_reason == "stop")


@pytest.mark.parametrize(
    ("server", "words"),
    [
        (FakeOpenAI(500, {"error": {"message": "CUDA out of memory"}}), ["500", "CUDA out of memory"]),
        (FakeOpenAI(200, {"object": "error"}), ["not an OpenAI completion"]),
        (FakeOpenAI(200, {"choices": [{"index": 0, "text": "one"}]}), ["1 choices for n=2"]),
    ],
    ids=["status-500", "malformed", "too-few-choices"],
)
def test_upstream_failures_are_502(server: FakeOpenAI, words: list[str]) -> None:
    with pytest.raises(GenerationError) as caught:
        run(upstream(server), prompts=["Hi"], n=2, raw=True)
    error = caught.value
    assert (error.code, error.status) == ("upstream_error", 502)
    for word in ["http://upstream.test:8000/v1/completions", *words]:
        assert word in error.message


def test_upstream_unreachable_is_502() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with pytest.raises(GenerationError) as caught:
        run(upstream(refuse), prompts=["Hi", "there"])
    assert (caught.value.code, caught.value.status) == ("upstream_error", 502)
    assert "http://upstream.test:8000/v1/chat/completions" in caught.value.message
    assert "ConnectError" in caught.value.message
