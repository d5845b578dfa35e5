"""Which length-controlled win rate (LC) ``xlreward eval`` reports, and alpaca_eval's own GLM as one of them.

- ``minimal`` (the default): ``winrate.win_rate``, our numpy fit of alpaca_eval's
  ``length_controlled_minimal`` GLM (the length term only). No extra dependency, no download, the same
  number wherever it runs.
- ``alpaca_eval_v1``: alpaca_eval's default, ``length_controlled_v1``, computed by alpaca_eval itself
  (``get_length_controlled_winrate``; alpaca_eval is in the ``dev`` extra). Its GLM adds an instruction
  difficulty term and regularisation that both come from data alpaca_eval downloads from the Hugging Face
  hub (the ``tatsu-lab/alpaca_eval`` dataset's ``df_gamed.csv``), made for AlpacaEval's own 805 instructions:

  - the difficulty of each instruction was estimated once from the leaderboard's many models and is shipped
    as a number per AlpacaEval instruction; alpaca_eval looks it up by the annotation's row position, so
    row i of a language (its i-th instruction) gets the difficulty of AlpacaEval instruction i. It means
    something only when a language's instructions are AlpacaEval's, in AlpacaEval's order (a translation of
    the set, say); for other instructions it is an unrelated number, and more than 805 cannot be looked up.
  - the fit adds two "gamed" baselines' GPT-4-judged annotations of those instructions at weight 0.1 each,
    which pull the length and difficulty slopes towards theirs (``regularize_to_baseline_lambda`` 0.2).
  - like ``minimal`` in alpaca_eval, it is an L1-penalised logistic regression whose penalty is chosen by
    5-fold cross-validation grouped by instruction (so at least 5 instructions), ties are soft labels of
    1/2, and LC is the mean over instructions of the prediction at zero length difference.

Nothing heavy is imported here at module level: the CLI reads the names to build ``--lc-variant``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

LCVariant = Literal["minimal", "alpaca_eval_v1"]
LC_VARIANTS: tuple[LCVariant, ...] = ("minimal", "alpaca_eval_v1")
DEFAULT_LC_VARIANT: LCVariant = "minimal"
DESCRIPTIONS: dict[LCVariant, str] = {
    "minimal": "alpaca_eval's length_controlled_minimal GLM (length term only), our numpy fit",
    "alpaca_eval_v1": "alpaca_eval's default length_controlled_v1 GLM (length + AlpacaEval instruction "
    "difficulty, regularised to its gamed baselines), computed by alpaca_eval",
}
ALPACA_EVAL_GLM = {"alpaca_eval_v1": "length_controlled_v1"}  # our name -> alpaca_eval's glm_name
# Where alpaca_eval's GLM reads instruction difficulties and the gamed baselines' annotations.
DIFFICULTY_REPO, DIFFICULTY_FILE = "tatsu-lab/alpaca_eval", "df_gamed.csv"
CV_FOLDS = 5  # alpaca_eval's GLM_INFO kwargs n_splits: GroupKFold needs at least this many instructions


class AlpacaEvalUnavailable(ValueError):
    """The variant needs alpaca_eval (or its data) and cannot have it; the message says how to fix that."""


def require_alpaca_eval() -> None:
    """Imports alpaca_eval's GLM module (pandas, scikit-learn; no torch), or says how to install it."""
    try:
        with _quiet_alpaca_eval():
            import alpaca_eval.metrics.glm_winrate  # noqa: F401
    except ImportError as error:
        raise AlpacaEvalUnavailable(
            f"--lc-variant alpaca_eval_v1 needs alpaca_eval, which could not be imported ({error}); install "
            "it with `pip install 'alpaca_eval==0.6.6' 'setuptools<82'` (or xlreward[dev]), or use "
            "--lc-variant minimal"
        ) from None


def alpaca_eval_instruction_count() -> int:
    """How many instructions alpaca_eval has a difficulty for (fetched from the hub or its cache now, so that
    a machine without the data fails before sampling rather than after)."""
    import pandas as pd
    from alpaca_eval import constants
    from alpaca_eval.metrics import glm_winrate

    try:  # the same call as alpaca_eval's _get_featurized_data, so the file lands where it will look
        path = glm_winrate.hf_hub_download(
            repo_id=DIFFICULTY_REPO,
            filename=DIFFICULTY_FILE,
            repo_type="dataset",
            token=constants.DATASETS_TOKEN,
            force_download=constants.DATASETS_FORCE_DOWNLOAD,
            cache_dir=constants.DEFAULT_CACHE_DIR,
        )
    except Exception as error:  # offline and not cached, or no network: hub errors have no common base
        raise AlpacaEvalUnavailable(
            f"--lc-variant alpaca_eval_v1 reads the instruction difficulties alpaca_eval keeps in the hub "
            f"dataset {DIFFICULTY_REPO} ({DIFFICULTY_FILE}) and could not get them ({error}); run once "
            "online (it is cached after), or use --lc-variant minimal"
        ) from None
    return int(pd.read_csv(path, usecols=["index"])["index"].nunique())


def check_instruction_counts(counts: dict[str, int], known: int) -> None:
    """Every language has between CV_FOLDS and ``known`` instructions (see the module docstring)."""
    for language, count in counts.items():
        if not CV_FOLDS <= count <= known:
            raise AlpacaEvalUnavailable(
                f"--lc-variant alpaca_eval_v1: {language} has {count} instructions; alpaca_eval's GLM "
                f"needs {CV_FOLDS} to {known} (its cross-validation folds, and the AlpacaEval instructions "
                "it has a difficulty for, looked up by position); use --limit or --lc-variant minimal"
            )


def alpaca_eval_annotations(
    result: Sequence[float], model_outputs: Sequence[str], baseline_outputs: Sequence[str]
) -> list[dict[str, Any]]:
    """Our outcomes (1 model wins, 0 loses, 1/2 tie) as alpaca_eval's annotations: output_1 is the
    baseline's, output_2 the model's, preference 1 when the baseline wins, 2 when the model does, 1.5 a tie.
    The generators are fixed labels: alpaca_eval answers 50 when the two names are equal (a model against
    itself), which two folders of the same name must not trigger."""
    return [
        {
            "output_1": baseline,
            "output_2": model,
            "generator_1": "baseline",
            "generator_2": "model",
            "preference": 1.0 + float(outcome),
        }
        for outcome, model, baseline in zip(result, model_outputs, baseline_outputs, strict=True)
    ]


def alpaca_eval_lc(
    result: Sequence[float],
    model_outputs: Sequence[str],
    baseline_outputs: Sequence[str],
    glm_name: str = "length_controlled_v1",
) -> float:
    """LC in percent as alpaca_eval's ``get_length_controlled_winrate`` computes it (lengths in characters,
    as ours), nothing saved; row i is instruction i for the difficulty lookup."""
    from alpaca_eval.metrics.glm_winrate import get_length_controlled_winrate

    annotations = alpaca_eval_annotations(result, model_outputs, baseline_outputs)
    with _quiet_alpaca_eval():
        metrics = get_length_controlled_winrate(
            annotations, glm_name=glm_name, save_weights_dir=None, is_warn_extreme_changes=False
        )
    return float(metrics["length_controlled_winrate"])


@contextmanager
def _quiet_alpaca_eval() -> Iterator[None]:
    """Without the warnings alpaca_eval 0.6.6's own code raises and a user cannot act on: its pkg_resources
    import, and the scikit-learn arguments it passes that scikit-learn 1.10 renames (pinned below that)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
        warnings.filterwarnings("ignore", category=FutureWarning, module="sklearn")
        yield
