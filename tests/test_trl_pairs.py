"""A pairs.jsonl written by ``xlreward annotate``, loaded the way a user's own TRL script loads it
(``datasets.load_dataset("json")`` into ``DPOTrainer``), is tokenized by TRL exactly as xlreward's scorer
tokenized the same (prompt, response).

Regression (issue 21): pairs were written in TRL's standard format (plain strings), which TRL tokenizes as raw
text with no chat template. A user's DPOTrainer silently trained a chat model on
``<|begin_of_text|>Name three colours.`` + response + EOS, a sequence it was never sampled or scored under.
Annotation now writes the conversational format by default; ``--format standard`` keeps the strings.

What may differ, and does, precisely: TRL's completion (``chosen_ids``) is EVERYTHING the templated
conversation adds after the templated prompt (``DPOTrainer._prepare_dataset``: the tokens after the common
prefix of the prompt-with-generation-prompt rendering and the full rendering). The scorer scores the
response up to and including the end-of-turn token only. Text a chat template prints AFTER the end-of-turn
token is in TRL's completion but not in our scored span: nothing for Llama-3 (the turn ends on
``<|eot_id|>``), one "\\n" token for ChatML (``<|im_end|>\\n``), which the policy never generates (generation
stops at ``<|im_end|>``). Everything else, the prompt ids and every scored id, is identical.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import datasets
import pytest
from transformers import AutoTokenizer
from trl import DPOConfig, DPOTrainer

from xlreward.service.protocol import RewardItem
from xlreward.service.scoring.loading import load_engine
from xlreward.service.scoring.templating import TokenizedItem
from xlreward.trainer.tiny_models import TinySpec, build_tiny_pair
from xlreward.worker.annotate import RunPlan, collect, plan_run
from xlreward.worker.pair_format import TEXT_FIELDS, read_texts
from xlreward.worker.pipeline import SCORED
from xlreward.worker.settings import WorkerSettings

pytestmark = [
    # TRL's own default (`gradient_checkpointing`) and helpers use names transformers 5 has deprecated.
    pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"),
    pytest.mark.filterwarnings("ignore:`gradient_checkpointing` is deprecated:FutureWarning"),
]

# Template text after the end-of-turn token, per chat template: in TRL's completion, not in our scored span.
TRAILING_TEXT = {"llama3": "", "chatml": "\n"}
CONFIGURATIONS = [("llama", "llama3"), ("qwen2", "chatml")]  # (architecture, chat template)

INSTRUCTIONS = {
    ("1", "en"): "Name three colours.",
    ("1", "es"): "Nombra tres colores.",
    ("1", "ru"): "Назови три цвета.",
    ("2", "en"): "What is 12 + 30?",
    ("2", "es"): "¿Cuánto es 12 + 30?",
    ("2", "ru"): "Сколько будет 12 + 30?",
}
# Stored samples (as generated: stripped) and their rewards; distinct rewards, so every unit keeps a pair.
SAMPLES = {
    ("1", "en"): [("Red, green and blue.", 1.5), ("Colours.", -0.5), ("Red.", 0.2)],
    ("1", "es"): [("Rojo, verde y azul.", 0.9), ("Colores:\n1. rojo\n2. verde", 0.1), ("No sé.", -1.0)],
    ("1", "ru"): [("Красный, зелёный, синий.", 2.0), ("红色、绿色和蓝色。", -2.0), ("Цвета.", 0.0)],
    ("2", "en"): [("42.", 0.7), ("It is 42, of course.", 0.4), ("I cannot say.", -0.3)],
    ("2", "es"): [("Es 42.", 1.1), ("مرحبا بالعالم.", -1.2), ("Cuarenta y dos.", 0.3)],
    ("2", "ru"): [("Будет 42.", 0.5), ("Не знаю.", -0.8), ("42", 0.1)],
}
LANGUAGES = ["en", "es", "ru"]


def scored_run(folder: Path) -> RunPlan:
    """An annotation run whose units are all scored (monolingual reward: the scorer's prompt is the pair's
    prompt), ready for ``collect`` to write pairs.jsonl as ``xlreward annotate`` does."""
    source = folder / "instructions.jsonl"
    lines = [
        json.dumps({"id": i, "language": lang, "instruction": text})
        for (i, lang), text in INSTRUCTIONS.items()
    ]
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    settings = WorkerSettings(broker_url=None, reward_mode="monolingual")
    plan = plan_run([source], languages=LANGUAGES, out_dir=folder / "out", settings=settings)
    for job in plan.jobs:
        texts, rewards = zip(*SAMPLES[(job.id, job.language)], strict=True)
        record = {"id": job.id, "language": job.language, "prompt": job.instruction}
        plan.store.put_once(SCORED, job.key, {**record, "samples": list(texts), "rewards": list(rewards)})
    return plan


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@dataclass
class Agreement:
    template: str
    tokenizer: Any
    pairs: list[dict[str, Any]]  # pairs.jsonl, conversational (the default)
    standard_pairs: list[dict[str, Any]]  # pairs.jsonl of the same run, written with --format standard
    scorer: dict[tuple[int, str], TokenizedItem]  # (row, side) -> how the scorer tokenized it
    trl_conversational: datasets.Dataset  # TRL's tokenization of pairs.jsonl as written by default
    trl_standard: datasets.Dataset  # ... and of the same run written with --format standard


def trl_tokenized(
    policy: Path, engine: Any, conversational: Path, standard: Path, folder: Path
) -> DPOTrainer:
    """TRL's own dataset preparation, run by constructing the trainer as a user's script does."""

    def load(path: Path) -> datasets.Dataset:
        return datasets.load_dataset(
            "json", data_files=str(path), split="train", cache_dir=str(folder / "hf")
        )

    args = DPOConfig(
        output_dir=str(folder / "dpo"),
        report_to="none",
        use_cpu=True,
        max_length=None,
        activation_checkpointing=False,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    return DPOTrainer(
        model=engine.policy,
        ref_model=engine.reference,
        args=args,
        train_dataset=load(conversational),
        eval_dataset=load(standard),
        processing_class=AutoTokenizer.from_pretrained(str(policy), local_files_only=True),
    )


@pytest.fixture(scope="module", params=CONFIGURATIONS, ids=lambda spec: spec[1])
def agreement(
    request: pytest.FixtureRequest, model_cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> Agreement:
    arch, template = request.param
    pair = build_tiny_pair(model_cache, TinySpec(arch=arch, template=template))
    folder = tmp_path_factory.mktemp("trl-pairs")
    plan = scored_run(folder)
    collect(plan)  # the default format
    conversational = folder / "conversational.jsonl"
    (plan.out_dir / "pairs.jsonl").rename(conversational)
    collect(replace(plan, pair_format="standard"))
    jobs = {(job.id, job.language): job for job in plan.jobs}
    engine = load_engine(pair.policy, pair.reference, device="cpu", dtype="float32")
    pairs = records(conversational)
    scorer: dict[tuple[int, str], TokenizedItem] = {}
    for row, record in enumerate(pairs):
        texts = read_texts(record)
        assert jobs[(record["id"], record["language"])].reward_prompt == texts.prompt  # what was scored
        for side in ("chosen", "rejected"):
            scorer[(row, side)] = engine.tokenize(
                RewardItem(prompt=texts.prompt, response=getattr(texts, side))
            )
    trainer = trl_tokenized(pair.policy, engine, conversational, plan.out_dir / "pairs.jsonl", folder)
    return Agreement(
        template=template,
        tokenizer=engine.tokenizer,
        pairs=pairs,
        standard_pairs=records(plan.out_dir / "pairs.jsonl"),
        scorer=scorer,
        trl_conversational=trainer.train_dataset,
        trl_standard=trainer.eval_dataset,
    )


@pytest.mark.parametrize("side", ["chosen", "rejected"])
def test_trl_tokenizes_our_pairs_as_the_scorer_did(agreement: Agreement, side: str) -> None:
    """Prompt ids equal; TRL's completion is our scored span (ending on the end-of-turn token) followed by
    exactly the template's trailing text ("" for Llama-3, "\\n" for ChatML); see the module docstring."""
    assert len(agreement.pairs) == len(agreement.trl_conversational) == 6
    trailing_text = TRAILING_TEXT[agreement.template]
    for row, trl in enumerate(agreement.trl_conversational):
        ours = agreement.scorer[(row, side)]
        assert trl["prompt_ids"] == list(ours.input_ids[: ours.score_start])
        assert trl[f"{side}_ids"] == list(ours.input_ids[ours.score_start :])
        scored = list(ours.input_ids[ours.score_start : ours.score_end])
        assert trl[f"{side}_ids"][: len(scored)] == scored
        after = trl[f"{side}_ids"][len(scored) :]
        assert agreement.tokenizer.decode(after) == trailing_text
        assert len(after) == (1 if trailing_text else 0)


def test_standard_pairs_are_tokenized_without_the_chat_template(agreement: Agreement) -> None:
    """What the issue found, kept as what ``--format standard`` means: TRL tokenizes plain strings as raw
    text (BOS + the instruction, the response + EOS), not as the conversation the scorer templated."""
    tokenizer = agreement.tokenizer
    assert len(agreement.trl_standard) == len(agreement.pairs)
    for row, trl in enumerate(agreement.trl_standard):
        prompt = read_texts(agreement.pairs[row]).prompt
        ours = agreement.scorer[(row, "chosen")]
        assert trl["prompt_ids"] == tokenizer(prompt)["input_ids"]
        assert trl["prompt_ids"] != list(ours.input_ids[: ours.score_start])
        assert "user" not in tokenizer.decode(trl["prompt_ids"])  # no chat turn around the instruction
        assert trl["chosen_ids"][-1] == tokenizer.eos_token_id  # TRL ends a plain response with EOS


def test_both_formats_hold_the_same_pairs(agreement: Agreement) -> None:
    """Only the three text fields differ between the formats; ids, languages, rewards and lengths do not."""
    for record, plain in zip(agreement.pairs, agreement.standard_pairs, strict=True):
        assert list(record) == list(plain)
        assert isinstance(plain["prompt"], str) and isinstance(plain["chosen"], str)
        assert record["prompt"] == [{"role": "user", "content": plain["prompt"]}]
        assert record["chosen"] == [{"role": "assistant", "content": plain["chosen"]}]
        assert record["rejected"] == [{"role": "assistant", "content": plain["rejected"]}]
        assert {k: v for k, v in record.items() if k not in TEXT_FIELDS} == {
            k: v for k, v in plain.items() if k not in TEXT_FIELDS
        }


def test_a_bad_format_is_refused_before_torch_is_imported(tmp_path: Path) -> None:
    argv = ["annotate", "--instructions", "x.jsonl", "--languages", "en", "--out", str(tmp_path)]
    probe = (
        "import sys\n"
        "from xlreward.cli.main import main\n"
        "try:\n"
        f"    main({[*argv, '--format', 'chat']!r})\n"
        "except SystemExit as exit:\n"
        "    print(exit.code, 'torch' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.split() == ["2", "False"]
    assert "--format: invalid choice: 'chat' (choose from 'conversational', 'standard')" in done.stderr
    assert not (tmp_path / "run.json").exists()
