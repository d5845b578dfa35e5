"""Benchmark of the scoring engine on an annotation-shaped workload, against a baseline that reproduces the
ICR reference code's loop. See bench/README.md for what each row means.

    .venv/bin/python bench/run.py [--quick] [--name NAME] [--rows ROW ...]
    .venv/bin/python bench/run.py --device cuda --dtype bfloat16 --config llama3-8b

Prints a table and writes bench/results/<name>.json. Every measured variant runs in its own fresh worker
process, one after another in this run, on the same machine with the same workload and models: the numbers
to read are the ratios between rows, not the absolute times.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import efficiency
import harness
import workload

TOLERANCE = 1e-3  # largest |reward - baseline reward| accepted for float32 rows
MEMORY_TARGET_MB = 512.0
MEMORY_VOCAB = 128256  # Llama-3's vocabulary, for the log-prob memory stage


# The engine as it was before the padding-aware planner and the CPU budget (issue 6): rows up to
# ``response-head`` use it, and each later row changes one thing.
# No cap on positions per forward then (``max_forward_tokens``: a number no batch reaches).
BEFORE = {
    "max_batch_tokens": 16384,
    "chunk_size": 1024,
    "max_padding": 1.0,
    "padding_mask": True,
    "max_forward_tokens": 1 << 40,
}


@dataclass(frozen=True)
class Row:
    name: str
    description: str
    variant: str | None  # None: not implemented
    bf16: bool = False
    config: dict[str, Any] = field(default_factory=dict)  # EngineConfig fields; {} = the engine's defaults
    pair: str = "pair"  # which models (harness.load_pair): the pair, or a LoRA policy over the reference
    compare_to: str | None = "baseline"  # the row whose rewards this one's must equal (None: another pair)


ROWS = [
    Row(
        "baseline",
        "ICR reference loop: batch 3, right padding, input order, full [B,T,V] logits upcast to fp32 and "
        "log-softmaxed at every position, each sample index its own pass, policy and reference in separate "
        "passes",
        "baseline",
    ),
    Row(
        "bucketed",
        "+ token-budget batches of similar length (16384 tokens), both models per batch; "
        "full-vocabulary logits at every position still",
        "bucketed",
        config=BEFORE,
    ),
    Row(
        "response-head",
        "+ LM head and fp32 log-softmax only at response positions, 1024 rows at a time (the engine before "
        "issue 6: 16384-token budget, no padding limit, attention mask)",
        "engine",
        config=BEFORE,
    ),
    Row(
        "padding-aware",
        "+ batches close at 10% padding (plan_batches' max_padding)",
        "engine",
        config={**BEFORE, "max_padding": 0.1},
    ),
    Row(
        "cpu-budget",
        "+ the CPU's default budget, 4096 padded tokens per batch",
        "engine",
        config={**BEFORE, "max_padding": 0.1, "max_batch_tokens": None},
    ),
    Row(
        "engine",
        "+ no attention mask (causal attention hides right padding), vocabulary-sized chunks with in-place "
        "logsumexp: ScoringEngine.score_tokenized with its defaults",
        "engine",
    ),
    Row("prefix", "+ shared prompt computed once per group (score_shared_prefix per prompt group)", "prefix"),
    Row(
        "packed",
        "+ packed rows without padding: all groups at once, each prompt once per row and each response a "
        "segment attending to it (score_packed, packed_attention)",
        "packed",
        config={"packed": True},
    ),
    Row(
        "prefix-bf16",
        "prefix + bfloat16 weights and activations (log-softmax still fp32)",
        "prefix",
        bf16=True,
    ),
    Row(
        "lora-merged",
        f"a LoRA policy as two full models: the reference + a random rank-{harness.LORA_RANK} all-linear "
        "adapter merged into a copy, and the reference; prefix scoring",
        "prefix",
        pair="lora-merged",
        compare_to=None,  # another policy than the baseline's: its rewards have nothing to equal
    ),
    Row(
        "lora",
        "LoRA mode: ONE base model in memory, policy = base + the same adapter, reference = adapter off "
        "(rewards compared with lora-merged's); prefix scoring",
        "prefix",
        pair="lora",
        compare_to="lora-merged",
    ),
]
EXTRA_ROWS = ["memory", "service"]
ALL_ROWS = [row.name for row in ROWS] + EXTRA_ROWS


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a small workload (~1.5 min on 2 cores)")
    parser.add_argument("--name", help="results file name (default: <config>-<device>-<quick|full>)")
    parser.add_argument("--rows", nargs="+", choices=ALL_ROWS, help="rows to run (default: all)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument(
        "--dtype", choices=["float32", "bfloat16"], help="default: float32 (cpu), bf16 (cuda)"
    )
    parser.add_argument("--config", choices=sorted(harness.MODEL_SHAPES), default="bench-60m")
    parser.add_argument("--groups", type=int, help="prompt groups (default depends on --quick/--device)")
    parser.add_argument("--samples", type=int, help="responses per prompt (default 10)")
    parser.add_argument("--repeats", type=int, help="timed runs per row, fastest kept (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="workload and model seed (reference: seed + 1)")
    parser.add_argument("--threads", type=int, help="torch threads in workers and the server")
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument(
        "--max-batch-tokens", type=int, help="every engine row's budget (default: each row's own)"
    )
    parser.add_argument("--chunk-size", type=int, help="every engine row's chunk (default: each row's own)")
    parser.add_argument(
        "--max-forward-tokens",
        type=int,
        help="every engine row's positions per forward call (default: each row's own)",
    )
    parser.add_argument("--clients", type=int, help="service row: concurrent clients (default 64)")
    parser.add_argument("--items-per-request", type=int, default=4, help="service row: items per request")
    parser.add_argument(
        "--peak-tflops", type=float, help="accelerator bf16 peak for the MFU column (cuda: 790)"
    )
    parser.add_argument(
        "--report", metavar="RESULTS", help="print a saved results JSON again, compared by this code's rules"
    )
    parser.add_argument("--worker", nargs=2, metavar=("SPEC", "OUT"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def check_setup(args: argparse.Namespace) -> None:
    """Refuse what cannot run here, with a message that says what to do instead."""
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            sys.exit(
                "bench/run.py: --device cuda was asked for but torch sees no CUDA device "
                f"(torch {torch.__version__}, built with CUDA {torch.version.cuda}): run on a GPU machine "
                "with a CUDA build of torch in .venv, or use --device cpu"
            )
    elif args.config in harness.GPU_ONLY_SHAPES:
        sys.exit(
            f"bench/run.py: --config {args.config} needs --device cuda (two such models do not fit here)"
        )


# --- workload and specs ----------------------------------------------------------------------------------


def token_workload(args: argparse.Namespace, tokenizer: Any) -> workload.TokenWorkload:
    vocab = harness.MODEL_SHAPES[args.config]["vocab_size"]
    if args.quick:
        groups, lengths = 2, (16.0, 0.4, 48, 24.0, 0.5, 96)
    else:
        groups, lengths = (64 if args.device == "cuda" else 4), (60.0, 0.5, 512, 200.0, 0.6, 1024)
    return workload.TokenWorkload(
        groups=args.groups or groups,
        samples=args.samples or 10,
        languages=("es", "ru", "zh", "ar", "th", "de", "ja", "bn", "fr", "sw"),
        prompt_median=lengths[0],
        prompt_sigma=lengths[1],
        prompt_max=lengths[2],
        response_median=lengths[3],
        response_sigma=lengths[4],
        response_max=lengths[5],
        vocab_size=vocab,
        bos_id=tokenizer.bos_token_id,
        eos_id=tokenizer.eos_token_id,
        seed=args.seed,
    )


def base_spec(args: argparse.Namespace, pair: harness.PairDirs | None) -> dict[str, Any]:
    return {
        "device": args.device,
        "dtype": args.dtype,
        "shape": args.config,
        "seed": args.seed,
        "pair_dirs": [str(pair.policy), str(pair.reference)] if pair else None,
        "threads": args.threads,
        "beta": args.beta,
        "repeats": args.repeats or 1,
    }


# --- the throughput rows -----------------------------------------------------------------------------


def run_token_rows(
    args: argparse.Namespace, spec: dict[str, Any], work: workload.TokenWorkload, scratch: Path
) -> list[dict[str, Any]]:
    import variants

    from xlreward.service.scoring.engine import EngineConfig

    groups = workload.token_groups(work)
    scored = workload.describe(groups)["scored_tokens"]
    results = []
    for row in (row for row in ROWS if row.name in args.rows):
        entry: dict[str, Any] = {
            "row": row.name,
            "description": row.description,
            "implemented": bool(row.variant),
        }
        results.append(entry)
        if row.variant is None:
            print(f"  {row.name:<21} not implemented", flush=True)
        elif row.bf16 and args.dtype == "bfloat16":
            entry["skipped"] = "every row already runs in bfloat16"
        else:
            dtype = "bfloat16" if row.bf16 else args.dtype
            config = row_config(row, args)
            entry.update(
                dtype=dtype,
                engine_config=config,
                **variants.work_counts(row.variant, groups, EngineConfig(**config), args.device),
            )
            row_spec = {**spec, "kind": "row", "row": row.name, "variant": row.variant, "dtype": dtype}
            row_spec.update(engine_config=config, pair_mode=row.pair)
            entry["compare_to"] = row.compare_to
            entry.update(run_one(row, {**row_spec, "workload": work.to_json()}, scratch, scored))
    return results


def row_config(row: Row, args: argparse.Namespace) -> dict[str, Any]:
    """The row's EngineConfig fields, with --max-batch-tokens / --chunk-size / --max-forward-tokens
    overriding every row's."""
    config = dict(row.config)
    for name in ("max_batch_tokens", "chunk_size", "max_forward_tokens"):
        if getattr(args, name) is not None:
            config[name] = getattr(args, name)
    return config


def run_one(row: Row, spec: dict[str, Any], scratch: Path, scored: int) -> dict[str, Any]:
    load_before = harness.load_average()
    try:
        result = harness.run_worker(spec, scratch)
    except harness.WorkerError as error:
        print(f"  {row.name:<21} FAILED\n{error}", flush=True)
        return {"error": str(error)}
    result["tokens_per_s"] = scored / result["seconds"]
    result["load_average"] = {"before": load_before, "after": harness.load_average()}
    print(
        f"  {row.name:<21} {result['seconds']:8.1f} s  {result['tokens_per_s']:9.1f} tok/s  "
        f"peak {result['peak_mb']:.0f} MB (+{result['extra_mb']:.0f})",
        flush=True,
    )
    return result


def row_flops(row: dict[str, Any], params: dict[str, int]) -> float:
    """Matmul FLOPs of a row by arithmetic, both models: 2 x layer parameters per fed position (padding
    included) + 2 x LM-head parameters per head row. Attention's T^2 term is left out."""
    return 2.0 * 2 * (params["layers"] * int(row["fed_tokens"]) + params["lm_head"] * int(row["head_rows"]))


def add_efficiency(rows: list[dict[str, Any]], report: dict[str, Any]) -> None:
    """Each row's efficiency against the run's GEMM rate, on the least work's FLOPs (``efficiency.py``);
    nothing for a saved run from before the bench measured them."""
    least = report["workload"].get("least_work")
    if least is not None:
        flops = row_flops(least, report["model"]["parameter_split"])
        efficiency.add_efficiency(rows, flops, report["machine"].get("gemm"))


def measure_gemm(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    """The machine's GEMM rate in fp32 and in every dtype a row runs in, in a worker like the rows'."""
    others = {args.dtype} | {"bfloat16" for row in ROWS if row.bf16 and row.name in args.rows}
    dtypes = ["float32", *sorted(others - {"float32"})]
    shape = harness.MODEL_SHAPES[args.config]
    spec = efficiency.gemm_spec(shape, args.device, dtypes, args.threads, args.quick)
    try:
        gemm = harness.run_worker(spec, scratch)
    except harness.WorkerError as error:
        print(f"  gemm FAILED\n{error}", flush=True)
        return {"error": str(error)}
    print(efficiency.describe_gemm(gemm), flush=True)
    return gemm


def same_pairs(rewards: list[float], base: list[float], samples: int) -> int:
    """Groups whose preference pair (argmax and argmin of the reward) is the baseline's."""
    count = 0
    for start in range(0, len(rewards), samples):
        ours, theirs = rewards[start : start + samples], base[start : start + samples]
        pick = (ours.index(max(ours)), ours.index(min(ours)))
        count += pick == (theirs.index(max(theirs)), theirs.index(min(theirs)))
    return count


# What compare_rows adds against the row each compares to (a saved report's are derived again).
COMPARED = ("speedup", "max_abs_reward_diff", "max_abs_logp_diff", "within_tolerance", "same_pairs")


def compare_rows(
    rows: list[dict[str, Any]], beta: float, params: dict[str, int], peak_tflops: float | None, samples: int
) -> None:
    """Adds speed-up against the baseline, reward differences against the row each compares to (the
    baseline, or for a LoRA-mode row its two-full-model twin) and (with a peak) MFU to each row."""
    measured = {row["row"]: row for row in rows if "seconds" in row}
    base = measured.get("baseline")
    for row in measured.values():
        row["rewards"] = [
            beta * (p - r) for p, r in zip(row["policy_logps"], row["reference_logps"], strict=True)
        ]
    for row in measured.values():
        rewards = row["rewards"]
        row["matmul_tflops"] = row_flops(row, params) / 1e12
        if peak_tflops:  # the brief's convention: ~2 x parameters FLOPs per scored token per model
            flops = row["tokens_per_s"] * 2 * (2 * params["total"])
            row["mfu"] = flops / (peak_tflops * 1e12)
        if base is not None:
            row["speedup"] = row["tokens_per_s"] / base["tokens_per_s"]
            row["work_ratio"] = row_flops(base, params) / row_flops(row, params)
        twin = measured.get(row.get("compare_to", "baseline") or "")
        if twin is None:
            continue
        twin_rewards = twin["rewards"]
        row["max_abs_reward_diff"] = max(abs(a - b) for a, b in zip(rewards, twin_rewards, strict=True))
        row["max_abs_logp_diff"] = max(
            abs(a - b)
            for key in ("policy_logps", "reference_logps")
            for a, b in zip(row[key], twin[key], strict=True)
        )
        row["within_tolerance"] = row["max_abs_reward_diff"] <= TOLERANCE
        row["same_pairs"] = same_pairs(rewards, twin_rewards, samples)
        row["groups"] = len(rewards) // samples


# --- the memory and service rows -------------------------------------------------------------------------


def run_memory_rows(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    import logp_memory

    tokens = 1024 if args.quick else 8192
    hidden = 4096 if args.device == "cuda" else 64  # memory does not depend on H; a small H is quicker
    chunk = args.chunk_size or 1024
    names = ["full", f"logsumexp-{chunk}", f"inplace-{chunk}", "inplace-auto"]
    out: dict[str, Any] = {
        "tokens": tokens,
        "hidden_size": hidden,
        "vocab": MEMORY_VOCAB,
        "dtype": args.dtype,
    }
    common = {"kind": "logp_memory", "device": args.device, "dtype": args.dtype, "seed": args.seed}
    common.update(tokens=tokens, hidden_size=hidden, vocab=MEMORY_VOCAB, threads=args.threads)
    dtype_bytes = 2 if args.dtype == "bfloat16" else 4
    measured: list[dict[str, Any]] = []
    for name in names:
        expected = logp_memory.expected_extra_mb(name, tokens, MEMORY_VOCAB, dtype_bytes)
        try:
            result = harness.run_worker({**common, "variant": name}, scratch)
        except harness.WorkerError as error:
            print(f"  memory {name:<14} FAILED\n{error}", flush=True)
            measured.append({"variant": name, "error": str(error)})
            continue
        rows = logp_memory.chunk_rows(name, tokens, MEMORY_VOCAB, dtype_bytes)
        result.update(variant=name, rows=rows, expected_extra_mb=round(expected, 1))
        print(
            f"  memory {name:<14} +{result['extra_mb']:.0f} MB (arithmetic {expected:.0f} MB), "
            f"{result['seconds']:.1f} s",
            flush=True,
        )
        measured.append(result)
    sums = [v["logp_sum"] for v in measured if "logp_sum" in v]
    out["variants"] = measured
    out["max_abs_logp_sum_diff"] = max(sums) - min(sums) if sums else None
    return out


def run_service_rows(args: argparse.Namespace, spec: dict[str, Any], scratch: Path) -> dict[str, Any]:
    import service_row

    if args.config in harness.GPU_ONLY_SHAPES and "service" not in (args.explicit_rows or []):
        why = "not run by default with a GPU-only model (it saves the pair to disk): ask --rows service"
        return {"skipped": why}
    clients = args.clients or (8 if args.quick else 64)
    per_request = 2 if args.quick else args.items_per_request
    items = workload.text_items(clients * per_request, args.seed, prompt_words=6, response_words=10)
    pair = harness.ensure_pair_on_disk(args.config, args.seed, "cpu" if args.device == "cpu" else "cuda")
    common = {**spec, "pair_dirs": [str(pair.policy), str(pair.reference)], "warmup_items": per_request}
    out: dict[str, Any] = {"clients": clients, "items_per_request": per_request, "items": len(items)}
    try:
        offline = harness.run_worker({**common, "kind": "offline_text", "items": items}, scratch)
        print(f"  offline      {len(items) / offline['seconds']:9.2f} items/s", flush=True)
        service = service_row.measure_service(
            pair, items, clients, per_request, common, scratch / "server.log"
        )
    except (harness.WorkerError, RuntimeError) as error:
        print(f"  service FAILED\n{error}", flush=True)
        return {**out, "error": str(error)}
    scored = [r for r in service["rewards"] if r is not None]
    out.update(
        offline_items_per_s=len(items) / offline["seconds"],
        service_items_per_s=len(scored) / service["seconds"],
        scored_tokens=offline["scored_tokens"],
        sequence_tokens=offline["sequence_tokens"],
        offline={k: v for k, v in offline.items() if k != "rewards"},
        service={k: v for k, v in service.items() if k != "rewards"},
    )
    out["ratio"] = out["service_items_per_s"] / out["offline_items_per_s"]
    busy = service["scheduler_batches"].get("batch_seconds_sum")
    # The server's own overhead, free of the engine's run-to-run noise that the ratio carries.
    out["models_busy_fraction"] = busy / service["seconds"] if busy is not None else None
    diffs = [abs(a - b) for a, b in zip(service["rewards"], offline["rewards"], strict=True) if a is not None]
    out["max_abs_reward_diff_vs_offline"] = max(diffs) if diffs else None
    print(
        f"  service      {out['service_items_per_s']:9.2f} items/s  = {out['ratio']:.2f} x offline",
        flush=True,
    )
    return out


# --- report ----------------------------------------------------------------------------------------------


def _fmt(value: Any, pattern: str, missing: str = "-") -> str:
    return missing if value is None else format(value, pattern)


def format_rows(rows: list[dict[str, Any]], show_mfu: bool) -> str:
    header = [
        "row",
        "dtype",
        "tokens/s",
        "x base",
        "less work x",
        "eff",
        "wall s",
        "fed tok/model",
        "head rows/model",
        "peak MB",
        "+MB",
        "max|Δreward|",
        "same pairs",
    ]
    if show_mfu:
        header.append("MFU")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        if "seconds" not in row:
            error = row.get("error")
            note = row.get("skipped") or ("FAILED: " + error.splitlines()[0] if error else "not implemented")
            cells = [row["row"], "", note] + [""] * (len(header) - 3)
        else:
            cells = [
                row["row"],
                "bf16" if row["dtype"] == "bfloat16" else "fp32",
                f"{row['tokens_per_s']:.1f}",
                _fmt(row.get("speedup"), ".2f") + ("x" if row.get("speedup") else ""),
                _fmt(row.get("work_ratio"), ".2f") + ("x" if row.get("work_ratio") else ""),
                _fmt(row.get("efficiency"), ".2f"),
                f"{row['seconds']:.1f}",
                f"{row['fed_tokens']:,}",
                f"{row['head_rows']:,}",
                f"{row['peak_mb']:.0f}",
                f"{row['extra_mb']:.0f}",
                _fmt(row.get("max_abs_reward_diff"), ".2e"),
                f"{row['same_pairs']}/{row['groups']}" if "same_pairs" in row else "-",
            ]
            if show_mfu:
                cells.append(_fmt(row.get("mfu"), ".1%"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_memory(memory: dict[str, Any]) -> str:
    lines = [
        f"Log-prob stage alone: {memory['tokens']} scored tokens, vocab {memory['vocab']}, "
        f"H={memory['hidden_size']}, {memory['dtype']}",
        "| variant | logit rows at once | extra MB (measured) | extra MB (arithmetic) | seconds |",
        "|---|---|---|---|---|",
    ]
    for v in memory["variants"]:
        if "error" in v:
            lines.append(f"| {v['variant']} | | FAILED | | |")
            continue
        lines.append(
            f"| {v['variant']} | {v['rows']} | {v['extra_mb']:.0f} | {v['expected_extra_mb']:.0f} | "
            f"{v['seconds']:.1f} |"
        )
    return "\n".join(lines)


def format_service(service: dict[str, Any]) -> str:
    if "ratio" not in service:
        return f"Service row: {service.get('skipped') or service.get('error', 'not run')}"
    s = service["service"]
    return "\n".join(
        [
            f"Service: {service['clients']} concurrent clients x {service['items_per_request']} items per "
            f"request, {service['items']} text items ({service['scored_tokens']} scored tokens)",
            "| path | items/s | ratio | p50 latency s | p95 latency s | max |Δreward| vs offline |",
            "|---|---|---|---|---|---|",
            f"| offline engine.score | {service['offline_items_per_s']:.2f} | 1.00 | | | |",
            f"| HTTP /reward | {service['service_items_per_s']:.2f} | {service['ratio']:.2f} | "
            f"{_fmt(s['latency_p50_s'], '.2f')} | {_fmt(s['latency_p95_s'], '.2f')} | "
            f"{_fmt(service['max_abs_reward_diff_vs_offline'], '.1e')} |",
            _scheduler_line(s.get("scheduler_batches", {}), service["sequence_tokens"], s["seconds"]),
        ]
    )


def _scheduler_line(batches: dict[str, float], sequence_tokens: int, seconds: float) -> str:
    count = batches.get("batch_items_count")
    if not count:
        return ""
    busy = batches.get("batch_seconds_sum")
    return (
        f"server scheduler: {count:.0f} batches, {batches['batch_items_sum'] / count:.1f} items each on "
        f"average, {batches['batch_padded_tokens_sum']:.0f} padded tokens for {sequence_tokens} real ones"
        + (f"; the models busy {busy:.1f} s of the {seconds:.1f} s" if busy is not None else "")
    )


def targets(rows: list[dict[str, Any]], memory: dict[str, Any] | None) -> dict[str, Any]:
    # Rows that score the baseline's pair (a LoRA row's speed is another pair's; its rewards have a twin).
    measured = [r for r in rows if "speedup" in r and r["row"] != "baseline" and "max_abs_reward_diff" in r]
    measured = [r for r in measured if r.get("compare_to", "baseline") == "baseline"]
    out: dict[str, Any] = {"efficiency_target": efficiency.EFFICIENCY_TARGET, "tolerance": TOLERANCE}
    for label, chosen in (
        ("fp32", [r for r in measured if r["dtype"] == "float32"]),
        ("any_dtype", measured),
    ):
        # the most efficient (each against its own dtype's GEMM rate); the fastest in a run without them
        best = max(chosen, key=lambda r: (r.get("efficiency", 0.0), r["speedup"]), default=None)
        if best:
            eff = best.get("efficiency")
            out[f"best_{label}"] = {
                "row": best["row"],
                "speedup": round(best["speedup"], 3),
                "efficiency": eff and round(eff, 3),
            }
            out[f"efficiency_met_{label}"] = eff and eff >= efficiency.EFFICIENCY_TARGET
    fp32 = [r for r in measured if r["dtype"] == "float32"]
    out["all_fp32_rows_within_tolerance"] = all(r["within_tolerance"] for r in fp32) if fp32 else None
    if memory:
        by_name = {v["variant"]: v for v in memory["variants"] if "extra_mb" in v}
        default = by_name.get("inplace-auto")
        out["memory_target_mb"] = MEMORY_TARGET_MB
        if default:
            out["memory_engine_default_extra_mb"] = default["extra_mb"]
            out["memory_met_by_engine_default"] = default["extra_mb"] < MEMORY_TARGET_MB
        out["memory_met_by"] = sorted(name for name, v in by_name.items() if v["extra_mb"] < MEMORY_TARGET_MB)
    return out


# --- main ------------------------------------------------------------------------------------------------


def worker_main(spec_path: str, out_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    if spec["kind"] == "row":
        import variants

        result = variants.run_row(spec)
    elif spec["kind"] == "gemm":
        result = efficiency.run_gemm(spec)
    elif spec["kind"] == "logp_memory":
        import logp_memory

        result = logp_memory.run_logp_memory(spec)
    else:
        import service_row

        result = service_row.run_offline_text(spec)
    Path(out_path).write_text(json.dumps(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker_main(*args.worker)
    if args.report:
        return report_main(Path(args.report))
    args.explicit_rows = args.rows
    args.rows = args.rows or ALL_ROWS
    args.dtype = args.dtype or ("bfloat16" if args.device == "cuda" else "float32")
    check_setup(args)
    name = args.name or f"{args.config}-{args.device}-{'quick' if args.quick else 'full'}"
    started = time.perf_counter()
    scratch = harness.CACHE / "scratch"
    report = prepare(args)
    spec = base_spec(args, report.pop("_pair"))
    work = report.pop("_work")
    report["machine"]["gemm"] = measure_gemm(args, scratch)
    print(f"rows ({report['workload']['items']} items, {report['workload']['scored_tokens']} scored tokens):")
    rows = run_token_rows(args, spec, work, scratch)
    split, samples = report["model"]["parameter_split"], report["workload"]["samples"]
    compare_rows(rows, args.beta, split, report.get("peak_tflops"), samples)
    add_efficiency(rows, report)
    memory = run_memory_rows(args, scratch) if "memory" in args.rows else None
    service = run_service_rows(args, spec, scratch) if "service" in args.rows else None
    report.update(rows=rows, logp_memory=memory, service=service, targets=targets(rows, memory))
    report["total_seconds"] = round(time.perf_counter() - started, 1)
    print_report(report, args)
    harness.RESULTS.mkdir(parents=True, exist_ok=True)
    path = harness.RESULTS / f"{name}.json"
    path.write_text(json.dumps(report, indent=1))
    print(f"\nwrote {path.relative_to(harness.REPO)} ({report['total_seconds']:.0f} s)")
    return 0


def report_main(path: Path) -> int:
    """Re-derives the comparisons and targets of a saved run (its rows keep every log-prob) and prints it:
    a run on a GPU machine can be read again anywhere."""
    report = json.loads(path.read_text())
    rows = report["rows"]
    split, samples = report["model"]["parameter_split"], report["workload"]["samples"]
    current = {row.name: row for row in ROWS}
    for row in rows:
        for stale in COMPARED:
            row.pop(stale, None)
        if row["row"] in current:
            row["compare_to"] = current[row["row"]].compare_to
    compare_rows(rows, report["settings"]["beta"], split, report.get("peak_tflops"), samples)
    add_efficiency(rows, report)
    report["targets"] = targets(rows, report.get("logp_memory"))
    print_report(report, argparse.Namespace())
    return 0


def prepare(args: argparse.Namespace) -> dict[str, Any]:
    """Builds (or finds cached) the tokenizer and the model pair; describes the machine and workload."""
    tokenizer = harness.load_tokenizer()
    pair = harness.ensure_pair_on_disk(args.config, args.seed) if args.device == "cpu" else None
    split = harness.parameter_count(args.config)
    params = split["total"]
    shape = harness.MODEL_SHAPES[args.config]
    print(f"model {args.config}: {params / 1e6:.1f}M parameters per model ({shape})")
    print(
        f"  layers {split['layers'] / 1e6:.1f}M, lm_head {split['lm_head'] / 1e6:.1f}M, embedding "
        f"{split['embedding'] / 1e6:.1f}M"
    )
    print(f"dtype {args.dtype}, device {args.device}")
    work = token_workload(args, tokenizer)
    groups = workload.token_groups(work)
    described = {**workload.describe(groups), "least_work": efficiency.least_work(groups)}
    peak = args.peak_tflops or (790.0 if args.device == "cuda" else None)
    return {
        "command": " ".join([Path(sys.executable).name, "bench/run.py", *sys.argv[1:]]),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "quick": args.quick,
        "machine": {**harness.machine_info(args.device), "load_average_at_start": harness.load_average()},
        "model": {
            "config": args.config,
            "shape": shape,
            "parameters": params,
            "parameter_split": split,
            "pair_dirs": pair
            and [str(pair.policy.relative_to(harness.REPO)), str(pair.reference.relative_to(harness.REPO))],
        },
        "settings": {
            "device": args.device,
            "dtype": args.dtype,
            "beta": args.beta,
            "seed": args.seed,
            "chunk_size": args.chunk_size,
            "max_batch_tokens": args.max_batch_tokens,
            "max_forward_tokens": args.max_forward_tokens,
            "threads": args.threads,
            "baseline_batch_size": 3,
        },
        "workload": {**work.to_json(), **described},
        "peak_tflops": peak,
        "_pair": pair,
        "_work": work,
    }


def print_report(report: dict[str, Any], args: argparse.Namespace) -> None:
    m, w = report["machine"], report["workload"]
    print(
        f"\n{report['model']['config']} ({report['model']['parameters'] / 1e6:.1f}M params x 2 models), "
        f"{m['cpu_count']} CPUs ({m['cpu_model']}, bf16: {','.join(m['cpu_bf16_flags']) or 'none'}), "
        f"torch {m['torch']}, {m['torch_threads']} threads, "
        f"load average at start {m['load_average_at_start']}"
    )
    print(
        f"workload: {w['groups']} prompts x {w['samples']} samples = {w['items']} items, "
        f"{w['scored_tokens']} scored tokens, {w['sequence_tokens']} sequence tokens, seed {w['seed']}"
    )
    least = w.get("least_work")
    if least:
        flops = row_flops(least, report["model"]["parameter_split"])
        print(
            f"least work per model: {least['fed_tokens']:,} fed positions, {least['head_rows']:,} head rows "
            f"= {flops / 1e9:.1f} GFLOP for both models (eff = that / wall s / the dtype's GEMM rate)"
        )
    if "gemm" in m:
        print(efficiency.describe_gemm(m["gemm"]))
    print()
    print(format_rows(report["rows"], report.get("peak_tflops") is not None))
    if report["logp_memory"]:
        print("\n" + format_memory(report["logp_memory"]))
    if report["service"]:
        print("\n" + format_service(report["service"]))
    print("\ntargets: " + json.dumps(report["targets"]))


if __name__ == "__main__":
    sys.exit(main())
