"""`xlreward rl` as a user runs it: GRPO steps of a tiny policy rewarded by a tiny classifier on a real
server (the one rl starts for ``[reward] models_file``, started once for the module); the re-run that does
nothing, the resumed run, LoRA (merged), the "english" reward prompt, and configs that fail with exit 2
before torch is imported."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from xlreward.cli.main import main

INSTRUCTIONS = [
    (1, "en", "Name three colours."),
    (1, "es", "Nombra tres colores."),
    (1, "de", "Nenne drei Farben."),
    (2, "en", "Say hello."),
    (2, "es", "Di hola."),
    (2, "de", "Sag hallo."),
]

CONFIG = """
out = "run"
policy = "{policy}"
instructions = ["instructions.jsonl"]
languages = ["es", "de"]

[reward]
{reward}
model = "rm"
reward_prompt = "{mode}"

[grpo]
lr = 1e-3
max_steps = {max_steps}
batch_size = 4
grad_accum = 1
num_generations = 2
max_completion_length = 4
save_steps = 1
logging_steps = 1
warmup_ratio = 0.0
seed = 0
device = "cpu"
dtype = "float32"
lora = {lora}
{extra}
"""


@pytest.fixture(scope="module")
def models_file(model_cache, tmp_path_factory) -> Path:  # type: ignore[no-untyped-def]
    from xlreward.trainer.tiny_models import TinySpec, build_tiny_classifier

    classifier = build_tiny_classifier(model_cache, TinySpec(arch="llama", template="llama3"))
    path = tmp_path_factory.mktemp("rl-models") / "models.toml"
    path.write_text(f'[[models]]\nname = "rm"\nkind = "classifier"\npath = "{classifier}"\n')
    return path


@pytest.fixture(scope="module")
def server(models_file: Path, llama_pair):  # type: ignore[no-untyped-def]
    """The server rl starts for ``[reward] models_file`` (`xlreward serve --models FILE`), shared by the runs
    below through ``service_url``: one server start for the module."""
    from xlreward.trainer.rl import RLConfig, reward_server

    folder = models_file.parent
    config = RLConfig.load(write_config(folder, llama_pair.policy, 'models_file = "models.toml"'))
    assert config.reward.models_file == folder / "models.toml"  # relative to the config file
    with reward_server(config) as url:
        assert (folder / "run" / "service.log").is_file()
        yield url


def write_config(folder: Path, policy: Path, reward: str, **values: object) -> Path:
    lines = [json.dumps({"id": i, "language": lang, "instruction": text}) for i, lang, text in INSTRUCTIONS]
    (folder / "instructions.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    settings = {"max_steps": 1, "mode": "prompt", "lora": "false", "extra": "", **values}
    path = folder / "rl.toml"
    path.write_text(CONFIG.format(policy=policy, reward=reward, **settings), encoding="utf-8")
    return path


def changed_weights(model_dir: Path, policy: Path) -> list[str]:
    """The parameters of OUT/model (loaded with plain transformers) that differ from the policy's."""
    import torch
    from transformers import AutoModelForCausalLM

    trained = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).state_dict()
    start = AutoModelForCausalLM.from_pretrained(policy, dtype=torch.float32).state_dict()
    assert trained.keys() == start.keys()
    return [name for name, value in trained.items() if not torch.equal(value, start[name])]


def test_runs_finishes_once_and_resumes_from_the_last_checkpoint(
    server, llama_pair, tmp_path, capsys
) -> None:  # type: ignore[no-untyped-def]
    reward = f'service_url = "{server}"'
    config = write_config(tmp_path, llama_pair.policy, reward, max_steps=1)
    out = tmp_path / "run"
    assert main(["rl", "--config", str(config)]) == 0
    first = json.loads((out / "final_metrics.json").read_text())
    assert first["steps"] == 1 and first["resumed_from"] is None
    assert first["reward_model"] == "rm" and first["reward_prompt"] == "prompt"
    assert first["reward"]["first"]["step"] == 1 and isinstance(first["reward"]["first"]["mean"], float)
    record = json.loads((out / "rl_config.json").read_text())
    assert record["models"]["policy"]["folder"] == str(llama_pair.policy)
    assert (out / "checkpoints" / "checkpoint-1" / "trainer_state.json").is_file()

    stamp = (out / "final_metrics.json").stat().st_mtime_ns
    capsys.readouterr()
    assert main(["rl", "--config", str(config)]) == 0  # the same config again: nothing to do
    assert "already done" in capsys.readouterr().err
    assert (out / "final_metrics.json").stat().st_mtime_ns == stamp
    # Nor through another address of the server, with a key (which rl_config.json never holds): where the
    # reward server is changes nothing the run trains.
    moved = f'service_url = "{server.replace("127.0.0.1", "localhost")}"\napi_key = "sk-secret"'
    write_config(tmp_path, llama_pair.policy, moved, max_steps=1)
    assert main(["rl", "--config", str(config)]) == 0
    assert "already done" in capsys.readouterr().err
    assert "sk-secret" not in (out / "rl_config.json").read_text()

    # One more step, as a run stopped after step 1 would be continued: from checkpoint-1, not from scratch.
    write_config(tmp_path, llama_pair.policy, reward, max_steps=2)
    assert main(["rl", "--config", str(config)]) == 0
    assert "resuming from" in capsys.readouterr().err
    second = json.loads((out / "final_metrics.json").read_text())
    assert second["steps"] == 2 and second["resumed_from"] == str(out / "checkpoints" / "checkpoint-1")
    assert second["reward"]["first"] == first["reward"]["first"]  # step 1's log came from the checkpoint
    assert second["reward"]["last"]["step"] == 2
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert changed_weights(out / "model", llama_pair.policy)


def test_lora_writes_a_merged_model_and_the_english_prompt_is_recorded(server, llama_pair, tmp_path) -> None:  # type: ignore[no-untyped-def]
    reward = f'service_url = "{server}"'
    config = write_config(tmp_path, llama_pair.policy, reward, mode="english", lora="true")
    assert main(["rl", "--config", str(config), "--out", str(tmp_path / "lora")]) == 0
    out = tmp_path / "lora"
    final = json.loads((out / "final_metrics.json").read_text())
    assert final["steps"] == 1 and final["reward_prompt"] == "english"
    assert not list((out / "model").glob("adapter_*"))  # merged: a plain causal LM
    assert (out / "model" / "tokenizer_config.json").is_file()
    assert changed_weights(out / "model", llama_pair.policy)


def test_the_rows_score_against_the_prompt_or_the_directive_and_english_instruction(tmp_path) -> None:
    from xlreward.trainer.rl import dataset_rows
    from xlreward.worker.instructions import load_instructions
    from xlreward.worker.jobs import cross_lingual_prompt
    from xlreward.worker.settings import DEFAULT_DIRECTIVE, DEFAULT_LANGUAGE_NAMES

    lines = [json.dumps({"id": i, "language": lang, "instruction": text}) for i, lang, text in INSTRUCTIONS]
    (tmp_path / "i.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    instructions = load_instructions(
        [tmp_path / "i.jsonl"], languages=["es", "de"], known_languages=DEFAULT_LANGUAGE_NAMES
    )
    english = dataset_rows(instructions, ["es", "de"], "english")
    assert english[0] == {
        "prompt": [{"role": "user", "content": "Nenne drei Farben."}],
        "reward_prompt": cross_lingual_prompt(
            "Name three colours.", "de", DEFAULT_LANGUAGE_NAMES, DEFAULT_DIRECTIVE
        ),
        "language": "de",
    }
    assert english[0]["reward_prompt"].startswith("Please answer the following instruction using only German")
    assert [row["language"] for row in english] == ["de", "es", "de", "es"]
    same = dataset_rows(instructions, ["es", "de"], "prompt")
    assert [row["reward_prompt"] for row in same] == [row["prompt"][0]["content"] for row in same]


RUN = (
    "import sys\nfrom xlreward.cli.main import main\nstatus = main({argv!r})\n"
    "print('torch' in sys.modules)\nsys.exit(status)"
)


@pytest.mark.parametrize(
    ("reward", "extra", "message"),
    [
        ('service_url = "http://127.0.0.1:{port}"', "lorra = true", "[grpo] lorra: Extra inputs"),
        ('service_url = "http://127.0.0.1:{port}"', "", "no reward server answers there"),
        ('models_file = "missing.toml"', "", "models_file"),
    ],
    ids=["unknown-key", "nobody-answers", "no-models-file"],
)
def test_bad_configs_exit_2_before_torch(llama_pair, tmp_path, reward, extra, message) -> None:  # type: ignore[no-untyped-def]
    from xlreward.service.process import free_port

    config = write_config(tmp_path, llama_pair.policy, reward.format(port=free_port()), extra=extra)
    done = subprocess.run(
        [sys.executable, "-c", RUN.format(argv=["rl", "--config", str(config)])],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and done.stderr.startswith("xlreward rl: error:")
    assert done.stdout.strip() == "False"  # nothing heavy was imported to find it out


HELP = (
    "import sys\nfrom xlreward.cli.main import main\ntry:\n    main(['rl', '--help'])\nexcept SystemExit:\n"
    "    pass\nprint('torch' in sys.modules)"
)


def test_help_stays_light() -> None:
    done = subprocess.run(
        [sys.executable, "-c", HELP], capture_output=True, text=True, timeout=60, check=True
    )
    assert "--config" in done.stdout and done.stdout.strip().endswith("False")
