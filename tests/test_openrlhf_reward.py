"""OpenRLHF's remote reward protocol, called the way OpenRLHF calls it (its ``remote_rm_fn``: POST
{"query", "prompts", "labels"}, read "rewards"), with queries decoded as OpenRLHF decodes them: the
chat-templated prompt, the response with its end-of-turn text, then padding."""

from __future__ import annotations

import httpx
import pytest

from serving import running_models_server
from xlreward.service.scoring.loading import load_tokenizer

SAMPLES = [
    ("Name three colours.", "Rojo, verde y azul."),
    ("Say hello.", "Hallo!"),
    ("Count to three.", "One, two, three."),
]


@pytest.fixture(scope="module")
def server(llama_pair, model_cache, tmp_path_factory):  # type: ignore[no-untyped-def]
    from xlreward.trainer.tiny_models import TinySpec, build_tiny_classifier

    classifier = build_tiny_classifier(model_cache, TinySpec(arch="llama", template="llama3"))
    folder = tmp_path_factory.mktemp("openrlhf")
    (folder / "models.toml").write_text(
        f'[[models]]\nname = "icr"\npolicy = "{llama_pair.policy}"\nreference = "{llama_pair.reference}"\n\n'
        f'[[models]]\nname = "rm"\nkind = "classifier"\npath = "{classifier}"\n'
    )
    with running_models_server(folder / "models.toml", folder, batch_wait_ms=20) as url:
        yield url


def openrlhf_batch(tokenizer) -> tuple[list[str], list[str]]:  # type: ignore[no-untyped-def]
    """(queries, prompts) as OpenRLHF builds them with --apply_chat_template: the prompt rendered for
    generation, the sequence decoded with its special tokens and the batch's right padding."""
    queries, prompts = [], []
    for instruction, response in SAMPLES:
        user = [{"role": "user", "content": instruction}]
        prompt = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
        whole = tokenizer.apply_chat_template(
            [*user, {"role": "assistant", "content": response}], tokenize=False
        )
        assert whole.startswith(prompt)
        queries.append(whole + tokenizer.pad_token * 3)
        prompts.append(prompt)
    return queries, prompts


@pytest.mark.parametrize("model", ["rm", "icr"])
def test_openrlhf_rewards_equal_reward_for_the_same_pairs(server, llama_pair, model: str) -> None:  # type: ignore[no-untyped-def]
    tokenizer = load_tokenizer(llama_pair.policy)
    assert tokenizer.pad_token is not None
    queries, prompts = openrlhf_batch(tokenizer)
    payload = {"query": queries, "prompts": prompts, "labels": [""] * len(queries)}
    answer = httpx.post(f"{server}/openrlhf/reward", params={"model": model}, json=payload, timeout=60)
    assert answer.status_code == 200, answer.text
    rewards = answer.json()["rewards"]
    items = [{"prompt": instruction, "response": response} for instruction, response in SAMPLES]
    direct = httpx.post(f"{server}/reward", json={"model": model, "items": items}, timeout=60).json()
    assert rewards == pytest.approx([r["reward"] for r in direct["results"]], abs=1e-4)
    assert answer.json()["scores"] == rewards


def test_a_query_that_does_not_continue_its_prompt_is_a_422(server) -> None:  # type: ignore[no-untyped-def]
    payload = {"query": ["Hello there"], "prompts": ["Goodbye"], "labels": [None]}
    answer = httpx.post(f"{server}/openrlhf/reward", json=payload, timeout=60)
    assert answer.status_code == 422 and "query[0]" in answer.json()["error"]["message"]
    mismatched = httpx.post(
        f"{server}/openrlhf/reward", json={"query": ["a", "b"], "prompts": ["a"]}, timeout=60
    )
    assert mismatched.status_code == 422
