"""Teams sharing one server with their own DPO adapters over the same base: one server holds an implicit
pair, two LoRA adapters over one base and a classifier; each request's results equal its model scored
alone, the adapters hold one copy of the base between them, and switching one adapter leaks nothing."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import torch

from serving import running_models_server
from xlreward.service.protocol import RewardItem
from xlreward.service.scoring.core import weight_storages
from xlreward.service.scoring.loading import load_causal_lm, load_classifier, load_engine

ADMIN = {"Authorization": "Bearer admin-key"}
PROMPT = "Name three colours."
RESPONSES = ["Red, green and blue.", "Rojo, verde y azul.", "Rot, grün und blau!", "Red."]
MODELS = ("pair", "team-a", "team-b", "rm")


@pytest.fixture(scope="module")
def adapters(llama_pair, tmp_path_factory) -> dict[str, Path]:
    """Two adapters over the pair's reference with different random (non-zero) weights; q/v at rank 8,
    as DPO adapters usually are."""
    from peft import LoraConfig, get_peft_model

    out = tmp_path_factory.mktemp("adapters")
    for seed, name in ((1, "team-a"), (2, "team-b")):
        torch.manual_seed(seed)
        base = load_causal_lm(llama_pair.reference, torch.device("cpu"), torch.float32)
        config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        get_peft_model(base, config).save_pretrained(out / name)
    return {name: out / name for name in ("team-a", "team-b")}


@pytest.fixture(scope="module")
def classifier_dir(model_cache) -> Path:  # type: ignore[no-untyped-def]
    from xlreward.trainer.tiny_models import TinySpec, build_tiny_classifier

    return build_tiny_classifier(model_cache, TinySpec(arch="llama", template="llama3"))


@pytest.fixture(scope="module")
def sources(llama_pair, adapters, classifier_dir) -> dict[str, dict[str, str]]:
    reference = str(llama_pair.reference)
    return {
        "pair": {"kind": "implicit", "policy": str(llama_pair.policy), "reference": reference},
        "team-a": {"kind": "implicit", "policy": str(adapters["team-a"]), "reference": reference},
        "team-b": {"kind": "implicit", "policy": str(adapters["team-b"]), "reference": reference},
        "rm": {"kind": "classifier", "path": str(classifier_dir)},
    }


@pytest.fixture(scope="module")
def server(sources, tmp_path_factory):  # type: ignore[no-untyped-def]
    folder = tmp_path_factory.mktemp("shared")
    entries = [
        f'[[models]]\nname = "{name}"\n' + "".join(f'{key} = "{value}"\n' for key, value in fields.items())
        for name, fields in sources.items()
    ]
    (folder / "models.toml").write_text("\n".join(entries))
    with running_models_server(
        folder / "models.toml", folder, batch_wait_ms=20, admin_key="admin-key"
    ) as url:
        yield url


@pytest.fixture(scope="module")
def alone(sources) -> dict[str, list[float]]:
    """Each model's rewards for ITEMS, loaded by itself (no shared base) and scored in this process."""
    rewards = {}
    for name, fields in sources.items():
        if fields["kind"] == "classifier":
            model = load_classifier(fields["path"], device="cpu", dtype="float32")
        else:
            model = load_engine(fields["policy"], fields["reference"], device="cpu", dtype="float32")
        rewards[name] = [result.reward for result in model.score(ITEMS)]
    return rewards


ITEMS = [RewardItem(id=i, prompt=f"Question {i}?", response=RESPONSES[i % 4] * (1 + i % 3)) for i in range(6)]
ITEMS += [RewardItem(id=f"g{i}", prompt=PROMPT, response=response) for i, response in enumerate(RESPONSES)]


def ask(url: str, model: str, items: list[RewardItem]) -> list[float]:
    body = {"model": model, "items": [item.model_dump(exclude_none=True) for item in items]}
    response = httpx.post(f"{url}/reward", json=body, timeout=120)
    assert response.status_code == 200, response.text
    assert response.json()["model"] == model
    return [result["reward"] for result in response.json()["results"]]


def test_each_model_on_the_shared_server_equals_it_scored_alone(server, alone) -> None:  # type: ignore[no-untyped-def]
    """24 concurrent clients, the four models interleaved: batches of team-a and team-b alternate on the
    one base, so a missed adapter switch would give one team the other's rewards."""
    jobs = [(MODELS[i % 4], ITEMS[i % len(ITEMS) :] or ITEMS) for i in range(24)]
    with ThreadPoolExecutor(24) as pool:
        answers = list(pool.map(lambda job: ask(server, *job), jobs))
    for (model, items), rewards in zip(jobs, answers, strict=True):
        expected = alone[model][len(ITEMS) - len(items) :]
        assert rewards == pytest.approx(expected, abs=1e-4), model
    # The adapters differ from each other and from the full pair: equal rewards would hide a wrong switch.
    assert min(abs(a - b) for a, b in zip(alone["team-a"], alone["team-b"], strict=True)) > 1e-3


def test_two_adapters_add_under_ten_percent_to_one_base(server, llama_pair) -> None:  # type: ignore[no-untyped-def]
    listed = httpx.get(f"{server}/admin/models", headers=ADMIN).json()
    per_model = {model["name"]: model["weight_bytes"] for model in listed["models"]}
    base = sum(
        weight_storages([load_causal_lm(llama_pair.reference, torch.device("cpu"), torch.float32)]).values()
    )
    adapters_and_base = listed["weight_bytes"] - per_model["pair"] - per_model["rm"]
    assert base < adapters_and_base < 1.10 * base, (adapters_and_base, base)
    # Each team's model runs the whole base; counted once for both, the two sum to far more than held.
    assert per_model["team-a"] + per_model["team-b"] > 1.8 * base


def test_switching_one_adapter_changes_only_that_model_and_frees_the_old_one(server, adapters, alone) -> None:  # type: ignore[no-untyped-def]
    before = httpx.get(f"{server}/admin/models", headers=ADMIN).json()["weight_bytes"]
    switched = httpx.post(
        f"{server}/admin/models", headers=ADMIN, json={"name": "team-a", "policy": str(adapters["team-b"])}
    )
    assert switched.status_code == 200, switched.text
    try:
        assert ask(server, "team-a", ITEMS) == pytest.approx(alone["team-b"], abs=1e-4)
        assert ask(server, "team-b", ITEMS) == pytest.approx(alone["team-b"], abs=1e-4)
        assert ask(server, "pair", ITEMS) == pytest.approx(alone["pair"], abs=1e-4)
        # The old adapter was retired with its engine and deleted when the base next ran.
        assert httpx.get(f"{server}/admin/models", headers=ADMIN).json()["weight_bytes"] == before
    finally:
        back = {"name": "team-a", "policy": str(adapters["team-a"])}
        assert httpx.post(f"{server}/admin/models", headers=ADMIN, json=back).status_code == 200


def test_sampling_from_an_adapter_over_a_shared_base_uses_that_adapter(llama_pair, adapters) -> None:  # type: ignore[no-untyped-def]
    """Generation runs the policy under its engine's context: team-b samples as team-b even when the
    shared base last ran team-a's adapter."""
    import asyncio
    import threading

    from xlreward.service.generation import TransformersGenerator
    from xlreward.service.protocol import GenerateRequest
    from xlreward.service.scoring.shared_base import SharedBases

    def greedy(engine, context) -> str:  # type: ignore[no-untyped-def]
        generator = TransformersGenerator(
            engine.policy,
            engine.tokenizer,
            model_name="m",
            lock=threading.Lock(),
            context=context,
            max_length=engine.max_length,
            stop_token_ids=engine.item_tokenizer.stop_ids,
        )
        request = GenerateRequest(prompts=[PROMPT], temperature=0, max_tokens=12)
        return asyncio.run(generator.generate(request)).results[0].completions[0].text

    bases = SharedBases()
    load = {"device": "cpu", "dtype": "float32", "shared_bases": bases}
    team_a = load_engine(adapters["team-a"], llama_pair.reference, **load)
    team_b = load_engine(adapters["team-b"], llama_pair.reference, **load)
    assert team_a.policy is team_b.policy  # one base
    team_a.score(ITEMS[:1])  # team-a's adapter is now the active one
    alone = load_engine(adapters["team-b"], llama_pair.reference, device="cpu", dtype="float32")
    expected = greedy(alone, alone.policy_context)
    assert greedy(team_b, team_b.policy_context) == expected
    assert greedy(team_a, team_a.policy_context) != expected  # else the test could not tell them apart
