"""The scoring variants the throughput rows time, each adding one step to the previous one.

``baseline`` reproduces the ICR reference code's loop: batch size 3, right padding, input order (no length
bucketing), the full [B, T, vocab] logits upcast to float32 and log-softmaxed at every position, each of a
prompt's samples in its own pass over the data, and the policy and the reference in separate passes.

Every variant returns per-item summed log-probs under both models, in the workload's flat (group-major)
order, so the rows can be checked against each other. The engine rows differ only in the ``EngineConfig``
their row gives (``run.Row.config``), so each row adds one of the engine's steps to the previous row.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import harness
import workload

Sums = tuple[list[float], list[float]]
Variant = Callable[[Any, list[list[Any]], dict[str, Any]], Sums]

BASELINE_BATCH = 3


def _right_pad(items: Sequence[Any], pad_id: int) -> tuple[Any, Any, Any]:
    """(B, T) input ids and attention mask, right-padded, and the (B, T) mask of scored tokens."""
    import torch

    width = max(len(item) for item in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(items), width), dtype=torch.long)
    scored = torch.zeros((len(items), width), dtype=torch.float32)
    for row, item in enumerate(items):
        ids[row, : len(item)] = torch.tensor(item.input_ids, dtype=torch.long)
        attention[row, : len(item)] = 1
        scored[row, item.score_start : item.score_end] = 1.0
    return ids, attention, scored


def full_logits_sums(model: Any, items: Sequence[Any], pad_id: int) -> list[float]:
    """The reference code's per-batch step: the model's full logits, upcast to float32, log-softmaxed over
    the whole vocabulary at every position, gathered at the next token, masked to the response, summed."""
    import torch

    ids, attention, scored = _right_pad(items, pad_id)
    device = next(model.parameters()).device
    ids, attention, scored = ids.to(device), attention.to(device), scored.to(device)
    with torch.inference_mode():
        logits = model(input_ids=ids, attention_mask=attention, use_cache=False).logits  # (B, T, V)
        logps = torch.log_softmax(logits.float(), dim=-1)  # (B, T, V) float32
        token = logps[:, :-1].gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)  # (B, T-1): token t+1
        sums = (token * scored[:, 1:]).sum(dim=-1)  # (B,) float32
    return [float(value) for value in sums.tolist()]


def _pad_id(engine: Any) -> int:
    pad = engine.tokenizer.pad_token_id
    return int(pad) if pad is not None else 0


def baseline(engine: Any, groups: list[list[Any]], settings: dict[str, Any]) -> Sums:
    samples = len(groups[0])
    total = len(groups) * samples
    flat = [item for group in groups for item in group]
    out: dict[int, list[float]] = {id(engine.policy): [0.0] * total, id(engine.reference): [0.0] * total}
    for model in (engine.policy, engine.reference):  # separate passes per model
        for k in range(samples):  # each sample index is its own pass over the prompts
            indices = [g * samples + k for g in range(len(groups))]  # input order, no bucketing
            for start in range(0, len(indices), BASELINE_BATCH):
                chunk = indices[start : start + BASELINE_BATCH]
                sums = full_logits_sums(model, [flat[i] for i in chunk], _pad_id(engine))
                for index, value in zip(chunk, sums, strict=True):
                    out[id(model)][index] = value
    return out[id(engine.policy)], out[id(engine.reference)]


def bucketed(engine: Any, groups: list[list[Any]], settings: dict[str, Any]) -> Sums:
    """Token-budget batches of similar length (the engine's planner with its settings), both models per
    batch; still the full-vocabulary logits at every position."""
    from xlreward.service.scoring.batching import plan_batches

    flat = [item for group in groups for item in group]
    policy, reference = [0.0] * len(flat), [0.0] * len(flat)
    lengths = [len(item) for item in flat]
    for indices in plan_batches(lengths, engine.max_batch_tokens, engine.config.max_padding):
        batch = [flat[i] for i in indices]
        for model, out in ((engine.policy, policy), (engine.reference, reference)):
            for index, value in zip(indices, full_logits_sums(model, batch, _pad_id(engine)), strict=True):
                out[index] = value
    return policy, reference


def _split(scores: Sequence[Any]) -> Sums:
    return [s.policy_logp for s in scores], [s.reference_logp for s in scores]


def engine_rows(engine: Any, groups: list[list[Any]], settings: dict[str, Any]) -> Sums:
    """``ScoringEngine.score_tokenized``: + the LM head and log-softmax only at response positions, in
    ``chunk_size``-row blocks."""
    return _split(engine.score_tokenized([item for group in groups for item in group]))


def shared_prefix(engine: Any, groups: list[list[Any]], settings: dict[str, Any]) -> Sums:
    """``score_shared_prefix`` per prompt group (the padded engine's ``score_groups``): + the shared prompt
    computed once per group and model."""
    return _split([score for group in engine.score_groups(groups) for score in group])


def packed(engine: Any, groups: list[list[Any]], settings: dict[str, Any]) -> Sums:
    """``score_packed`` over all groups at once (the packed engine's ``score_groups``): + rows without
    padding, each group's prompt once per row and each response a segment on it (``packed_attention``)."""
    return _split([score for group in engine.score_groups(groups) for score in group])


VARIANTS: dict[str, Variant] = {
    "baseline": baseline,
    "bucketed": bucketed,
    "engine": engine_rows,
    "prefix": shared_prefix,
    "packed": packed,
}


# --- what each variant runs through the models (for the report; no torch) ----------------------------


def work_counts(variant: str, groups: list[list[Any]], config: Any, device: str) -> dict[str, int]:
    """Per model: token positions fed to the backbone (padding included) and LM-head rows computed, with
    the row's ``EngineConfig`` (its batch budget resolved for ``device`` as the engine does)."""
    from xlreward.service.scoring.batching import default_max_batch_tokens, plan_batches
    from xlreward.service.scoring.core import fed_length

    budget = config.max_batch_tokens or default_max_batch_tokens(device)
    flat = [item for group in groups for item in group]
    scored = sum(item.num_scored for item in flat)
    if variant == "baseline":
        fed = 0
        for k in range(len(groups[0])):
            column = [group[k] for group in groups]
            for start in range(0, len(column), BASELINE_BATCH):
                chunk = column[start : start + BASELINE_BATCH]
                fed += len(chunk) * max(len(item) for item in chunk)
        return {"fed_tokens": fed, "head_rows": fed}
    if variant == "prefix":
        fed = sum(_prefix_fed(group, budget, config.max_padding) for group in groups)
        return {"fed_tokens": fed, "head_rows": scored}
    if variant == "packed":
        from xlreward.service.scoring.packing import plan_packed

        return {"fed_tokens": plan_packed(groups, budget).fed, "head_rows": scored}
    lengths = [len(item) if variant == "bucketed" else fed_length(item) for item in flat]
    batches = plan_batches(lengths, budget, config.max_padding)
    fed = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    return {"fed_tokens": fed, "head_rows": fed if variant == "bucketed" else scored}


def _prefix_fed(group: list[Any], budget: int, max_padding: float) -> int:
    """What ``score_shared_prefix`` runs for one group: the prefix once, then the suffixes, padded."""
    from xlreward.service.scoring.batching import plan_batches
    from xlreward.service.scoring.prefix import shared_prefix_length, suffix_length

    prefix = shared_prefix_length(group)
    suffixes = [suffix_length(item, prefix) for item in group]
    batches = plan_batches(suffixes, budget, max_padding, shared_prefix=prefix)
    return prefix + sum(len(b) * max(suffixes[i] for i in b) for b in batches)


# --- the worker side -----------------------------------------------------------------------------------


def _warmup_groups(spec: workload.TokenWorkload) -> list[list[Any]]:
    small = workload.TokenWorkload.from_json(
        {**spec.to_json(), "groups": 2, "samples": 2, "prompt_median": 8, "response_median": 8, "seed": 1}
    )
    return workload.token_groups(small)


def run_row(spec: dict[str, Any]) -> dict[str, Any]:
    """Worker: load the pair, build the engine, warm up, then time one variant over the workload."""
    import time as clock

    from xlreward.service.scoring.engine import EngineConfig, ScoringEngine
    from xlreward.service.scoring.templating import TemplateOptions

    harness.set_threads(spec.get("threads"))
    started = clock.perf_counter()
    policy, reference = harness.load_pair(spec)
    engine = ScoringEngine(
        policy,
        reference,
        harness.load_tokenizer(),
        template=TemplateOptions(use_chat_template=False),  # ids are fed directly
        config=EngineConfig(beta=spec["beta"], **spec["engine_config"]),
    )
    load_s = clock.perf_counter() - started
    token_spec = workload.TokenWorkload.from_json(spec["workload"])
    groups = workload.token_groups(token_spec)
    variant = VARIANTS[spec["variant"]]
    variant(engine, _warmup_groups(token_spec), spec)  # first-call setup (oneDNN kernels, caches)
    return {**_timed(variant, engine, groups, spec), "load_s": round(load_s, 2)}


def _timed(variant: Variant, engine: Any, groups: list[list[Any]], spec: dict[str, Any]) -> dict[str, Any]:
    """Runs the variant ``repeats`` times; the time reported is the fastest run (contention from other
    processes only ever adds time), the peak memory the first run's."""
    import gc

    import torch

    runs: list[tuple[float, float]] = []
    memory: dict[str, float] = {}
    for attempt in range(spec.get("repeats", 1)):
        gc.collect()
        probe = harness.PeakMemory(spec["device"])
        probe.start()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        policy, reference = variant(engine, groups, spec)
        harness.synchronize(spec["device"])
        runs.append((time.perf_counter() - wall0, time.process_time() - cpu0))
        memory = memory if attempt else probe.stop()
    seconds, cpu_seconds = min(runs)
    return {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "all_seconds": [round(wall, 2) for wall, _ in runs],
        **memory,
        "memory_method": probe.method,
        "policy_logps": policy,
        "reference_logps": reference,
        "torch_threads": torch.get_num_threads(),
    }
