"""`xlreward score` end to end: a real file, the real console script, real tiny checkpoints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from xlreward.service.protocol import RewardItem
from xlreward.service.scoring.loading import load_engine, load_tokenizer

XLREWARD = str(Path(sys.executable).with_name("xlreward"))

LINES = [
    {"id": 1, "prompt": "What is 2+2?", "response": "4", "language": "en"},
    {
        "id": "ru-1",
        "prompt": [{"role": "user", "content": "Привет"}],
        "response": "Здравствуй!",
        "language": "ru",
    },
    {"prompt": "Greet me.", "response": "สวัสดีชาวโลก 😀"},
    {"id": 4, "prompt": "Count.", "response": "1, 2, 3, 4, 5, 6, 7, 8, 9, 10"},
]


def write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def run_score(pair, input_path: Path, output_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    command = [
        XLREWARD,
        "score",
        "--policy",
        str(pair.policy),
        "--reference",
        str(pair.reference),
        "--input",
        str(input_path),
        "--output",
        str(output_path),
        "--device",
        "cpu",
        *extra,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)


def test_scores_a_file_in_input_order_with_extra_fields_kept(tmp_path, llama_pair) -> None:
    source = write_jsonl(tmp_path / "items.jsonl", [json.dumps(line, ensure_ascii=False) for line in LINES])
    out = tmp_path / "out" / "scored.jsonl"
    done = run_score(llama_pair, source, out, "--beta", "0.5", "--max-batch-tokens", "64")
    assert done.returncode == 0, done.stderr
    assert "scored 4 items" in done.stderr
    scored = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [row.get("id") for row in scored] == [1, "ru-1", None, 4]
    assert scored[0]["language"] == "en" and scored[1]["prompt"] == LINES[1]["prompt"]
    engine = load_engine(llama_pair.policy, llama_pair.reference, device="cpu", dtype="float32")
    expected = engine.score(
        [RewardItem.model_validate({k: line[k] for k in ("prompt", "response")}) for line in LINES]
    )
    for row, result in zip(scored, expected, strict=True):
        assert row["policy_logp"] == pytest.approx(result.policy_logp, abs=1e-4)
        assert row["reference_logp"] == pytest.approx(result.reference_logp, abs=1e-4)
        assert row["num_response_tokens"] == result.num_response_tokens
        assert row["reward"] == pytest.approx(0.5 * (row["policy_logp"] - row["reference_logp"]), abs=1e-6)


def test_bad_line_stops_the_run_with_its_line_number(tmp_path, llama_pair) -> None:
    source = write_jsonl(
        tmp_path / "items.jsonl",
        [json.dumps(LINES[0]), '{"prompt": "no response here"}', json.dumps(LINES[3])],
    )
    out = tmp_path / "scored.jsonl"
    done = run_score(llama_pair, source, out)
    assert done.returncode == 2
    assert f"{source}:2:" in done.stderr
    assert 'field "response": Field required' in done.stderr
    assert "Traceback" not in done.stderr
    assert not out.exists()  # nothing half-written


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ("{not json", "not valid JSON"),
        ('["a list"]', "expected a JSON object"),
        (
            '{"prompt": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}], '
            '"response": "y"}',
            "must end with a user turn",
        ),
        ('{"prompt": "hi", "response": "' + "word " * 400 + '"}', "context is 1024 tokens"),
        ('{"prompt": "hi", "response": 7}', 'field "response"'),
    ],
)
def test_skip_invalid_reports_and_skips(tmp_path, llama_pair, bad_line: str, message: str) -> None:
    source = write_jsonl(tmp_path / "items.jsonl", [json.dumps(LINES[0]), bad_line, "", json.dumps(LINES[3])])
    out = tmp_path / "scored.jsonl"
    done = run_score(llama_pair, source, out, "--skip-invalid")
    assert done.returncode == 0, done.stderr
    assert f"skipped {source}:2: " in done.stderr and message in done.stderr
    assert "scored 2 items" in done.stderr and "(1 skipped)" in done.stderr
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == [1, 4]


def test_missing_checkpoint_is_a_clear_error(tmp_path) -> None:
    source = write_jsonl(tmp_path / "items.jsonl", [json.dumps(LINES[0])])
    done = subprocess.run(
        [
            XLREWARD,
            "score",
            "--policy",
            str(tmp_path / "nope"),
            "--reference",
            str(tmp_path / "nope"),
            "--input",
            str(source),
            "--output",
            str(tmp_path / "o.jsonl"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2
    assert "--policy" in done.stderr and "no such folder" in done.stderr


def test_raw_mode_and_icr_compat_flags(tmp_path, llama_pair) -> None:
    line = LINES[3]
    source = write_jsonl(tmp_path / "items.jsonl", [json.dumps(line)])
    counts = {}
    for flags in [(), ("--icr-compat",), ("--raw",)]:
        out = tmp_path / f"out{len(counts)}.jsonl"
        done = run_score(llama_pair, source, out, *flags)
        assert done.returncode == 0, done.stderr
        counts[flags] = json.loads(out.read_text())["num_response_tokens"]
    assert counts[("--icr-compat",)] == counts[()] - 1
    tokenizer = load_tokenizer(llama_pair.policy)
    plain = len(tokenizer(line["prompt"] + line["response"])["input_ids"]) - len(
        tokenizer(line["prompt"])["input_ids"]
    )
    assert counts[("--raw",)] == plain + 1  # the response's tokens and EOS


def test_packed_flag_scores_as_the_padded_engine(tmp_path, llama_pair) -> None:
    source = write_jsonl(tmp_path / "items.jsonl", [json.dumps(line, ensure_ascii=False) for line in LINES])
    scored = {}
    for flags in [(), ("--packed",)]:
        out = tmp_path / f"scored{len(scored)}.jsonl"
        done = run_score(llama_pair, source, out, "--max-batch-tokens", "64", *flags)
        assert done.returncode == 0, done.stderr
        rows = "packed rows (per-sequence attention)" if flags else "padded rows"
        assert f"on cpu, float32, {rows}" in done.stderr
        scored[flags] = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    for padded, packed in zip(scored[()], scored[("--packed",)], strict=True):
        assert packed["num_response_tokens"] == padded["num_response_tokens"]
        assert packed["policy_logp"] == pytest.approx(padded["policy_logp"], abs=1e-4)
        assert packed["reference_logp"] == pytest.approx(padded["reference_logp"], abs=1e-4)


# Runs `xlreward score` in-process on each argv of ARGVS, then says whether torch was ever imported.
EARLY_PROBE = """
import contextlib, io, json, sys
from xlreward.cli.main import main
outcomes = []
for argv in {argvs!r}:
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        try:
            status = main(["score", *argv])
        except SystemExit as stop:  # argparse's own errors
            status = stop.code
    outcomes.append([status, stderr.getvalue()])
print(json.dumps({{"outcomes": outcomes, "torch": "torch" in sys.modules}}))
"""


def test_bad_names_and_flags_fail_before_torch_is_imported(tmp_path: Path) -> None:
    """A missing folder, a missing input or a bad number once cost a torch import (and more) before the error:
    each must exit 2 with its message, and torch never load."""
    (tmp_path / "runs").mkdir()
    (tmp_path / "model").mkdir()
    source = write_jsonl(tmp_path / "items.jsonl", [json.dumps(LINES[0])])
    good = ["--policy", "model", "--reference", "model", "--input", str(source), "--output", "o.jsonl"]
    cases = {
        "--policy nope/: no such folder": ["--policy", "nope/", *good[2:]],
        "--reference runs/model/: no such folder": [*good[:2], "--reference", "runs/model/", *good[4:]],
        "--policy org/tiny (revision main) is not in the Hugging Face cache": [
            "--policy",
            "org/tiny",
            *good[2:],
        ],
        "--input missing.jsonl: no such file": [*good[:4], "--input", "missing.jsonl", *good[6:]],
        "--output model is a folder": [*good[:6], "--output", "model"],
        "argument --beta: 'nan': give a finite number of 0 or more": [*good, "--beta", "nan"],
        "argument --chunk-size: '0': give a whole number of 1 or more": [*good, "--chunk-size", "0"],
    }
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "empty-hub")}
    done = subprocess.run(
        [sys.executable, "-c", EARLY_PROBE.format(argvs=list(cases.values()))],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    report = json.loads(done.stdout)
    for message, (status, stderr) in zip(cases, report["outcomes"], strict=True):
        assert status == 2 and message in stderr, (message, status, stderr)
    assert report["torch"] is False


def test_a_hub_id_passes_the_early_check_online(tmp_path: Path) -> None:
    """Online, a hub id is the download's business: the check before torch must not refuse it."""
    source = write_jsonl(tmp_path / "items.jsonl", [json.dumps(LINES[0])])
    code = (
        "import argparse\nfrom xlreward.cli.score import check_before_loading\n"
        "check_before_loading(argparse.Namespace(policy='org/tiny', reference='org/tiny-sft', revision='v1', "
        f"trust_remote_code=False, input={str(source)!r}, output='o.jsonl'))\nprint('accepted')"
    )
    online = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_OFFLINE"))}
    done = subprocess.run(
        [sys.executable, "-c", code], env=online, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.stdout.strip() == "accepted", done.stderr
