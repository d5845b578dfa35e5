"""The built-in sampler's decode loop: greedy as transformers decodes, seeded rows that do not depend on how
the steps are split into turns, top-k 1 is greedy, stop strings and token limits end rows."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from xlreward.service.generation.decode import DecodeJob, Sampling
from xlreward.service.scoring.templating import end_of_turn_ids


@pytest.fixture(scope="module")
def lm(llama_pair):  # type: ignore[no-untyped-def]
    model = AutoModelForCausalLM.from_pretrained(llama_pair.policy, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(llama_pair.policy)
    return model, tokenizer


def prompt_ids(tokenizer, text: str) -> list[int]:  # type: ignore[no-untyped-def]
    messages = [{"role": "user", "content": text}]
    encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)
    return list(encoded["input_ids"])


def sample(lm, text: str, budget_s: float = 10.0, **settings) -> DecodeJob:  # type: ignore[no-untyped-def]
    model, tokenizer = lm
    defaults = {"n": 4, "max_new_tokens": 24, "temperature": 1.0, "top_p": 1.0, "top_k": None}
    sampling = Sampling(**{**defaults, "stops": (), "seed": 7, **settings})
    job = DecodeJob(
        model,
        [prompt_ids(tokenizer, text)],
        [sampling],
        stop_token_ids=end_of_turn_ids(tokenizer),
        decode=lambda ids: tokenizer.decode(ids, skip_special_tokens=True),
    )
    with torch.inference_mode():
        while not job.done:
            job.advance(budget_s)
    return job


@pytest.mark.parametrize("text", ["Name three colours.", "Écris un poème court sur la mer."])
def test_greedy_decodes_as_transformers_generate(lm, text: str) -> None:  # type: ignore[no-untyped-def]
    model, tokenizer = lm
    ids = prompt_ids(tokenizer, text)
    job = sample(lm, text, temperature=0.0, max_new_tokens=32)
    with torch.inference_mode():
        reference = model.generate(
            input_ids=torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            do_sample=False,
            max_new_tokens=32,
            eos_token_id=sorted(end_of_turn_ids(tokenizer)),
            pad_token_id=tokenizer.eos_token_id,
        )
    expected = reference[0, len(ids) :].tolist()
    assert len(job.rows) == 1  # greedy: one row stands for all n
    assert job.rows[0] == expected[: len(job.rows[0])] and len(job.rows[0]) == len(expected)


def test_seeded_rows_do_not_depend_on_turns(lm) -> None:  # type: ignore[no-untyped-def]
    """One step per turn, or the whole job in one turn: the same tokens in every row."""
    stepwise = sample(lm, "Tell me a story.", budget_s=0.0)
    whole = sample(lm, "Tell me a story.", budget_s=60.0)
    assert stepwise.rows == whole.rows
    assert len({tuple(row) for row in whole.rows}) > 1  # sampling: the rows differ from each other
    assert sample(lm, "Tell me a story.", seed=8).rows != whole.rows


def test_top_k_one_is_greedy(lm) -> None:  # type: ignore[no-untyped-def]
    greedy = sample(lm, "Count to five.", temperature=0.0).rows[0]
    top_one = sample(lm, "Count to five.", top_k=1, temperature=0.7, n=2).rows
    assert top_one == [greedy, greedy]


def test_rows_end_at_their_limit_or_stop_string_and_leave_the_batch(lm) -> None:  # type: ignore[no-untyped-def]
    _, tokenizer = lm
    limited = sample(lm, "Go on.", max_new_tokens=5)
    assert all(len(row) <= 5 for row in limited.rows)
    free = sample(lm, "Go on.", max_new_tokens=40, n=8)
    text = tokenizer.decode(free.rows[0], skip_special_tokens=True)
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    assert stop.strip(), text
    stopped = sample(lm, "Go on.", max_new_tokens=40, n=8, stops=(stop,))
    first = tokenizer.decode(stopped.rows[0], skip_special_tokens=True)
    assert stop in first and len(stopped.rows[0]) < len(free.rows[0])
    assert stopped.rows[0] == free.rows[0][: len(stopped.rows[0])]  # the same tokens, up to the stop
    # Finished rows leave the batch: each row is fed back its own tokens but the last, no more.
    assert stopped.fed_tokens == sum(len(row) - 1 for row in stopped.rows)
    assert len({len(row) for row in stopped.rows}) > 1  # they did finish at different steps


def run_job(lm, prompts: list[list[int]], samplings: list[Sampling]) -> DecodeJob:  # type: ignore[no-untyped-def]
    model, tokenizer = lm
    job = DecodeJob(
        model,
        prompts,
        samplings,
        stop_token_ids=end_of_turn_ids(tokenizer),
        decode=lambda ids: tokenizer.decode(ids, skip_special_tokens=True),
    )
    with torch.inference_mode():
        while not job.done:
            job.advance(0.0)
    return job


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_prompts_of_different_lengths_in_one_job_sample_as_they_would_alone(lm, temperature: float) -> None:  # type: ignore[no-untyped-def]
    """Left padding, the attention mask and the positions: a prompt batched with longer and shorter ones
    gets the tokens it gets alone, each prompt with its own seed and token limit."""
    _, tokenizer = lm
    texts = ["Name three colours.", "Écris un poème court sur la mer, s'il te plaît.", "Hi"]
    prompts = [prompt_ids(tokenizer, text) for text in texts]
    assert len({len(ids) for ids in prompts}) == 3
    samplings = [
        Sampling(
            n=3, max_new_tokens=limit, temperature=temperature, top_p=0.9, top_k=None, stops=(), seed=seed
        )
        for seed, limit in [(11, 20), (12, 6), (13, 20)]
    ]
    together = run_job(lm, prompts, samplings)
    assert all(len(row) <= 6 for row in together.prompt_rows(1))
    for at in range(len(prompts)):
        alone = run_job(lm, [prompts[at]], [samplings[at]])
        assert together.prompt_rows(at) == alone.rows, texts[at]
    assert sum(len(row) for row in together.rows) > 3 * len(together.rows)  # they really did generate


def test_a_job_refuses_prompts_with_different_settings(lm) -> None:  # type: ignore[no-untyped-def]
    model, tokenizer = lm
    base = Sampling(n=2, max_new_tokens=4, temperature=1.0, top_p=1.0, top_k=None, stops=(), seed=1)
    other = Sampling(n=2, max_new_tokens=4, temperature=0.5, top_p=1.0, top_k=None, stops=(), seed=1)
    ids = prompt_ids(tokenizer, "Hi")
    with pytest.raises(ValueError, match="share their sampling settings"):
        DecodeJob(model, [ids, ids], [base, other], stop_token_ids=frozenset({0}), decode=str)
