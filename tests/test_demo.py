"""The demo's plumbing end to end, at a toy scale: world -> pi_ref -> pi^0 -> `xlreward iterate` (real
reward service, embedded workers, DPO + NLL) twice -> eval -> summary.json and the plot.

The real run (`make demo`) is the same code with the default sizes; it takes minutes and its numbers are
in the README. Here the models are too small to learn anything, so this asserts structure, not results.
"""

from __future__ import annotations

import json
from pathlib import Path

from xlreward.demo.lm import LMTraining
from xlreward.demo.models import DemoConfig, WorldSplit, model_folder
from xlreward.demo.run import DemoRun, IterationSettings, run_demo
from xlreward.demo.transfer import TransferSettings
from xlreward.demo.world import judge, parse_instruction

TOY = DemoConfig(
    split=WorldSplit(pretrain=40, sft=40, english_dpo=24, iterate=3, evaluate=4),
    hidden_size=32,
    num_layers=1,
    vocab_size=400,
    pretrain=LMTraining(steps=150, batch_size=16),
    sft=LMTraining(steps=150, batch_size=16),  # enough to learn the phrasing, so pi_ref's samples differ
    dpo_epochs=4.0,  # TRL warms up from lr 0: a one-step pi^0 would equal pi_ref
)
ROWS = ["pi_ref", "pi^0", "iteration 1", "iteration 2", "iteration 1 (R_m)"]
TRANSFER_ROWS = [
    "best-of-4: English RM",
    "best-of-4: same-language RM",
    "best-of-4: implicit reward",
    "pi_ref sample (best-of-1)",
    "GRPO: English RM",
]
TOY_TRANSFER = TransferSettings(
    rm_tasks=12, rm_epochs=1.0, rm_batch_size=8, n=4, grpo_tasks=12, grpo_steps=2, grpo_batch_size=8,
    grpo_generations=4, grpo_max_tokens=8,
)  # fmt: skip


def test_toy_demo_runs_the_method_end_to_end(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    run = DemoRun(
        out=tmp_path / "demo",
        cache=tmp_path / "cache",
        config=TOY,
        iteration=IterationSettings(samples=4, temperature=1.5, max_tokens=8, epochs=2.0),
        transfer=TOY_TRANSFER,
    )
    summary = run_demo(run)
    out = run.out
    assert json.loads((out / "summary.json").read_text()) == summary
    assert list(summary["rows"]) == ROWS
    for row in summary["rows"].values():
        assert set(row) == {"en", "es", "de"}
        for cell in row.values():
            assert 0 <= cell["win_rate"] <= 100 and 0 <= cell["length_controlled_win_rate"] <= 100
    assert all(cell["win_rate"] == 50.0 for cell in summary["rows"]["pi^0"].values())  # the baseline itself
    assert (out / "win_rates.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(summary["targets"]) == {
        "iteration_2_beats_pi0",
        "cross_lingual_beats_monolingual_at_iteration_1",
        "best_of_4_english_rm_beats_pi_ref",
        "grpo_english_rm_beats_pi_ref",
        "comparisons",
    }
    check_transfer(out, summary)
    # Iteration 2 sampled from the model iteration 1 trained and scored with pi^0 against pi_ref (the
    # demo's reward_policy = "initial").
    second = json.loads((out / "cross-lingual" / "iter-2" / "DONE.json").read_text())
    assert Path(second["generator"]) == (out / "cross-lingual" / "iter-1" / "train" / "model").resolve()
    models = model_folder(TOY, run.cache)
    assert Path(second["served_policy"]).resolve() == (models / "pi0" / "model").resolve()
    assert Path(second["served_reference"]).resolve() == (models / "sft").resolve()
    # The ablation scored with the target-language instruction, the main run with the English one.
    for mode, expected in (("cross-lingual", "cross_lingual"), ("monolingual", "monolingual")):
        spec = json.loads((out / mode / "iter-1" / "annotate" / "run.json").read_text())["spec"]
        assert spec["reward_mode"] == expected
    table = capsys.readouterr().out
    assert "iteration 2" in table and "win rates against pi^0" in table
    # A second run reuses the cached models and every finished stage.
    again = run_demo(run)
    assert again["rows"] == summary["rows"] and again["transfer"] == summary["transfer"]
    assert "already done" in (out / "logs" / "rl.log").read_text()  # the GRPO run is not redone


def check_transfer(out: Path, summary: dict) -> None:  # type: ignore[type-arg]
    """The transfer part ran through the real commands: one RM per language, best-of-n over the served
    rewards (judged against pi_ref's own outputs), and a GRPO run rewarded by the English RM."""
    transfer = summary["transfer"]
    assert list(transfer["rows"]) == TRANSFER_ROWS and transfer["baseline"] == "pi_ref"
    for name, row in transfer["rows"].items():
        assert set(row) == ({"en", "es", "de"} if name.startswith("GRPO") else {"es", "de"})
    assert set(transfer["rm_held_out_accuracy"]) == {"en", "es", "de"}
    for language in ("en", "es", "de"):
        assert (out / "transfer" / f"rm-{language}" / "model" / "config.json").exists()
    # Every pair's chosen response is the oracle's better one; some reject an off-target response.
    pairs = read_jsonl(out / "transfer" / "pairs" / "en.jsonl")
    assert all(judge(p["prompt"], p["chosen"], "en") > judge(p["prompt"], p["rejected"], "en") for p in pairs)
    assert any(p["id"].endswith("-off-target") for p in pairs)
    best = json.loads((out / "transfer" / "best-of-n" / "summary.json").read_text())
    assert best["n"] == 4 and best["sampler"] == "icr" and best["sampler_role"] == "reference"
    modes = {model["name"]: model["reward_prompt"] for model in best["models"]}
    assert modes == {"rm-en": "prompt", "rm-es": "prompt", "rm-de": "prompt", "icr": "english"}
    # The rows judge the outputs best-of-n wrote, against the outputs pi_ref wrote in the evaluation.
    judged = json.loads((out / "transfer" / "eval" / "english-rm" / "results.json").read_text())
    assert judged["baseline"] == str(out / "eval" / "pi_ref")
    assert judged["model"] == str(out / "transfer" / "best-of-n" / "rm-en")
    rl = json.loads((out / "transfer" / "grpo" / "rl_config.json").read_text())
    reward = rl["config"]["reward"]
    assert reward["model"] == "rm-en" and reward["reward_prompt"] == "prompt"
    # GRPO's prompts hold every kind the evaluation does, in tasks no other stage uses.
    prompts = read_jsonl(Path(rl["config"]["instructions"][0]))
    held_out = read_jsonl(out / "data" / "eval_instructions.jsonl")
    assert {kind_of(p["instruction"]) for p in prompts} == {kind_of(p["instruction"]) for p in held_out}
    assert not {p["instruction"] for p in prompts} & {p["instruction"] for p in held_out}
    assert (out / "transfer" / "grpo" / "model" / "config.json").exists()


def kind_of(instruction: str) -> str:
    parsed = parse_instruction(instruction)
    assert parsed is not None, instruction
    return parsed[1].kind


def read_jsonl(path: Path) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(line) for line in path.read_text().splitlines()]
