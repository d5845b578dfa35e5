"""`bench/run.py` end to end on the 4M `bench-tiny` pair: what `make bench` writes and prints, not how fast.

Speed is never asserted (the bench measures it); what is asserted is what the table means: every row
scores the baseline's rewards, the engine rows do the work their design says (fewer positions, the LM
head only at scored tokens), each row's efficiency is its least-work FLOP rate over the run's GEMM rate,
the memory row's variants order as their arithmetic does, and the refusals say what to do instead.
"""

from __future__ import annotations

import doctest
import importlib
import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
RUN = [sys.executable, str(ROOT / "bench" / "run.py")]


def bench(*args: str, timeout: float = 400) -> subprocess.CompletedProcess[str]:
    command = [*RUN, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT, check=False)


@pytest.fixture(scope="module")
def quick_run():  # type: ignore[no-untyped-def]
    name = f"test-{uuid.uuid4().hex[:8]}"
    done = bench(
        *("--quick", "--config", "bench-tiny", "--name", name),
        *("--rows", "baseline", "engine", "prefix", "packed", "memory"),
    )
    path = ROOT / "bench" / "results" / f"{name}.json"
    try:
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        yield done.stdout, json.loads(path.read_text()), path
    finally:
        path.unlink(missing_ok=True)


def test_every_row_scores_the_baselines_rewards_and_its_ratio_is_to_the_baseline(quick_run) -> None:  # type: ignore[no-untyped-def]
    printed, results, _ = quick_run
    rows = {row["row"]: row for row in results["rows"]}
    assert list(rows) == ["baseline", "engine", "prefix", "packed"]
    base = rows["baseline"]
    for row in rows.values():
        assert row["dtype"] == "float32" and row["tokens_per_s"] > 0 and row["peak_mb"] > 0
        assert row["speedup"] == pytest.approx(row["tokens_per_s"] / base["tokens_per_s"])
        assert row["max_abs_reward_diff"] <= 1e-3 and row["within_tolerance"]
        assert row["same_pairs"] == results["workload"]["groups"]
        assert f"| {row['row']} | fp32 |" in printed
    assert results["targets"]["all_fp32_rows_within_tolerance"] is True
    assert "wrote bench/results/" in printed


def test_the_engine_rows_do_the_work_their_design_says(quick_run) -> None:  # type: ignore[no-untyped-def]
    _, results, _ = quick_run
    rows = {row["row"]: row for row in results["rows"]}
    scored, sequences = results["workload"]["scored_tokens"], results["workload"]["sequence_tokens"]
    assert rows["baseline"]["head_rows"] == rows["baseline"]["fed_tokens"] >= sequences  # head everywhere
    for name in ("engine", "prefix", "packed"):
        assert rows[name]["head_rows"] == scored  # the LM head only at scored tokens
    # the shared prompt once per group, then no padding at all
    assert rows["packed"]["fed_tokens"] <= rows["prefix"]["fed_tokens"] < rows["engine"]["fed_tokens"]
    assert rows["packed"]["fed_tokens"] < sequences
    assert rows["prefix"]["work_ratio"] > rows["engine"]["work_ratio"] > 1


def test_every_row_has_its_efficiency_on_the_least_work_against_the_runs_gemm_rate(quick_run) -> None:  # type: ignore[no-untyped-def]
    printed, results, _ = quick_run
    rates = results["machine"]["gemm"]["dtypes"]
    assert rates["float32"]["gflops"] > 0
    least, split = results["workload"]["least_work"], results["model"]["parameter_split"]
    assert least["head_rows"] == results["workload"]["scored_tokens"]
    flops = 2 * 2 * (split["layers"] * least["fed_tokens"] + split["lm_head"] * least["head_rows"])
    for row in results["rows"]:
        assert least["fed_tokens"] <= row["fed_tokens"]  # no row does less than the least work
        assert row["least_work_flops"] == pytest.approx(flops)
        efficiency = flops / row["seconds"] / (rates[row["dtype"]]["gflops"] * 1e9)
        assert row["efficiency"] == pytest.approx(efficiency) and 0 < efficiency <= 2
    assert "| eff |" in printed and results["targets"]["efficiency_target"] == 0.8


def test_the_least_work_doctest(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    results = doctest.testmod(importlib.import_module("efficiency"))
    assert results.attempted and not results.failed


def test_the_memory_row_orders_as_its_arithmetic(quick_run) -> None:  # type: ignore[no-untyped-def]
    _, results, _ = quick_run
    variants = {v["variant"]: v for v in results["logp_memory"]["variants"]}
    assert set(variants) == {"full", "logsumexp-1024", "inplace-1024", "inplace-auto"}
    assert variants["full"]["expected_extra_mb"] > variants["inplace-auto"]["expected_extra_mb"]
    assert variants["full"]["extra_mb"] > variants["inplace-auto"]["extra_mb"]
    assert variants["full"]["extra_mb"] >= 0.5 * variants["full"]["expected_extra_mb"]
    assert results["logp_memory"]["max_abs_logp_sum_diff"] < 1e-2  # every variant, the same log-probs


def test_report_prints_a_saved_run_again(quick_run) -> None:  # type: ignore[no-untyped-def]
    printed, _, path = quick_run
    again = bench("--report", str(path), timeout=120)
    assert again.returncode == 0, again.stderr
    table = [line for line in printed.splitlines() if line.startswith("| baseline |")]
    assert table and table[0] in again.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_gpu_runs_are_refused_here_with_what_to_do_instead() -> None:
    no_device = bench("--device", "cuda", "--quick", timeout=120)
    assert no_device.returncode != 0 and "torch sees no CUDA device" in no_device.stderr
    too_big = bench("--config", "llama3-8b", "--quick", timeout=120)
    assert too_big.returncode != 0 and "needs --device cuda" in too_big.stderr


def test_the_service_load_bench_runs_every_section_and_each_429_says_when_to_retry() -> None:
    """`bench/service_load.py --quick`: a real server per section, on the tiny Llama pair. What is asserted
    is behaviour, not speed: under a full queue every answer is a 200 or a 429 with Retry-After, the 100 MB
    body is refused with 413, and no 10 MB body gets a 5xx."""
    name = f"test-{uuid.uuid4().hex[:8]}"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "service_load.py"), "--quick", "--name", name],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        check=False,
    )
    path = ROOT / "bench" / "results" / f"service-load-{name}.json"
    try:
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        results = json.loads(path.read_text())
    finally:
        path.unlink(missing_ok=True)
    for section in ("load", "fairness", "generation", "admission"):
        assert "error" not in results[section] and "skipped" not in results[section], results[section]
    load = results["load"]
    assert set(load["statuses"]) <= {"200", "429"} and load["only_200_or_429"]
    assert sum(load["statuses"].values()) == load["requests"] == results["settings"]["sizes"]["requests"]
    assert load["missing_retry_after"] == 0 and load["statuses"].get("200")
    admission = results["admission"]
    assert admission["huge_body"]["status"] == 413 and admission["big_bodies_never_5xx"]
    assert f"wrote bench/results/service-load-{name}.json" in done.stdout
