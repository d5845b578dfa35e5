"""``xlreward eval``: generate on held-out instructions per language, judge, and compare with a baseline.

For each language: the model's outputs (sampled here, one per instruction, or read from a folder of
alpaca_eval outputs such as ``xlreward best-of-n`` writes) and the baseline's (sampled from a baseline
model, or read from a folder an earlier ``xlreward eval`` wrote) are scored by one judge;
WR and LC come from ``winrate`` (LC: the ``lc_variant`` asked for, see ``lc_variants``). Written to OUT:

    OUT/<language>/model_outputs.json   alpaca_eval's format: [{"instruction", "output", "generator",
                                        "dataset"}], so alpaca_eval can judge the same outputs
    OUT/<language>/judged.jsonl         per instruction: id, both outputs, both scores, the outcome
    OUT/results.json                    per language: mean score, mean length, WR, LC, wins/ties/losses;
                                        and which LC (``length_controlled_variant``, see ``lc_variants``)

(``xlreward eval`` adds OUT/win_rates.png, ``report.plot_results``.) Without a baseline only the model's
mean judge score is reported. Outputs that are already in OUT (same instructions, same model) are reused,
so an interrupted evaluation resumes. With ``progress``, tqdm bars on stderr follow sampling and judging.

The model and the baseline are folders or Hugging Face hub ids (``revision``, ``baseline_revision``), each
resolved to a folder when its outputs are sampled (``model_source.resolve_model``: the hub cache, fetched
unless ``HF_HUB_OFFLINE`` is set) and loaded from that folder only; remote code runs only with
``trust_remote_code``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from xlreward.evaluation.judges import Judge, Judged
from xlreward.evaluation.lc_variants import DEFAULT_LC_VARIANT, LCVariant
from xlreward.evaluation.sampling import SamplingSettings
from xlreward.evaluation.winrate import WinRate, win_rate
from xlreward.worker.annotate import write_atomically

OUTPUTS_FILE = "model_outputs.json"
JUDGE_CHUNK = 64  # outputs per judge call, so the judging bar moves (a multiple of the classifier's batch)


@dataclass(frozen=True)
class EvalOptions:
    instructions: Sequence[Path]
    languages: Sequence[str]
    model: str | Path | None  # a folder or a hub id; None: ``outputs`` holds the outputs to judge
    out: Path
    name: str | None = None  # the generator's name in model_outputs.json; default: the model's last part
    baseline: str | Path | None = None  # a folder or a hub id
    baseline_outputs: Path | None = None
    outputs: Path | None = None  # <language>/model_outputs.json to judge instead of sampling ``model``
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    device: str = "cpu"
    limit: int | None = None  # at most this many instructions per language
    revision: str | None = None  # of ``model``, when it is a hub id
    baseline_revision: str | None = None  # of ``baseline``, when it is a hub id
    trust_remote_code: bool = False
    lc_variant: LCVariant = DEFAULT_LC_VARIANT
    progress: bool = False  # tqdm bars on stderr (shown on a terminal only)

    def __post_init__(self) -> None:
        if (self.model is None) == (self.outputs is None):
            raise ValueError("give a model to sample or a folder of outputs to judge, not both")

    @property
    def generator(self) -> str:
        return self.name or Path(self.model or self.outputs or "outputs").name


@dataclass(frozen=True)
class Prompt:
    id: str
    language: str
    instruction: str
    english_instruction: str


def load_prompts(options: EvalOptions) -> dict[str, list[Prompt]]:
    """The held-out instructions per language (validated like annotation inputs: ids aligned to English)."""
    from xlreward.worker.instructions import load_instructions
    from xlreward.worker.settings import DEFAULT_LANGUAGE_NAMES

    loaded = load_instructions(
        options.instructions, languages=list(options.languages), known_languages=DEFAULT_LANGUAGE_NAMES
    )
    prompts: dict[str, list[Prompt]] = {language: [] for language in options.languages}
    for unit_id, language in loaded.units(options.languages):
        prompts[language].append(
            Prompt(unit_id, language, loaded.instruction(unit_id, language), loaded.english(unit_id))
        )
    if options.limit is not None:
        prompts = {language: items[: options.limit] for language, items in prompts.items()}
    return prompts


def generate_outputs(
    model: str | Path,
    generator: str,
    prompts: dict[str, list[Prompt]],
    out: Path,
    options: EvalOptions,
    *,
    revision: str | None = None,
    what: str = "--model",
) -> dict[str, list[str]]:
    """The outputs of ``model`` (a folder, or a hub id at ``revision``) for every prompt, from OUT if they are
    there, else sampled and written. ``what`` names the model in messages."""
    outputs: dict[str, list[str]] = {}
    missing = {}
    for language, items in prompts.items():
        cached = read_outputs(out / language / OUTPUTS_FILE, items, generator)
        if cached is None:
            missing[language] = items
        else:
            outputs[language] = cached
    if missing:
        lm, tokenizer = _load(model, options, revision=revision, what=what)
        from xlreward.evaluation.sampling import sample

        total = sum(len(items) for items in missing.values())
        with _progress(options, total, f"sampling {generator}", "prompt") as advance:
            for language, items in missing.items():
                texts = sample(lm, tokenizer, [p.instruction for p in items], options.sampling, advance)
                outputs[language] = [group[0] for group in texts]
                write_outputs(out / language / OUTPUTS_FILE, items, outputs[language], generator)
    return outputs


def read_outputs(path: Path, items: Sequence[Prompt], generator: str | None) -> list[str] | None:
    """The outputs in ``path`` if they answer exactly ``items`` (and come from ``generator``, if given)."""
    if not path.is_file():
        return None
    records = json.loads(path.read_text(encoding="utf-8"))
    if [r["instruction"] for r in records] != [p.instruction for p in items]:
        return None
    if generator is not None and any(r.get("generator") != generator for r in records):
        return None
    return [r["output"] for r in records]


def write_outputs(path: Path, items: Sequence[Prompt], outputs: Sequence[str], generator: str) -> None:
    records = [
        {
            "instruction": p.instruction,
            "output": o,
            "generator": generator,
            "dataset": f"xlreward-{p.language}",
            "id": p.id,
        }
        for p, o in zip(items, outputs, strict=True)
    ]
    _write_json(path, records)


def evaluate(
    options: EvalOptions, judge: Judge, prompts: dict[str, list[Prompt]] | None = None
) -> dict[str, Any]:
    """Samples (or reads) both sides' outputs, judges them, writes OUT and returns the summary;
    ``prompts``: ``load_prompts(options)``, when the caller has loaded them already."""
    prompts = load_prompts(options) if prompts is None else prompts
    compared = options.baseline is not None or options.baseline_outputs is not None
    if compared:
        check_lc_variant(options.lc_variant, prompts)  # before sampling: fail in seconds, not after hours
    if options.model is None:
        assert options.outputs is not None
        model_outputs = stored_outputs(options.outputs, prompts, "--outputs")
    else:
        model_outputs = generate_outputs(
            options.model, options.generator, prompts, options.out, options, revision=options.revision
        )
    baseline_outputs = _baseline_outputs(options, prompts)
    judged = sum(len(items) for items in prompts.values()) * (2 if compared else 1)
    with _progress(options, judged, f"judging ({judge.name})", "output") as advance:
        results = {
            language: _language_result(
                options,
                _Judging(judge, language, advance),
                items,
                model_outputs[language],
                None if baseline_outputs is None else baseline_outputs[language],
            )
            for language, items in prompts.items()
        }
    summary = {
        "model": str(options.model or options.outputs),
        "generator": options.generator,
        "baseline": str(options.baseline or options.baseline_outputs) if compared else None,
        "judge": judge.name,
        "length_controlled_variant": options.lc_variant if compared else None,
        "sampling": asdict(options.sampling),
        "languages": results,
    }
    _write_json(options.out / "results.json", summary)
    return summary


def check_lc_variant(variant: LCVariant, prompts: dict[str, list[Prompt]]) -> None:
    """A variant computed by alpaca_eval can be: alpaca_eval imports, its data is here (or fetched now) and
    every language has an instruction count its GLM takes. Raises AlpacaEvalUnavailable (a ValueError)."""
    if variant == "minimal":
        return
    from xlreward.evaluation.lc_variants import (
        alpaca_eval_instruction_count,
        check_instruction_counts,
        require_alpaca_eval,
    )

    require_alpaca_eval()
    counts = {language: len(items) for language, items in prompts.items()}
    check_instruction_counts(counts, alpaca_eval_instruction_count())


@dataclass(frozen=True)
class _Judging:
    """One language's judging: scores in chunks of JUDGE_CHUNK, advancing the judging bar after each."""

    judge: Judge
    language: str
    advance: Callable[[int], object]

    def score(self, items: Sequence[Prompt], outputs: Sequence[str]) -> list[float]:
        from xlreward.worker.settings import DEFAULT_LANGUAGE_NAMES

        judged = _judged(items, outputs, DEFAULT_LANGUAGE_NAMES[self.language])
        scores: list[float] = []
        for start in range(0, len(judged), JUDGE_CHUNK):
            chunk = judged[start : start + JUDGE_CHUNK]
            scores += self.judge.score(chunk)
            self.advance(len(chunk))
        return scores


def _language_result(
    options: EvalOptions,
    judging: _Judging,
    items: Sequence[Prompt],
    outputs: Sequence[str],
    others: Sequence[str] | None,
) -> dict[str, Any]:
    """One language's row of results.json (and its judged.jsonl, with a baseline)."""
    scores = judging.score(items, outputs)
    entry: dict[str, Any] = {
        "instructions": len(items),
        "mean_score": round(sum(scores) / len(scores), 4),
        "mean_length": round(sum(len(o) for o in outputs) / len(items), 1),
    }
    if others is None:
        return entry
    base = judging.score(items, others)
    rate = length_controlled(options.lc_variant, scores, base, outputs, others)
    entry |= {"baseline_mean_score": round(sum(base) / len(base), 4), **rate.to_json()}
    _write_judged(options.out / judging.language / "judged.jsonl", items, outputs, others, scores, base)
    return entry


def length_controlled(
    variant: LCVariant,
    scores: Sequence[float],
    base: Sequence[float],
    outputs: Sequence[str],
    others: Sequence[str],
) -> WinRate:
    """WR and the LC of ``variant`` (lengths in characters): ours for minimal, else alpaca_eval's own GLM."""
    rate = win_rate(scores, base, [len(o) for o in outputs], [len(o) for o in others])
    if variant == "minimal":
        return rate
    from xlreward.evaluation.lc_variants import ALPACA_EVAL_GLM, alpaca_eval_lc
    from xlreward.evaluation.winrate import outcomes

    lc = alpaca_eval_lc(outcomes(scores, base).tolist(), outputs, others, ALPACA_EVAL_GLM[variant])
    return dataclasses.replace(rate, length_controlled=lc, length_coefficient=None)


def _judged(items: Sequence[Prompt], outputs: Sequence[str], language_name: str) -> list[Judged]:
    return [
        Judged(p.instruction, p.english_instruction, p.language, language_name, o)
        for p, o in zip(items, outputs, strict=True)
    ]


def _baseline_outputs(options: EvalOptions, prompts: dict[str, list[Prompt]]) -> dict[str, list[str]] | None:
    if options.baseline_outputs is not None:
        return stored_outputs(options.baseline_outputs, prompts, "--baseline-outputs")
    if options.baseline is not None:
        return generate_outputs(
            options.baseline,
            Path(options.baseline).name,
            prompts,
            options.out / "baseline",
            options,
            revision=options.baseline_revision,
            what="--baseline",
        )
    return None


def stored_outputs(folder: Path, prompts: dict[str, list[Prompt]], flag: str) -> dict[str, list[str]]:
    """The outputs in ``folder``/<language>/model_outputs.json, each file answering exactly its prompts."""
    outputs = {}
    for language, items in prompts.items():
        found = read_outputs(folder / language / OUTPUTS_FILE, items, None)
        if found is None:
            raise ValueError(
                f"{flag} {folder}: no {language}/{OUTPUTS_FILE} answering these instructions; write it with "
                "`xlreward eval` or `xlreward best-of-n` on the same instructions"
            )
        outputs[language] = found
    return outputs


def _write_judged(
    path: Path,
    items: Sequence[Prompt],
    outputs: Sequence[str],
    others: Sequence[str],
    scores: Sequence[float],
    base: Sequence[float],
) -> None:
    lines = [
        json.dumps(
            {
                "id": p.id,
                "instruction": p.instruction,
                "output": o,
                "baseline_output": b,
                "score": s,
                "baseline_score": bs,
            },
            ensure_ascii=False,
        )
        for p, o, b, s, bs in zip(items, outputs, others, scores, base, strict=True)
    ]
    _write_text(path, "".join(line + "\n" for line in lines))


def _load(name: str | Path, options: EvalOptions, *, revision: str | None, what: str) -> tuple[Any, Any]:
    """(model, tokenizer) of ``name`` resolved to a folder, loaded from that folder only."""
    from transformers import AutoModelForCausalLM

    from xlreward.service.model_source import resolve_model
    from xlreward.service.scoring.loading import LoadOptions, load_tokenizer

    trust = options.trust_remote_code
    folder = resolve_model(str(name), revision=revision, what=what, trust_remote_code=trust).folder
    load = LoadOptions(trust_remote_code=trust)
    tokenizer = load_tokenizer(folder, load)
    model: Any = AutoModelForCausalLM.from_pretrained(str(folder), **load.from_pretrained_kwargs())
    model = model.to(options.device).eval()
    return model, tokenizer


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, text)


def _write_json(path: Path, payload: Any) -> None:
    _write_text(path, json.dumps(payload, indent=2, ensure_ascii=False) + "\n")


@contextmanager
def _progress(
    options: EvalOptions, total: int, description: str, unit: str
) -> Iterator[Callable[[int], object]]:
    """A tqdm bar on stderr (when ``options.progress``; tqdm leaves it out when stderr is no terminal),
    given as its ``update``: call it with how many items are done."""
    from tqdm import tqdm

    with tqdm(total=total, desc=description, unit=unit, disable=None if options.progress else True) as bar:
        yield bar.update
