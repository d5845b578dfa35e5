"""``xlreward eval``'s habits: every default in --help, refusals before torch is imported, and the LC variant
it reports (alpaca_eval's own GLM on request), without sampling: outputs given as files, the oracle judge."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from alpaca_eval_data import use_local_difficulties
from xlreward.cli.help_format import DefaultsHelpFormatter
from xlreward.cli.main import build_parser, main
from xlreward.demo import world
from xlreward.demo.run import write_instructions

LANGUAGES = ["en", "es", "de"]
# alpaca_eval 0.6.6 imports pkg_resources and passes scikit-learn arguments that 1.10 renames
pytestmark = [
    pytest.mark.filterwarnings("ignore::FutureWarning:sklearn"),
    pytest.mark.filterwarnings("ignore:pkg_resources is deprecated:UserWarning"),
]


def test_eval_help_shows_every_default() -> None:
    """Each optional flag's help says what happens without it: its value, or "(default: ...)" in words."""
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command")
    evaluate = commands.choices["eval"]
    grouped = {
        a for group in evaluate._mutually_exclusive_groups if group.required for a in group._group_actions
    }
    formatter = DefaultsHelpFormatter("xlreward eval")
    missing = [
        action.option_strings[0]
        for action in evaluate._actions
        if action.option_strings and not action.required and action not in grouped
        and action.dest not in ("help", "trust_remote_code")  # a switch is off unless given
        and "(default" not in formatter._get_help_string(action)
    ]  # fmt: skip
    assert missing == []


def run_in_fresh_python(
    argv: list[str], prelude: str = "", env: dict[str, str] | None = None
) -> tuple[int, str, bool]:
    """(exit status, stderr, whether torch got imported) of ``xlreward`` ``argv`` in a new interpreter."""
    code = (
        f"{prelude}\nimport sys\nfrom xlreward.cli.main import main\n"
        f"try:\n    status = main({argv!r})\nexcept SystemExit as exit:\n    status = exit.code\n"
        "print(status, 'torch' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env, check=True
    )
    status, torch_loaded = done.stdout.split()[-2:]
    return int(status), done.stderr, torch_loaded == "True"


@pytest.fixture
def instructions(tmp_path: Path) -> Path:
    return write_instructions(tmp_path / "eval.jsonl", world.distinct_tasks(6, seed=9), "e")


def eval_argv(instructions: Path, out: Path, *extra: str) -> list[str]:
    return ["eval", "--instructions", str(instructions), "--languages", *LANGUAGES, "--out", str(out), *extra]


@pytest.mark.parametrize(
    ("extra", "prelude", "message"),
    [
        (["--model", "{tmp}/nope"], "", "no such folder"),
        (["--model", "org/nope"], "", "--model org/nope (revision main) is not in the Hugging Face cache"),
        (["--model", "{tmp}/nope", "--top-p", "2"], "", "--top-p: '2': give a number above 0 and at most 1"),
        (["--model", "{tmp}/nope", "--max-tokens", "0"], "", "give a whole number of 1 or more"),
        (
            ["--outputs", "{tmp}", "--judge-model", "{tmp}/nope", "--judge", "classifier"],
            "",
            "no such folder",
        ),
        (  # alpaca_eval not installed (a None entry in sys.modules makes its import fail)
            ["--outputs", "{tmp}", "--baseline-outputs", "{tmp}", "--lc-variant", "alpaca_eval_v1"],
            "import sys; sys.modules['alpaca_eval'] = None",
            "--lc-variant alpaca_eval_v1 needs alpaca_eval",
        ),
        (  # installed, but offline with an empty hub cache: its difficulty data cannot be had
            ["--outputs", "{tmp}", "--baseline-outputs", "{tmp}", "--lc-variant", "alpaca_eval_v1"],
            "",
            "reads the instruction difficulties alpaca_eval keeps in the hub dataset tatsu-lab/alpaca_eval",
        ),
    ],
)
def test_eval_refuses_before_importing_torch(
    instructions: Path, tmp_path: Path, extra: list[str], prelude: str, message: str
) -> None:
    """A wrong path, a bad flag or an LC variant that cannot run is exit status 2 with a message, before
    torch (seconds to import) is: nothing is loaded only to be refused."""
    argv = eval_argv(instructions, tmp_path / "out", *(e.format(tmp=tmp_path) for e in extra))
    env = os.environ | {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    status, stderr, torch_loaded = run_in_fresh_python(argv, prelude, env)
    assert status == 2 and message in stderr
    assert not torch_loaded


def write_outputs(folder: Path, instructions: Path, answer) -> Path:
    """<language>/model_outputs.json answering every instruction with ``answer(index, task, language)``."""
    records = [json.loads(line) for line in instructions.read_text(encoding="utf-8").splitlines()]
    for language in LANGUAGES:
        rows = [r for r in records if r["language"] == language]
        outputs = []
        for index, row in enumerate(rows):
            parsed = world.parse_instruction(row["instruction"])
            assert parsed is not None
            outputs.append(
                {
                    "instruction": row["instruction"],
                    "output": answer(index, parsed[1], language),
                    "generator": folder.name,
                }
            )
        (folder / language).mkdir(parents=True, exist_ok=True)
        (folder / language / "model_outputs.json").write_text(json.dumps(outputs), encoding="utf-8")
    return folder


def test_eval_reports_alpaca_evals_v1_lc_when_asked(
    instructions: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--lc-variant alpaca_eval_v1: LC is alpaca_eval's default GLM on the judged outputs (row i is
    instruction i), results.json and the table say so, and the plot is drawn."""
    from alpaca_eval.metrics.glm_winrate import get_length_controlled_winrate

    use_local_difficulties(monkeypatch, tmp_path)
    # the model is right on 4 of 6 (politely, so longer), the baseline on 2 of 6 (tersely): wins, ties, losses
    model = write_outputs(
        tmp_path / "model", instructions, lambda i, t, lang: t.response(lang, filler=True) if i < 4 else "?"
    )
    base = write_outputs(
        tmp_path / "base", instructions, lambda i, t, lang: t.response(lang) if i in (0, 5) else "no"
    )
    out = tmp_path / "out"
    argv = eval_argv(instructions, out, "--outputs", str(model), "--baseline-outputs", str(base))
    assert main([*argv, "--lc-variant", "alpaca_eval_v1"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["length_controlled_variant"] == "alpaca_eval_v1"
    assert "LC variant: alpaca_eval_v1" in capsys.readouterr().out
    assert (out / "win_rates.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for language in LANGUAGES:
        row = results["languages"][language]
        assert (row["wins"], row["ties"], row["losses"]) == (3, 2, 1) and "length_coefficient" not in row
        judged = [json.loads(line) for line in (out / language / "judged.jsonl").read_text().splitlines()]
        frame = pd.DataFrame(
            {
                "output_1": [j["baseline_output"] for j in judged],
                "output_2": [j["output"] for j in judged],
                "generator_1": "base",
                "generator_2": "model",
                "preference": [
                    1.5 if j["score"] == j["baseline_score"] else 1.0 + (j["score"] > j["baseline_score"])
                    for j in judged
                ],
            }
        )
        expected = get_length_controlled_winrate(frame, save_weights_dir=None)["length_controlled_winrate"]
        assert row["length_controlled_win_rate"] == round(expected, 2)


def test_doctests_of_the_eval_command() -> None:
    """--top-p's converter (``probability``) lives with the other bounded-number converters."""
    import doctest

    from xlreward.cli import arg_types

    finder = doctest.DocTestFinder()
    [test] = finder.find(arg_types.probability, "probability")
    assert doctest.DocTestRunner().run(test).failed == 0 and test.examples
