"""alpaca_eval's GLM data, offline: a synthetic ``df_gamed.csv`` in the shape its GLM reads, and a way to
hand it to alpaca_eval instead of the hub download.

alpaca_eval 0.6.6 downloads ``df_gamed.csv`` (the ``tatsu-lab/alpaca_eval`` hub dataset) inside
``get_length_controlled_winrate`` for every variant: the instruction difficulty per AlpacaEval
instruction (``index``) and two "gamed" baselines' annotations (``not_gamed_baseline`` False) that
``length_controlled_v1`` is regularised towards. Tests never reach the network, so the download is
pointed at this file; everything else, the GLM included, is alpaca_eval's own code.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

INSTRUCTIONS = 805  # AlpacaEval's evaluation set


def difficulties(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 1, INSTRUCTIONS)


def write_gamed_csv(path: Path, seed: int = 0) -> Path:
    """Two gamed baselines (one concise, one verbose) on every instruction, preferences drawn from a GLM with
    length and difficulty terms (preference in [0, 1]: the gamed output's chance to win)."""
    rng = np.random.default_rng(seed + 1)
    difficulty = np.tile(difficulties(seed), 2)
    delta = np.concatenate([rng.normal(1, 1, INSTRUCTIONS), rng.normal(-1, 1, INSTRUCTIONS)])
    p = 1 / (1 + np.exp(-(0.8 * np.tanh(delta) - 0.5 * difficulty)))
    frame = pd.DataFrame(
        {
            "model": np.repeat(["gamed_concise", "gamed_verbose"], INSTRUCTIONS),
            "index": np.tile(np.arange(INSTRUCTIONS), 2),
            "preference": (rng.random(2 * INSTRUCTIONS) < p).astype(float),
            "std_delta_len": delta,
            "instruction_difficulty": difficulty,
            "not_gamed_baseline": False,
        }
    )
    frame.to_csv(path, index=False)
    return path


def use_local_difficulties(monkeypatch: pytest.MonkeyPatch, folder: Path) -> Path:
    """alpaca_eval's hub download answers with a synthetic df_gamed.csv in ``folder`` (its only network use
    in the GLM); returns the file."""
    from alpaca_eval.metrics import glm_winrate

    path = write_gamed_csv(folder / "df_gamed.csv")
    monkeypatch.setattr(glm_winrate, "hf_hub_download", lambda **_: str(path))
    return path
