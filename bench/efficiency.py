"""Each row's efficiency: the FLOP rate it achieves on the least work the workload needs, as a fraction of
the machine's GEMM rate measured in the same run (same device, same torch thread count, the row's dtype).

    least work  = 2 models x (2 x layer parameters x least fed positions + 2 x LM-head parameters x scored
                  tokens), per model: each group's shared prompt once, then each response's positions up
                  to the last one that predicts a scored token (no padding); attention's T^2 term left out
    efficiency  = least work / the row's wall seconds / the GEMM rate of the row's dtype

The GEMM rate is the best of a few products timed in a fresh worker (``run.py --worker``, like the rows):
the model's MLP up and down projections at a batch of positions, as ``nn.Linear`` runs them (x @ W^T),
and a large square one; each timed ``REPEATS`` times after a warm-up, the fastest kept. The goal is an
efficiency of ``EFFICIENCY_TARGET``: the engine as fast as the machine's matmuls allow, on the least work.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import harness

EFFICIENCY_TARGET = 0.8
REPEATS = 3
# What add_efficiency writes into a row (a saved report's are derived again).
ROW_FIELDS = ("least_work_flops", "achieved_gflops", "gemm_gflops", "efficiency")


# --- the least work ------------------------------------------------------------------------------------


def least_work(groups: list[list[Any]]) -> dict[str, int]:
    """Per model, the fewest backbone positions and LM-head rows that score ``groups`` (lists of
    TokenizedItems sharing their prompt) exactly: the shared prompt once per group, each response's
    positions up to the last that predicts a scored token (token j is read at position j - 1), the LM head
    at scored tokens only.

    >>> from types import SimpleNamespace as Item
    >>> group = [Item(input_ids=(1, 5, 6, 7, 8), score_start=3, score_end=5),
    ...          Item(input_ids=(1, 5, 6, 9), score_start=3, score_end=4)]
    >>> least_work([group])  # the prompt (3) once, then positions 3 (first item) and none (second)
    {'fed_tokens': 4, 'head_rows': 3}
    """
    fed = 0
    for group in groups:
        prompt = shared_prompt(group)
        fed += prompt + sum(max(item.score_end - 1 - prompt, 0) for item in group)
    head = sum(item.score_end - item.score_start for group in groups for item in group)
    return {"fed_tokens": fed, "head_rows": head}


def shared_prompt(items: Sequence[Any]) -> int:
    """Tokens all ``items`` share at their start, at most up to any item's first scored token."""
    first = items[0].input_ids
    limit = min(item.score_start for item in items)
    return next((i for i in range(limit) if any(item.input_ids[i] != first[i] for item in items)), limit)


def add_efficiency(rows: list[dict[str, Any]], least_flops: float, gemm: dict[str, Any] | None) -> None:
    """Adds ``ROW_FIELDS`` to every measured row: the least work's FLOPs (both models), the rate the row
    achieves on it, and (where the run measured a GEMM rate for the row's dtype) that rate and the ratio."""
    rates = (gemm or {}).get("dtypes", {})
    for row in rows:
        for stale in ROW_FIELDS:
            row.pop(stale, None)
        if "seconds" not in row:
            continue
        row["least_work_flops"] = least_flops
        row["achieved_gflops"] = least_flops / row["seconds"] / 1e9
        rate = rates.get(row["dtype"], {}).get("gflops")
        if rate:
            row["gemm_gflops"] = rate
            row["efficiency"] = row["achieved_gflops"] / rate


# --- the GEMM rate -------------------------------------------------------------------------------------


def gemm_spec(
    shape: dict[str, Any], device: str, dtypes: list[str], threads: int | None, quick: bool
) -> dict[str, Any]:
    """The worker spec: (name, m, k, n) products, m x k @ k x n; ``tokens`` positions at once, as a batch of
    the engine's CPU budget holds, and a square product large enough for the machine's rate."""
    tokens = 4096 if device == "cuda" else 256 if quick else 1024
    square = 8192 if device == "cuda" else 1024 if quick else 2048
    hidden, inner = shape["hidden_size"], shape["intermediate_size"]
    return {
        "kind": "gemm",
        "device": device,
        "dtypes": dtypes,
        "threads": threads,
        "shapes": [
            ["mlp-up", tokens, hidden, inner],
            ["mlp-down", tokens, inner, hidden],
            ["square", square, square, square],
        ],
        "repeats": REPEATS,
        "min_seconds": 0.05 if quick else 0.2,
    }


def run_gemm(spec: dict[str, Any]) -> dict[str, Any]:
    """Worker: each dtype's GFLOP/s per product, and its best (the rate rows are compared with)."""
    import torch

    harness.set_threads(spec.get("threads"))
    started = time.perf_counter()
    torch.manual_seed(0)
    out: dict[str, Any] = {}
    with torch.inference_mode():
        for name in spec["dtypes"]:
            shapes = []
            for label, m, k, n in spec["shapes"]:
                rate = 2 * m * k * n / _seconds_per_product(m, k, n, getattr(torch, name), spec) / 1e9
                shapes.append({"name": label, "m": m, "k": k, "n": n, "gflops": rate})
            out[name] = {"gflops": max(s["gflops"] for s in shapes), "shapes": shapes}
    return {
        "dtypes": out,
        "torch_threads": torch.get_num_threads(),
        "repeats": spec["repeats"],
        "seconds": round(time.perf_counter() - started, 2),
    }


def _seconds_per_product(m: int, k: int, n: int, dtype: Any, spec: dict[str, Any]) -> float:
    """Seconds per (m, k) @ (k, n) product: after a warm-up call, the fastest of ``repeats`` runs of as
    many calls as last ``min_seconds`` (other processes only ever add time)."""
    import torch

    device = spec["device"]
    x = torch.randn(m, k, dtype=dtype, device=device)  # (m, k) activations
    weight = torch.randn(n, k, dtype=dtype, device=device)  # (n, k), stored as nn.Linear stores it
    out = torch.empty(m, n, dtype=dtype, device=device)  # (m, n)

    def run(calls: int) -> float:
        harness.synchronize(device)
        start = time.perf_counter()
        for _ in range(calls):
            torch.mm(x, weight.t(), out=out)
        harness.synchronize(device)
        return time.perf_counter() - start

    run(1)  # library set-up, thread pool start-up, caches
    calls = max(1, math.ceil(float(spec["min_seconds"]) / max(run(1), 1e-9)))
    return min(run(calls) for _ in range(spec["repeats"])) / calls


def describe_gemm(gemm: dict[str, Any]) -> str:
    """One line per dtype: the rate and each product's."""
    if "dtypes" not in gemm:
        return f"GEMM rate: {gemm.get('error', 'not measured').splitlines()[0]}"
    lines = []
    for name, rate in gemm["dtypes"].items():
        shapes = ", ".join(
            f"{s['name']} {s['m']}x{s['k']}x{s['n']}: {s['gflops']:.1f}" for s in rate["shapes"]
        )
        lines.append(
            f"GEMM {name}: {rate['gflops']:.1f} GFLOP/s, {gemm['torch_threads']} threads (best of: {shapes})"
        )
    return "\n".join(lines)
