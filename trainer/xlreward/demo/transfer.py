"""Reward-model transfer in miniature (METHOD.md section 2, "Reuse Your Rewards"), after the ICR part of the
demo and through the same commands a user runs:

1. Oracle-labelled preference pairs per language (``OUT/transfer/pairs/<language>.jsonl``): for tasks no
   other stage uses, the same tasks in every language, a right and a flawed response as the world writes
   them, the oracle saying which is chosen.
2. ``xlreward train-rm`` from pi_ref, once per language: ``rm-en`` (the RM that is transferred) and one
   same-language RM per other language, as the paper compares them.
3. One ``xlreward serve --models`` serving the RMs and the implicit pair (pi^0, pi_ref).
4. ``xlreward best-of-n`` on the held-out prompts: n samples from pi_ref (the served pair's reference, with
   the evaluation's decoding), each reward picking its best: the English RM and the same-language RM score
   the target-language prompt (RYR), the implicit reward the English instruction behind the directive
   (ICR). Every pick is judged by the oracle against pi_ref's own sample of the evaluation (``OUT/eval``).
5. ``xlreward rl``: a short GRPO run from pi_ref on prompts of every kind the evaluation holds (tasks no
   other stage uses) in the non-English languages, rewarded by ``rm-en`` on the target-language prompt, then
   evaluated like every other model.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xlreward.demo import world
from xlreward.demo.models import DemoConfig, DemoModels, stage_list

ENGLISH_RM = "rm-en"
POLITE_SHARE = 0.3  # of the RM pairs' responses, those with the polite word: length says nothing
IMPLICIT = "icr"
Command = Callable[[list[str], str], None]  # (xlreward arguments, log name): runs one command


@dataclass(frozen=True)
class TransferSettings:
    """The transfer part's settings, scaled to the tiny world (the paper: n = 64, PPO 2,500+ steps)."""

    rm_tasks: int = 1500  # distinct tasks per language for the RM pairs, in no other stage
    rm_pairs_per_task: int = 2
    rm_lr: float = 1e-3
    # Six epochs, not two: on the same pi_ref (seed 0), two left the English RM at 70% on its held-out English
    # pairs and six at 98%. Frozen embeddings keep the words of the languages the RM never sees where pi_ref
    # put them (best-of-16 estimated on three seeds' samples: 63.3% on the mean with them, 60.6% without).
    rm_epochs: float = 6.0
    rm_freeze_embeddings: bool = True
    rm_batch_size: int = 32
    # Of the tasks, the share with one more pair: the right response against an off-target one (another
    # task's sentence, the answer left out, a run-on: ``world.off_target_response``). Without them GRPO found
    # what the English RM had never seen rejected: at seed 0 (lr 5e-4) it answered every Spanish first/last
    # prompt with a run-on like "Primero vaAquí están: <the whole list>.", which the RM rewarded.
    rm_off_target_share: float = 0.5
    n: int = 16
    # GRPO's prompts: tasks of every kind the evaluation holds, in no other stage. On the iteration prompts
    # (first and last only) the policy forgot how to copy: at seed 0 its Spanish answers scored 11.3 over all
    # three kinds, so at most 34 on copy, where pi_ref scores 79.
    grpo_tasks: int = 300
    grpo_steps: int = 40
    grpo_batch_size: int = 32  # completions per step
    grpo_generations: int = 8
    # Win rate against pi_ref at seed 0 (es / de), prompts of every kind: 48 / 54 at 5e-4, 53 / 56 at 2e-4 (at
    # 1e-3 on first/last prompts: 33 / 35). Faster, the policy finds what the RM overrates before the KL term
    # holds it back.
    grpo_lr: float = 2e-4
    grpo_beta: float = 0.1  # the paper's KL coefficient
    grpo_max_tokens: int = 24
    seed: int = 0

    def rm_name(self, language: str) -> str:
        return f"rm-{language}"


def rm_tasks(config: DemoConfig, settings: TransferSettings) -> list[world.Task]:
    """Tasks for the reward models' pairs: a stage after all of the demo's, so none is held out elsewhere."""
    return _transfer_stages(config, settings)[0]


def rl_tasks(config: DemoConfig, settings: TransferSettings) -> list[world.Task]:
    """Tasks for GRPO's prompts: a stage after the reward models' (``grpo_tasks``)."""
    return _transfer_stages(config, settings)[1]


def _transfer_stages(config: DemoConfig, settings: TransferSettings) -> list[list[world.Task]]:
    split = config.split
    stages = [*stage_list(split), (settings.rm_tasks, split.kinds), (settings.grpo_tasks, split.kinds)]
    return world.distinct_stages(stages, split.seed, split.max_operand)[-2:]


def write_rm_pairs(
    path: Path, tasks: list[world.Task], language: str, flaws: world.Flaws, settings: TransferSettings
) -> int:
    """Oracle-labelled pairs in ``language``: per task, a right and a flawed response (each with the polite
    word by chance, so length says nothing), chosen = the one the oracle scores higher; for a share of the
    tasks also the right response against an off-target one. Returns the count."""
    rng = random.Random(f"{settings.seed}-{language}")

    def polite() -> bool:
        return rng.random() < POLITE_SHARE

    lines = []
    for index, task in enumerate(tasks):
        prompt = task.instruction(language)
        for draw in range(settings.rm_pairs_per_task):
            right = task.response(language, filler=polite())
            flawed = task.response(language, world.flawed_answer(task, rng, flaws), filler=polite())
            good, bad = world.judge(prompt, right, language), world.judge(prompt, flawed, language)
            if good == bad:
                continue  # a flawed answer the oracle cannot tell from the right one teaches nothing
            chosen, rejected = (right, flawed) if good > bad else (flawed, right)
            record = {"id": f"rm-{index}-{draw}", "language": language, "prompt": prompt}
            lines.append(json.dumps(record | {"chosen": chosen, "rejected": rejected}, ensure_ascii=False))
        if rng.random() < settings.rm_off_target_share:
            right = task.response(language, filler=polite())
            off_target = world.off_target_response(task, language, rng)
            if polite():
                off_target = world.with_filler(off_target, language)
            record = {"id": f"rm-{index}-off-target", "language": language, "prompt": prompt}
            lines.append(json.dumps(record | {"chosen": right, "rejected": off_target}, ensure_ascii=False))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return len(lines)


def train_reward_models(
    out: Path, config: DemoConfig, models: DemoModels, settings: TransferSettings, command: Command
) -> dict[str, Path]:
    """One RM per language, each trained by ``xlreward train-rm`` from pi_ref (a finished one is kept)."""
    tasks = rm_tasks(config, settings)
    trained = {}
    for language in world.LANGUAGES:
        folder = out / settings.rm_name(language)
        trained[language] = folder / "model"
        if (folder / "final_metrics.json").exists():
            continue
        pairs = out / "pairs" / f"{language}.jsonl"
        write_rm_pairs(pairs, tasks, language, config.flaws, settings)
        command(
            [
                "train-rm", "--pairs", str(pairs), "--model", str(models.sft), "--out", str(folder),
                "--lr", str(settings.rm_lr), "--epochs", str(settings.rm_epochs),
                "--batch-size", str(settings.rm_batch_size), "--grad-accum", "1", "--max-length", "256",
                "--seed", str(settings.seed), "--device", "cpu", "--logging-steps", "50",
                *(["--freeze-embeddings"] if settings.rm_freeze_embeddings else []),
            ],
            f"train-rm-{language}",
        )  # fmt: skip
    return trained


def models_file(path: Path, models: DemoModels, reward_models: dict[str, Path]) -> Path:
    """What the transfer part serves: every RM (classifiers) and the implicit pair (pi^0 over pi_ref)."""
    entries = [
        f'[[models]]\nname = "rm-{language}"\nkind = "classifier"\npath = "{folder.resolve()}"\n'
        for language, folder in reward_models.items()
    ]
    entries.append(
        f'[[models]]\nname = "{IMPLICIT}"\npolicy = "{models.pi0.resolve()}"\n'
        f'reference = "{models.sft.resolve()}"\n'
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(entries))
    return path


def best_of_n(
    out: Path,
    url: str,
    instructions: Path,
    languages: list[str],
    settings: TransferSettings,
    *,
    temperature: float,
    top_p: float,
    max_tokens: int,
    command: Command,
) -> Path:
    """n samples of pi_ref per held-out prompt, scored by every served reward (``xlreward best-of-n``)."""
    folder = out / "best-of-n"
    rewards = [ENGLISH_RM, *(settings.rm_name(lang) for lang in languages if lang != "en"), IMPLICIT]
    command(
        [
            "best-of-n", "--instructions", str(instructions), "--languages", ",".join(languages),
            "--model", *rewards, "--n", str(settings.n), "--sampler", IMPLICIT, "--sampler-role", "reference",
            "--temperature", str(temperature), "--top-p", str(top_p), "--max-tokens", str(max_tokens),
            "--seed", str(settings.seed), "--service", url, "--out", str(folder),
        ],
        "best-of-n",
    )  # fmt: skip
    return folder


def rl_config(
    path: Path,
    out: Path,
    url: str,
    models: DemoModels,
    instructions: Path,
    settings: TransferSettings,
    languages: list[str],
) -> Path:
    """The TOML a user would write for ``xlreward rl``: GRPO from pi_ref rewarded by the English RM."""
    lines = [
        f'out = "{out.resolve()}"',
        f'policy = "{models.sft.resolve()}"',
        f'instructions = ["{instructions.resolve()}"]',
        f"languages = {json.dumps(languages)}",
        "",
        "[reward]",
        f'service_url = "{url}"',
        f'model = "{ENGLISH_RM}"',
        'reward_prompt = "prompt"',
        "",
        "[grpo]",
        f"max_steps = {settings.grpo_steps}",
        f"batch_size = {settings.grpo_batch_size}",
        "grad_accum = 1",
        f"num_generations = {settings.grpo_generations}",
        f"max_completion_length = {settings.grpo_max_tokens}",
        f"lr = {settings.grpo_lr}",
        f"beta = {settings.grpo_beta}",
        "logging_steps = 5",
        f"save_steps = {settings.grpo_steps // 2}",
        f"seed = {settings.seed}",
        'device = "cpu"',
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def held_out_accuracy(reward_models: dict[str, Path]) -> dict[str, float]:
    """Each RM's accuracy on its held-out pairs, as ``xlreward train-rm`` measured it."""
    accuracy = {}
    for language, model in reward_models.items():
        metrics = json.loads((model.parent / "final_metrics.json").read_text())
        accuracy[language] = round(100 * float(metrics["held_out_accuracy"]), 1)
    return accuracy


def best_of_n_rows(
    judged: Callable[[Path, list[str], str], dict[str, Any]],
    folder: Path,
    languages: list[str],
    settings: TransferSettings,
) -> dict[str, dict[str, Any]]:
    """The oracle's verdicts on each reward's picks (and on candidate 0, one plain pi_ref sample)."""
    n = settings.n
    rows = {
        f"best-of-{n}: English RM": judged(folder / ENGLISH_RM, languages, "english-rm"),
        f"best-of-{n}: same-language RM": {
            language: judged(folder / settings.rm_name(language), [language], f"rm-{language}")[language]
            for language in languages
        },
        f"best-of-{n}: implicit reward": judged(folder / IMPLICIT, languages, "implicit"),
        "pi_ref sample (best-of-1)": judged(folder / "single", languages, "single"),
    }
    return rows
