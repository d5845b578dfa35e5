"""``xlreward eval``: outputs in alpaca_eval's format, judged per language against a baseline, resumable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from xlreward.cli.main import main
from xlreward.demo import world
from xlreward.demo.run import write_instructions

LANGUAGES = ["en", "es", "de"]


@pytest.fixture
def instructions(tmp_path: Path) -> Path:
    return write_instructions(tmp_path / "eval.jsonl", world.distinct_tasks(5, seed=9), "e")


def eval_args(pair, instructions: Path, out: Path, *extra: str) -> list[str]:
    return [
        "eval", "--model", str(pair.policy), "--instructions", str(instructions), "--languages", *LANGUAGES,
        "--out", str(out), "--max-tokens", "6", "--limit", "4", *extra,
    ]  # fmt: skip


def test_eval_writes_alpaca_eval_outputs_and_win_rates(
    llama_pair, instructions: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert main(eval_args(llama_pair, instructions, out, "--baseline", str(llama_pair.reference))) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["judge"] == "oracle" and results["length_controlled_variant"] == "minimal"
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == f"policy against {llama_pair.reference}, judged by oracle (ties count half)"
    assert printed[-1].startswith("LC variant: minimal (alpaca_eval's length_controlled_minimal GLM")
    assert (out / "win_rates.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for language in LANGUAGES:
        records = json.loads((out / language / "model_outputs.json").read_text())
        assert [set(r) >= {"instruction", "output", "generator", "dataset"} for r in records] == [True] * 4
        assert {r["generator"] for r in records} == {"policy"}
        row = results["languages"][language]
        # random tiny models never produce the world's phrasing: every comparison is a 0-0 tie
        assert (row["wins"], row["ties"], row["losses"]) == (0, 4, 0)
        assert row["win_rate"] == 50.0 and row["mean_score"] == 0.0
        baseline = json.loads((out / "baseline" / language / "model_outputs.json").read_text())
        assert [r["instruction"] for r in baseline] == [r["instruction"] for r in records]
        judged = [json.loads(line) for line in (out / language / "judged.jsonl").read_text().splitlines()]
        assert [j["output"] for j in judged] == [r["output"] for r in records]


def test_eval_reuses_outputs_already_written(llama_pair, instructions: Path, tmp_path: Path) -> None:
    """A second run (an interrupted evaluation resumed) reads the outputs instead of sampling again:
    the files are not rewritten, so edited outputs survive and are what gets judged."""
    out = tmp_path / "out"
    assert main(eval_args(llama_pair, instructions, out)) == 0
    path = out / "es" / "model_outputs.json"
    records = json.loads(path.read_text())
    task = world.parse_instruction(records[0]["instruction"])
    assert task is not None
    records[0]["output"] = task[1].response("es")  # now the first answer is right
    path.write_text(json.dumps(records))
    assert main(eval_args(llama_pair, instructions, out)) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["languages"]["es"]["mean_score"] == 0.25
    assert results["baseline"] is None and "win_rate" not in results["languages"]["es"]


def test_eval_judges_outputs_it_is_given(llama_pair, instructions: Path, tmp_path: Path) -> None:
    """--outputs judges a folder of alpaca_eval outputs (what `xlreward best-of-n` writes) against a
    baseline's, without sampling: right answers written by hand win against the sampled baseline's."""
    baseline = tmp_path / "baseline"
    assert main(eval_args(llama_pair, instructions, baseline)) == 0
    given = tmp_path / "given"
    for language in LANGUAGES:
        records = json.loads((baseline / language / "model_outputs.json").read_text())
        for record in records[:2]:  # the first two answered right, the others left as sampled
            parsed = world.parse_instruction(record["instruction"])
            assert parsed is not None
            record["output"] = parsed[1].response(language)
        (given / language).mkdir(parents=True)
        (given / language / "model_outputs.json").write_text(json.dumps(records))
    args = eval_args(llama_pair, instructions, tmp_path / "judged", "--baseline-outputs", str(baseline))
    args[args.index("--model") : args.index("--model") + 2] = ["--outputs", str(given)]
    assert main(args) == 0
    results = json.loads((tmp_path / "judged" / "results.json").read_text())
    assert results["model"] == str(given)
    for language in LANGUAGES:
        row = results["languages"][language]
        assert (row["wins"], row["ties"], row["losses"]) == (2, 2, 0) and row["mean_score"] == 0.5


def test_eval_refuses_outputs_that_answer_other_instructions(
    llama_pair, instructions, tmp_path, capsys
) -> None:
    args = eval_args(llama_pair, instructions, tmp_path / "out")
    args[args.index("--model") : args.index("--model") + 2] = ["--outputs", str(tmp_path / "none")]
    assert main(args) == 2
    assert "--outputs" in capsys.readouterr().err


def test_implicit_reward_judge_scores_with_the_english_instruction(
    llama_pair, instructions, tmp_path
) -> None:
    from xlreward.evaluation.judges import ImplicitJudge, Judged
    from xlreward.service.protocol import RewardItem
    from xlreward.service.scoring.loading import load_engine
    from xlreward.worker.settings import DEFAULT_DIRECTIVE

    judge = ImplicitJudge(llama_pair.policy, llama_pair.reference, device="cpu")
    items = [
        Judged("Suma 3 y 5.", "Add 3 and 5.", "es", "Spanish", "8 es la suma."),
        Judged("Add 3 and 5.", "Add 3 and 5.", "en", "English", "The sum is 8."),
    ]
    engine = load_engine(llama_pair.policy, llama_pair.reference, device="cpu", dtype="float32")
    expected = engine.score(
        [
            RewardItem(
                prompt=DEFAULT_DIRECTIVE.format(language="Spanish") + "Add 3 and 5.", response="8 es la suma."
            ),
            RewardItem(prompt="Add 3 and 5.", response="The sum is 8."),
        ]
    )
    assert judge.score(items) == pytest.approx([r.reward for r in expected], abs=1e-6)


def test_eval_refuses_missing_baseline_outputs(llama_pair, instructions, tmp_path, capsys) -> None:
    status = main(
        eval_args(llama_pair, instructions, tmp_path / "out", "--baseline-outputs", str(tmp_path / "none"))
    )
    assert status == 2
    assert "no en/model_outputs.json answering these instructions" in capsys.readouterr().err


def test_eval_refuses_a_missing_model_folder(instructions, tmp_path, capsys) -> None:
    args = [
        "eval",
        "--model",
        str(tmp_path / "nope"),
        "--instructions",
        str(instructions),
        "--languages",
        "en",
    ]
    assert main([*args, "--out", str(tmp_path / "out")]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_sampling_reports_progress_per_batch(llama_pair) -> None:
    """The sampling bar of `xlreward eval` moves once per batch, by the prompts the batch held."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from xlreward.evaluation.sampling import SamplingSettings, sample

    model = AutoModelForCausalLM.from_pretrained(str(llama_pair.policy)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(llama_pair.policy))
    done: list[int] = []
    settings = SamplingSettings(max_new_tokens=2, batch_size=2)
    texts = sample(
        model, tokenizer, ["Add 1 and 2.", "Hi", "Copy: a b", "Max 3 4", "Yo"], settings, done.append
    )
    assert done == [2, 2, 1] and len(texts) == 5
