"""Where a model's weights go: one device for a whole model, a pair split over two devices, or a device map
spreading each model over the GPUs. On CPU the device map and the refusals are checked; the two-GPU
splits run where two CUDA devices are (bench/gpu/run.sh runs this file on the GPU machine)."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from xlreward.service.models_config import ModelSpec
from xlreward.service.protocol import RewardItem
from xlreward.service.scoring.errors import ModelPairError
from xlreward.service.scoring.loading import (
    Placement,
    load_causal_lm,
    load_classifier,
    load_engine,
    resolve_device,
)
from xlreward.service.settings import ServiceSettings

ITEMS = [
    RewardItem(id=0, prompt="What is 2+2?", response="2+2 is 4."),
    RewardItem(id=1, prompt="What is 2+2?", response="Dos más dos son cuatro."),
    RewardItem(id=2, prompt="Greet me.", response="Привет, мир!"),
]


def rewards(model) -> list[float]:  # type: ignore[no-untyped-def]
    return [result.reward for result in model.score(ITEMS)]


def test_a_device_map_scores_as_one_device_does(llama_pair, model_cache) -> None:  # type: ignore[no-untyped-def]
    from xlreward.trainer.tiny_models import TinySpec, build_tiny_classifier

    mapped = Placement(device_map="auto")
    plain = load_engine(llama_pair.policy, llama_pair.reference, device="cpu", dtype="float32")
    spread = load_engine(llama_pair.policy, llama_pair.reference, dtype="float32", placement=mapped)
    assert rewards(spread) == pytest.approx(rewards(plain), abs=1e-5)
    classifier = build_tiny_classifier(model_cache, TinySpec(arch="llama", template="llama3"))
    one = load_classifier(classifier, device="cpu", dtype="float32")
    assert rewards(load_classifier(classifier, dtype="float32", placement=mapped)) == pytest.approx(
        rewards(one), abs=1e-5
    )


def test_placements_that_cannot_work_are_refused_with_the_fix(llama_pair) -> None:  # type: ignore[no-untyped-def]
    pair = {"name": "m", "policy": "org/dpo", "reference": "org/sft"}
    with pytest.raises(ValidationError, match="drop device and reference_device"):
        ModelSpec.model_validate({**pair, "device_map": "auto", "reference_device": "cuda:1"})
    with pytest.raises(ValidationError, match="no reference to place"):
        ModelSpec.model_validate(
            {"name": "rm", "kind": "classifier", "path": "org/rm", "reference_device": "cpu"}
        )
    with pytest.raises(ValidationError, match="pattern"):
        ModelSpec.model_validate({**pair, "device": "gpu0"})
    with pytest.raises(ValidationError, match="drop reference_device"):
        ServiceSettings(
            policy=llama_pair.policy,
            reference=llama_pair.reference,
            device_map="auto",
            reference_device="cuda:1",
        )
    assert ModelSpec.model_validate(
        {**pair, "device": "cuda:0", "reference_device": "cuda:1"}
    ).reference_device
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="torch sees no CUDA device"):
            resolve_device("cuda:1")


def test_an_adapter_cannot_put_its_reference_elsewhere(llama_pair, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from peft import LoraConfig, get_peft_model

    base = load_causal_lm(llama_pair.reference, torch.device("cpu"), torch.float32)
    get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj"])).save_pretrained(tmp_path / "adapter")
    split = Placement(device="cpu", reference_device="cuda:1")
    with pytest.raises(ModelPairError, match="drop reference_device"):
        load_engine(tmp_path / "adapter", llama_pair.reference, placement=split)


# Two devices to split over: two GPUs where there are, else one GPU and the CPU (still a real crossing).
SECOND_DEVICE = "cuda:1" if torch.cuda.device_count() > 1 else "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("packed", [False, True])
def test_a_pair_split_over_two_devices_scores_as_one_device_does(llama_pair, packed: bool) -> None:  # type: ignore[no-untyped-def]
    from xlreward.service.scoring.engine import EngineConfig

    config = EngineConfig(packed=packed)
    one = load_engine(
        llama_pair.policy, llama_pair.reference, device="cuda:0", dtype="float32", config=config
    )
    split = Placement(device="cuda:0", reference_device=SECOND_DEVICE)
    two = load_engine(
        llama_pair.policy, llama_pair.reference, dtype="float32", placement=split, config=config
    )
    assert next(two.reference.parameters()).device == torch.device(SECOND_DEVICE)
    assert rewards(two) == pytest.approx(rewards(one), abs=1e-4)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_a_device_map_spreads_a_model_over_two_gpus(llama_pair) -> None:  # type: ignore[no-untyped-def]
    one = load_engine(llama_pair.policy, llama_pair.reference, device="cuda:0", dtype="float32")
    balanced = Placement(device_map="balanced")
    spread = load_engine(llama_pair.policy, llama_pair.reference, dtype="float32", placement=balanced)
    assert len({str(device) for device in spread.policy.hf_device_map.values()}) == 2
    assert rewards(spread) == pytest.approx(rewards(one), abs=1e-4)
