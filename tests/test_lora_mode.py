"""LoRA mode: a policy given as an adapter over its reference scores with ONE base model in memory, the
reference being the same modules with the adapter switched off, and gives the scores of the two full models
(the adapter merged into a copy of the base, and the base)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from oracle import plain_logp
from strategy_scores import prefix_scores
from xlreward.service.protocol import RewardItem
from xlreward.service.scoring.engine import ScoringEngine
from xlreward.service.scoring.errors import ModelPairError
from xlreward.service.scoring.loading import is_adapter_folder, load_causal_lm, load_engine, load_tokenizer

ITEMS = [
    RewardItem(id="en", prompt="What is 2+2?", response="2+2 is 4."),
    RewardItem(id="es", prompt="What is 2+2?", response="Dos más dos son cuatro."),
    RewardItem(id="ru", prompt="Greet me.", response="Привет, мир! Как дела?"),
    RewardItem(id="empty", prompt="Say nothing.", response=""),
    RewardItem(id="long", prompt="Count.", response=" ".join(str(i) for i in range(120))),
]


@pytest.fixture(scope="module")
def adapter_and_merged(tmp_path_factory, tiny_pair) -> tuple[Path, Path]:
    """An adapter with random (non-zero) weights on the reference, and the same adapter merged into a
    copy of it: the full-model policy LoRA mode must reproduce."""
    from peft import LoraConfig, get_peft_model

    out = tmp_path_factory.mktemp("lora")
    torch.manual_seed(0)
    base = load_causal_lm(tiny_pair.reference, torch.device("cpu"), torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    model = get_peft_model(base, config)
    model.save_pretrained(out / "adapter")  # no tokenizer: LoRA mode then uses the reference's
    model.merge_and_unload().save_pretrained(out / "merged")
    load_tokenizer(tiny_pair.reference).save_pretrained(out / "merged")
    return out / "adapter", out / "merged"


@pytest.fixture(scope="module")
def lora_engine(adapter_and_merged, tiny_pair) -> ScoringEngine:
    adapter, _ = adapter_and_merged
    return load_engine(adapter, tiny_pair.reference, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def merged_engine(adapter_and_merged, tiny_pair) -> ScoringEngine:
    _, merged = adapter_and_merged
    return load_engine(merged, tiny_pair.reference, device="cpu", dtype="float32")


def test_an_adapter_folder_loads_one_base_model(adapter_and_merged, lora_engine, merged_engine) -> None:
    adapter, merged = adapter_and_merged
    assert is_adapter_folder(adapter) and not is_adapter_folder(merged)
    assert lora_engine.lora_mode and not merged_engine.lora_mode
    assert lora_engine.describe() == "cpu, float32, padded rows, LoRA mode (reference = adapter off)"
    assert merged_engine.describe() == "cpu, float32, padded rows"
    assert lora_engine.reference is lora_engine.policy  # one model object, two ways to run it
    # Weights held: one base plus a small adapter, against two full models.
    held = sum(p.numel() for p in lora_engine.policy.parameters())
    pair = sum(p.numel() for m in (merged_engine.policy, merged_engine.reference) for p in m.parameters())
    assert held < 0.6 * pair


def test_lora_mode_scores_equal_the_merged_full_pair(lora_engine, merged_engine) -> None:
    for ours, theirs in zip(lora_engine.score(ITEMS), merged_engine.score(ITEMS), strict=True):
        assert ours.num_response_tokens == theirs.num_response_tokens
        assert ours.policy_logp == pytest.approx(theirs.policy_logp, abs=1e-4), ours.id
        assert ours.reference_logp == pytest.approx(theirs.reference_logp, abs=1e-4), ours.id
    # The adapter changes the policy: a reward of zero everywhere would mean it never ran.
    assert max(abs(r.reward) for r in lora_engine.score(ITEMS)) > 0.01


def test_reference_is_the_base_model_with_the_adapter_off(lora_engine, tiny_pair) -> None:
    base = load_causal_lm(tiny_pair.reference, torch.device("cpu"), torch.float32)
    tokenizer = load_tokenizer(tiny_pair.reference)
    for item, result in zip(ITEMS, lora_engine.score(ITEMS), strict=True):
        assert result.reference_logp == pytest.approx(plain_logp(base, tokenizer, item)[0], abs=1e-4)


def test_the_adapter_is_on_again_after_each_reference_pass(lora_engine) -> None:
    """Regression guard: the reference pass switches the adapter off inside a context; generation and the
    next policy pass must see it on."""
    first = lora_engine.score(ITEMS)
    second = lora_engine.score(ITEMS)
    assert [r.policy_logp for r in first] == pytest.approx([r.policy_logp for r in second], abs=1e-6)
    assert all(not layer.disable_adapters for layer in _lora_layers(lora_engine.policy))


def test_groups_with_a_shared_prompt_work_in_lora_mode(lora_engine) -> None:
    responses = ["Dos más dos son cuatro.", "4", "It is four, of course.", ""]
    items = [lora_engine.tokenize(RewardItem(prompt="What is 2+2?", response=r)) for r in responses]
    shared = prefix_scores(lora_engine, items)
    plain = lora_engine.score_tokenized(items)
    for ours, theirs in zip(shared, plain, strict=True):
        assert ours.policy_logp == pytest.approx(theirs.policy_logp, abs=1e-4)
        assert ours.reference_logp == pytest.approx(theirs.reference_logp, abs=1e-4)


def test_no_reference_needs_an_adapter(tiny_pair) -> None:
    model = load_causal_lm(tiny_pair.policy, torch.device("cpu"), torch.float32)
    with pytest.raises(ModelPairError, match="LoRA mode needs a PEFT model"):
        ScoringEngine(model, None, load_tokenizer(tiny_pair.policy))


def test_an_adapter_without_its_base_folder_is_refused(adapter_and_merged, tmp_path) -> None:
    adapter, _ = adapter_and_merged
    with pytest.raises(FileNotFoundError, match="no such folder"):
        load_engine(adapter, tmp_path / "missing", device="cpu", dtype="float32")


def _lora_layers(model):  # type: ignore[no-untyped-def]
    from peft.tuners.lora import LoraLayer

    return [module for module in model.modules() if isinstance(module, LoraLayer)]


def test_the_server_scores_an_adapter_policy_over_a_real_socket(
    adapter_and_merged, tiny_pair, merged_engine, tmp_path
) -> None:
    """`xlreward serve --policy ADAPTER --reference BASE`: items and a group, as the workers send them."""
    import httpx

    from xlreward.service.process import serve_process

    adapter, _ = adapter_and_merged
    items = [{"id": item.id, "prompt": item.prompt, "response": item.response} for item in ITEMS]
    group = {"prompt": "What is 2+2?", "responses": ["4", "Dos más dos son cuatro.", "five"]}
    env = {"XLREWARD_DEVICE": "cpu", "XLREWARD_DTYPE": "float32"}
    with serve_process(
        adapter, tiny_pair.reference, log_path=tmp_path / "serve.log", env=env, ready_timeout=120
    ) as url:
        body = httpx.post(f"{url}/reward", json={"items": items, "groups": [group]}, timeout=60).json()
    expected = merged_engine.score(ITEMS)
    for served, theirs in zip(body["results"], expected, strict=True):
        assert served["reward"] == pytest.approx(theirs.reward, abs=1e-5), theirs.id
    ranked = body["groups"][0]["results"]
    group_expected = merged_engine.score(
        [RewardItem(prompt=group["prompt"], response=r) for r in group["responses"]]
    )
    for result in ranked:
        assert result["reward"] == pytest.approx(group_expected[result["index"]].reward, abs=1e-5)
