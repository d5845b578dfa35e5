"""Classifier reward models (a one-logit sequence-classification head) scored through the strategies,
against a plain ``AutoModelForSequenceClassification`` forward of the same conversation; and the batch
metric against what the models actually ran."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import torch

from xlreward.service.protocol import RewardItem
from xlreward.service.runtime import LoadedModel, ModelBatchPlan
from xlreward.service.scheduler import BatchStats, Scheduler, Unit, wait_for_ticket
from xlreward.service.scoring.classifier import ClassifierRewardModel
from xlreward.service.scoring.engine import EngineConfig
from xlreward.service.scoring.errors import UnsupportedModelError
from xlreward.service.scoring.loading import load_classifier, load_sequence_classifier, load_tokenizer
from xlreward.service.scoring.reward_model import WorkUnit

PROMPT = "Name three colours."
RESPONSES = ["Red, green and blue.", "Rojo, verde y azul.", "Rot, grün und blau!", "", "Red."]
ITEMS = [
    RewardItem(id=0, prompt=PROMPT, response=RESPONSES[0]),
    RewardItem(id=1, prompt="¿Cuánto es 2+2?", response="Cuatro."),
    RewardItem(id=2, prompt="Say hi.", response="Hallo! " * 12),
]


@pytest.fixture(scope="module")
def classifier_dir(model_cache, tiny_pair):  # type: ignore[no-untyped-def]
    from xlreward.trainer.tiny_models import TinySpec, build_tiny_classifier

    spec = TinySpec(**__import__("json").loads((tiny_pair.policy.parent / "spec.json").read_text()))
    return build_tiny_classifier(model_cache, spec)


def plain_reward(model: Any, tokenizer: Any, prompt: str, response: str) -> float:
    """The reference: transformers' own forward of the rendered conversation, batch of one."""
    conversation = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    ids = tokenizer.apply_chat_template(conversation, tokenize=True, return_dict=True)["input_ids"]
    with torch.no_grad():
        return float(model(input_ids=torch.tensor([list(ids)])).logits[0, 0])


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_items_and_groups_equal_a_plain_forward(classifier_dir, packed: bool) -> None:  # type: ignore[no-untyped-def]
    rm = load_classifier(classifier_dir, device="cpu", dtype="float32", config=EngineConfig(packed=packed))
    plain = load_sequence_classifier(classifier_dir, torch.device("cpu"), torch.float32)
    tokenizer = load_tokenizer(classifier_dir)
    for result, item in zip(rm.score(ITEMS), ITEMS, strict=True):
        assert result.reward == pytest.approx(
            plain_reward(plain, tokenizer, item.prompt, item.response), abs=1e-4
        )
        assert result.policy_logp is None and result.reward_mean is None and result.num_response_tokens > 0
    group = [rm.tokenize_pair(PROMPT, response) for response in RESPONSES]
    scores = rm.score_groups([group])[0]
    for score, response in zip(scores, RESPONSES, strict=True):
        assert score.reward == pytest.approx(plain_reward(plain, tokenizer, PROMPT, response), abs=1e-4)
    assert rm.describe().endswith("classifier (one-logit head)")


def test_a_group_runs_its_prompt_once(classifier_dir) -> None:  # type: ignore[no-untyped-def]
    rm = load_classifier(classifier_dir, device="cpu", dtype="float32")
    group = [rm.tokenize_pair(PROMPT, response) for response in RESPONSES]
    fed: list[int] = []
    handle = rm.sides[0].backbone.register_forward_pre_hook(
        lambda _module, args, kwargs: fed.append(kwargs["input_ids"].numel()), with_kwargs=True
    )
    try:
        rm.score_groups([group])
    finally:
        handle.remove()
    assert sum(fed) < sum(len(item) - 1 for item in group)  # the prompt once, not once per response


def test_a_head_with_more_than_one_label_is_refused(classifier_dir) -> None:  # type: ignore[no-untyped-def]
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(classifier_dir)
    config.num_labels = 3
    model = AutoModelForSequenceClassification.from_config(config)
    with pytest.raises(UnsupportedModelError, match="one-logit head"):
        ClassifierRewardModel(model, load_tokenizer(classifier_dir))


def test_the_padded_tokens_metric_is_what_the_models_ran(engine) -> None:  # type: ignore[no-untyped-def]
    """Before the seam the scheduler coalesced on its own 16,384-token budget and the engine re-planned at
    4,096, so the metric reported padding that never ran. Now one batch is one plan: the positions the
    backbones were fed equal the metric's sum, per side."""
    from xlreward.service.scoring.engine import ScoringEngine

    engine = ScoringEngine(
        engine.policy, engine.reference, engine.tokenizer, config=EngineConfig(max_batch_tokens=300)
    )
    loaded = LoadedModel("pair", engine)
    fed: list[int] = []
    hooks = [
        side.backbone.register_forward_pre_hook(
            lambda _m, args, kwargs: fed.append(kwargs["input_ids"].numel()), with_kwargs=True
        )
        for side in engine.sides
    ]
    stats: list[BatchStats] = []

    def runner(units, plan):  # type: ignore[no-untyped-def]
        assert isinstance(plan, ModelBatchPlan)
        return [s if u.is_group else s[0] for u, s in zip(units, engine.run(plan.plan), strict=True)]

    scheduler = Scheduler(
        runner, max_batch_tokens=1, batch_wait=0.05, max_queue_items=10_000, observer=stats.append
    )
    scheduler.start()

    def unit(prompt: str, responses: list[str], group: bool) -> Unit:
        items = tuple(engine.tokenize_pair(prompt, r) for r in responses)
        return Unit(WorkUnit(items, is_group=group), tuple(map(len, items)), is_group=group, model=loaded)

    async def main() -> None:
        tickets = [
            scheduler.submit(
                f"t{i % 3}",
                [unit(PROMPT, RESPONSES, True), unit(f"Question {i}?", [RESPONSES[i % 5] * (i + 1)], False)],
                timeout=60,
            )
            for i in range(12)
        ]
        await asyncio.gather(*(wait_for_ticket(scheduler, t, 60) for t in tickets))

    try:
        asyncio.run(main())
    finally:
        scheduler.stop()
        for hook in hooks:
            hook.remove()
    assert len(stats) > 1
    assert sum(fed) == len(engine.sides) * sum(s.padded_tokens for s in stats)
    assert all(s.padded_tokens <= 300 or s.requests == 1 for s in stats)  # one unit may exceed it
