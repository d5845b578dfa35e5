"""POST /best-of-n over a real socket: n samples per prompt from the generation backend, each scored by a
served reward model (a classifier RM or the implicit pair) through the scheduler, best first; the scores
are /reward's for the same (reward prompt, completion), and the samples are /generate's for the same seed."""

from __future__ import annotations

import httpx
import pytest

from serving import running_models_server

SAMPLING = {"n": 4, "temperature": 1.0, "max_tokens": 8, "seed": 7}
PROMPTS = [
    {"id": "de", "prompt": "Nenne drei Farben.", "reward_prompt": "Name three colours."},
    {"id": "en", "prompt": "Name three colours."},
]


@pytest.fixture(scope="module")
def server(llama_pair, model_cache, tmp_path_factory):  # type: ignore[no-untyped-def]
    from xlreward.trainer.tiny_models import TinySpec, build_tiny_classifier

    classifier = build_tiny_classifier(model_cache, TinySpec(arch="llama", template="llama3"))
    folder = tmp_path_factory.mktemp("best-of-n")
    (folder / "models.toml").write_text(
        f'[[models]]\nname = "icr"\npolicy = "{llama_pair.policy}"\nreference = "{llama_pair.reference}"\n\n'
        f'[[models]]\nname = "rm"\nkind = "classifier"\npath = "{classifier}"\n'
    )
    with running_models_server(
        folder / "models.toml", folder, batch_wait_ms=20, max_items_per_request=16
    ) as url:
        yield url


def post(url: str, path: str, body: dict) -> httpx.Response:  # type: ignore[type-arg]
    return httpx.post(f"{url}{path}", json=body, timeout=120)


@pytest.mark.parametrize("model", ["rm", "icr"])
def test_samples_come_back_scored_as_reward_scores_them_best_first(server, model: str) -> None:  # type: ignore[no-untyped-def]
    answer = post(server, "/best-of-n", {"prompts": PROMPTS, "model": model, **SAMPLING})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["model"] == model and body["sampler"] == "policy"
    generated = post(server, "/generate", {"prompts": [p["prompt"] for p in PROMPTS], **SAMPLING}).json()
    for entry, result, samples in zip(PROMPTS, body["results"], generated["results"], strict=True):
        assert result["id"] == entry["id"]
        candidates = result["candidates"]
        assert result["best"] == candidates[0]
        assert [c["score"] for c in candidates] == sorted((c["score"] for c in candidates), reverse=True)
        assert sorted(c["index"] for c in candidates) == list(range(SAMPLING["n"]))
        for candidate in candidates:  # the sample /generate gives for the same seed
            assert candidate["text"] == samples["completions"][candidate["index"]]["text"]
        scored_against = entry.get("reward_prompt", entry["prompt"])
        items = [{"prompt": scored_against, "response": c["text"]} for c in candidates]
        alone = post(server, "/reward", {"model": model, "items": items}).json()["results"]
        assert [c["score"] for c in candidates] == pytest.approx([r["reward"] for r in alone], abs=1e-4)


def test_a_named_sampler_and_what_is_refused(server) -> None:  # type: ignore[no-untyped-def]
    named = post(server, "/best-of-n", {"prompts": PROMPTS[:1], "model": "rm", "sampler": "icr", **SAMPLING})
    assert named.status_code == 200 and named.json()["sampler"] == "icr"
    unknown = post(server, "/best-of-n", {"prompts": PROMPTS, "model": "nope", **SAMPLING})
    assert unknown.status_code == 404 and "icr, rm" in unknown.json()["error"]["message"]
    classifier = post(server, "/best-of-n", {"prompts": PROMPTS, "sampler": "rm", **SAMPLING})
    assert classifier.status_code == 400 and "classifier" in classifier.json()["error"]["message"]
    too_many = post(server, "/best-of-n", {"prompts": PROMPTS * 3, **SAMPLING})
    assert too_many.status_code == 413 and "split it" in too_many.json()["error"]["message"]
    empty = post(server, "/best-of-n", {"prompts": [], **SAMPLING})
    assert empty.status_code == 422


def test_samples_can_come_from_the_reference(server, llama_pair) -> None:  # type: ignore[no-untyped-def]
    """sampler_role "reference" samples the pair's reference (the SFT model RYR reranks samples of): the
    texts a generator over the reference gives for the same seed, not the policy's."""
    import asyncio
    import threading

    from xlreward.service.generation import TransformersGenerator
    from xlreward.service.protocol import GenerateRequest
    from xlreward.service.scoring.loading import load_engine

    body = {"prompts": PROMPTS, "model": "rm", "sampler": "icr", "sampler_role": "reference", **SAMPLING}
    answer = post(server, "/best-of-n", body)
    assert answer.status_code == 200, answer.text
    assert answer.json()["sampler"] == "icr:reference"
    engine = load_engine(llama_pair.policy, llama_pair.reference, device="cpu", dtype="float32")
    expected: dict[str, list[str]] = {}
    for role in ("reference", "policy"):
        model, context = engine.language_model(role)
        generator = TransformersGenerator(
            model,
            engine.tokenizer,
            model_name=role,
            lock=threading.Lock(),
            context=context,
            max_length=engine.max_length,
            stop_token_ids=engine.item_tokenizer.stop_ids,
        )
        request = GenerateRequest(prompts=[p["prompt"] for p in PROMPTS], **SAMPLING)
        results = asyncio.run(generator.generate(request)).results
        expected[role] = [c.text for result in results for c in result.completions]
    served = [
        {c["index"]: c["text"] for c in result["candidates"]}[i]
        for result in answer.json()["results"]
        for i in range(SAMPLING["n"])
    ]
    assert served == expected["reference"] and served != expected["policy"]
