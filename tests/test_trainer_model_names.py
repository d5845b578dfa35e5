"""`xlreward train`, `iterate` and `eval` take models the way `score` and `serve` do: a folder, or a Hugging
Face hub id resolved from the cache (``HF_HUB_OFFLINE`` honoured), then loaded from that folder only.

The hub cache is laid out by the tests (``hub_cache.populate_hub_cache``), never fetched. huggingface_hub
reads HF_HUB_OFFLINE and HF_HUB_CACHE once, at import: in-process tests set ``huggingface_hub.constants``
with monkeypatch; the subprocess tests run the command as a user does and look at what it imported.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hub_cache import populate_hub_cache
from xlreward.cli import iterate as iterate_command
from xlreward.cli.main import CommandError, main
from xlreward.trainer.loop import IterateConfig, train_options
from xlreward.trainer.models import resolve_models
from xlreward.trainer.options import TrainOptions

pytestmark = [
    pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"),
    pytest.mark.filterwarnings("ignore:`gradient_checkpointing` is deprecated:FutureWarning"),
]

LOOP = """
out = "loop"
sft = "{sft}"
policy = "{policy}"
instructions = ["instructions.jsonl"]
languages = ["es"]

[train]
trust_remote_code = false
attn_implementation = "eager"
"""


@pytest.fixture
def hub_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The hub cache folder, offline, as ``HF_HUB_OFFLINE=1 HF_HUB_CACHE=...`` would set it."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture
def hub(hub_dir: Path, llama_pair: Any) -> dict[str, Path]:
    """The tiny pair cached as org/tiny-dpo and org/tiny-sft: id -> snapshot folder."""
    return {
        "org/tiny-dpo": populate_hub_cache(hub_dir, "org/tiny-dpo", llama_pair.policy),
        "org/tiny-sft": populate_hub_cache(hub_dir, "org/tiny-sft", llama_pair.reference),
    }


@pytest.fixture
def pairs(tmp_path: Path) -> Path:
    lines = [
        {"id": "1", "language": "es", "prompt": "Hola", "chosen": "Sí, claro.", "rejected": "No."},
        {"id": "2", "language": "es", "prompt": "¿Qué tal?", "chosen": "Bien, gracias.", "rejected": "Mal."},
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.fixture
def instructions(tmp_path: Path) -> Path:
    from xlreward.demo import world
    from xlreward.demo.run import write_instructions

    return write_instructions(tmp_path / "eval.jsonl", world.distinct_tasks(2, seed=9), "e")


def train_argv(pairs: Path, policy: str, reference: str, out: Path, *extra: str) -> list[str]:
    return [
        "train", "--pairs", str(pairs), "--policy", policy, "--reference", reference, "--out", str(out),
        "--device", "cpu", "--max-length", "128", "--batch-size", "2", "--grad-accum", "1", *extra,
    ]  # fmt: skip


def test_train_from_a_hub_id_loads_its_cached_snapshot(
    hub: dict[str, Path], pairs: Path, tmp_path: Path
) -> None:
    """One LoRA step from org/tiny-sft against itself: the id resolves to its snapshot, the same id as
    --reference is the policy with the adapter off, and OUT/model is saved in the dtype the snapshot's
    config.json declares."""
    out = tmp_path / "out"
    flags = ["--lora", "--max-steps", "1", "--attn-implementation", "eager", "--revision", "main"]
    assert main(train_argv(pairs, "org/tiny-sft", "org/tiny-sft", out, *flags)) == 0
    record = json.loads((out / "train_config.json").read_text())
    assert (record["options"]["policy"], record["options"]["revision"]) == ("org/tiny-sft", "main")
    assert record["options"]["attn_implementation"] == "eager"
    assert record["resolved"]["policy"] == f"org/tiny-sft@main (cache: {hub['org/tiny-sft']})"
    assert record["resolved"]["reference"] == "the policy with its LoRA adapter disabled"
    assert (out / "model" / "model.safetensors").is_file()


def test_names_resolve_once_to_folders_and_load_as_asked(
    hub: dict[str, Path], llama_pair: Any, pairs: Path, tmp_path: Path
) -> None:
    """Distinct ids are distinct models; an id and its own snapshot folder are one model; the folders load
    with the attention implementation asked for."""
    from xlreward.trainer.models import load_models

    def options(policy: str | Path, reference: str | Path, **extra: Any) -> TrainOptions:
        return TrainOptions(pairs=[pairs], policy=policy, reference=reference, out=tmp_path / "out", **extra)

    two = resolve_models(options("org/tiny-dpo", "org/tiny-sft"))
    assert (two.policy.folder, two.reference.folder) == (hub["org/tiny-dpo"], hub["org/tiny-sft"])
    assert not two.on_folders(options("org/tiny-dpo", "org/tiny-sft")).reference_is_policy
    named = options("org/tiny-sft", hub["org/tiny-sft"], lora=True, attn_implementation="eager")
    assert not named.reference_is_policy  # as named, an id and a folder differ...
    folders = resolve_models(named).on_folders(named)
    assert folders.reference_is_policy and folders.revision is None  # ...and are the same snapshot
    policy, reference = load_models(folders, bf16=False)
    assert reference is None and policy.config._attn_implementation == "eager"


def test_an_uncached_hub_id_offline_fails_naming_it(
    hub: dict[str, Path], pairs: Path, instructions: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """train, eval and iterate each say which id is missing and how to fetch it, and write nothing."""
    fetch = "`hf download org/not-cached --revision main`"
    assert main(train_argv(pairs, "org/not-cached", "org/tiny-sft", tmp_path / "out")) == 2
    error = capsys.readouterr().err
    assert "--policy org/not-cached (revision main) is not in the Hugging Face cache" in error
    assert "HF_HUB_OFFLINE is set" in error and fetch in error
    assert not (tmp_path / "out").exists()

    eval_argv = [
        "eval",
        "--model",
        "org/not-cached",
        "--instructions",
        str(instructions),
        "--languages",
        "es",
    ]
    assert main([*eval_argv, "--out", str(tmp_path / "eval"), "--max-tokens", "2"]) == 2
    error = capsys.readouterr().err
    assert (
        "--model org/not-cached (revision main) is not in the Hugging Face cache" in error and fetch in error
    )

    config = tmp_path / "loop.toml"
    config.write_text(LOOP.format(sft="org/not-cached", policy="org/tiny-dpo"))
    with pytest.raises(
        CommandError, match=r"sft org/not-cached \(revision main\) is not in the Hugging Face"
    ):
        iterate_command.run(argparse.Namespace(config=str(config)))
    assert not (tmp_path / "loop").exists()


def test_iterate_resolves_its_config_names_to_folders_once(
    hub: dict[str, Path], llama_pair: Any, tmp_path: Path
) -> None:
    """Hub ids become their snapshots and relative folders are relative to the file; each iteration then
    trains from folders, with [train]'s loading options and no revision."""
    (tmp_path / "pi0").mkdir()
    config = tmp_path / "loop.toml"
    config.write_text(LOOP.format(sft="org/tiny-sft", policy="pi0"))
    loaded = IterateConfig.load(config)
    assert (loaded.sft, loaded.policy) == ("org/tiny-sft", str(tmp_path / "pi0"))
    resolved = loaded.with_model_folders()
    assert (resolved.sft, resolved.policy) == (str(hub["org/tiny-sft"]), str((tmp_path / "pi0").resolve()))

    config.write_text(LOOP.format(sft="org/tiny-sft", policy="org/tiny-dpo") + 'revision = "main"\n')
    resolved = IterateConfig.load(config).with_model_folders()
    assert resolved.pair_for(0) == (hub["org/tiny-dpo"], hub["org/tiny-sft"])
    out = resolved.iteration_dir(0) / "train"
    (out.parent / "annotate").mkdir(parents=True)
    (out.parent / "annotate" / "pairs.jsonl").touch()
    options = train_options(
        resolved.model_copy(update={"train_reference": "sft"}), out, resolved.generator_for(0)
    )
    assert (options.policy, options.reference) == (str(hub["org/tiny-dpo"]), str(hub["org/tiny-sft"]))
    assert (options.revision, options.attn_implementation, options.trust_remote_code) == (
        None,
        "eager",
        False,
    )


def test_eval_samples_and_judges_with_hub_ids(
    hub: dict[str, Path],
    hub_dir: Path,
    llama_pair: Any,
    model_cache: Path,
    instructions: Path,
    tmp_path: Path,
) -> None:
    """--model and a classifier --judge-model by hub id give what their folders give."""
    from xlreward.trainer.tiny_models import TinySpec, build_tiny_classifier

    classifier = build_tiny_classifier(model_cache, TinySpec(arch="llama", template="llama3"))
    populate_hub_cache(hub_dir, "org/tiny-rm", classifier)

    def evaluate(model: str, judge: str, out: Path) -> dict[str, Any]:
        argv = ["eval", "--model", model, "--instructions", str(instructions), "--languages", "es"]
        argv += ["--out", str(out), "--max-tokens", "4", "--judge", "classifier", "--judge-model", judge]
        assert main(argv) == 0
        return {
            "results": json.loads((out / "results.json").read_text()),
            "outputs": json.loads((out / "es" / "model_outputs.json").read_text()),
        }

    by_id = evaluate("org/tiny-dpo", "org/tiny-rm", tmp_path / "by_id")
    by_folder = evaluate(str(llama_pair.policy), str(classifier), tmp_path / "by_folder")
    assert {record["generator"] for record in by_id["outputs"]} == {"tiny-dpo"}
    assert [r["output"] for r in by_id["outputs"]] == [r["output"] for r in by_folder["outputs"]]
    assert by_id["results"]["judge"] == "classifier:org/tiny-rm"
    es = by_id["results"]["languages"]["es"]
    assert es["mean_score"] == pytest.approx(by_folder["results"]["languages"]["es"]["mean_score"], abs=1e-5)


PROBE = """
import sys, time
from xlreward.cli.main import main
started = time.perf_counter()
status = main({argv!r})
print(status, round(time.perf_counter() - started, 2), "torch" in sys.modules)
"""


@pytest.mark.parametrize("command", ["train", "eval", "iterate"])
def test_a_wrong_path_fails_before_torch_is_imported(command: str, pairs: Path, tmp_path: Path) -> None:
    missing = str(tmp_path / "no" / "such" / "model")
    config = tmp_path / "loop.toml"
    config.write_text(LOOP.format(sft=missing, policy=missing))
    argv = {
        "train": train_argv(pairs, missing, missing, tmp_path / "out"),
        "eval": ["eval", "--model", missing, "--instructions", str(pairs), "--languages", "es", "--out", "o"],
        "iterate": ["iterate", "--config", str(config)],
    }[command]
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(argv=argv)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    status, seconds, torch_loaded = done.stdout.split()
    assert (status, torch_loaded) == ("2", "False"), done.stderr
    assert f"{missing}: no such folder" in done.stderr
    assert float(seconds) < 10  # well under a second on a laptop; the bound is for loaded CI machines
