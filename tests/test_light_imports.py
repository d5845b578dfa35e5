"""The client side stays torch-free: wire schemas, the CLI's parser and its --help never import torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("torch", "transformers", "tokenizers", "trl")
HELP = "from xlreward.cli.main import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass"


def modules_loaded_by(code: str) -> set[str]:
    probe = f"{code}\nimport sys\nprint(' '.join(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    return set(done.stdout.split())


@pytest.mark.parametrize(
    "code",
    [
        "import xlreward.service.protocol",
        "import xlreward.service",
        "import xlreward.service.scoring.errors, xlreward.service.scoring.batching",
        "import xlreward.cli.main",
        "import xlreward.cli.help_format, xlreward.cli.arg_types, xlreward.cli.settings_flags",
        HELP.format(argv=["--help"]),
        HELP.format(argv=["score", "--help"]),
        HELP.format(argv=["serve", "--help"]),
        HELP.format(argv=["annotate", "--help"]),
        HELP.format(argv=["worker", "--help"]),
        HELP.format(argv=["train", "--help"]),
        HELP.format(argv=["train-rm", "--help"]),
        HELP.format(argv=["iterate", "--help"]),
        HELP.format(argv=["eval", "--help"]),
        HELP.format(argv=["demo", "--help"]),
        HELP.format(argv=["best-of-n", "--help"]),
        HELP.format(argv=["rl", "--help"]),
        "import xlreward.client, xlreward.worker.annotate, xlreward.worker.celery_app",
        "import xlreward.worker.best_of_n, xlreward.client.trl_reward",
    ],
)
def test_no_heavy_imports(code: str) -> None:
    loaded = modules_loaded_by(code)
    assert not loaded & set(HEAVY), f"{code!r} imported {sorted(loaded & set(HEAVY))}"


# What building every command's parser (and so any --help) must not load either: the server, worker and hub
# stacks, which only a command's run needs.
SERVER_SIDE = ("celery", "fastapi", "uvicorn", "huggingface_hub", "numpy")


@pytest.mark.parametrize("argv", [["--help"], ["score", "--help"], ["annotate", "--help"]])
def test_help_builds_parsers_without_the_server_side(argv: list[str]) -> None:
    loaded = modules_loaded_by(HELP.format(argv=argv))
    assert not loaded & set(SERVER_SIDE), f"{argv} imported {sorted(loaded & set(SERVER_SIDE))}"


def test_console_script_help_lists_commands() -> None:
    xlreward = str(Path(sys.executable).with_name("xlreward"))
    done = subprocess.run([xlreward, "--help"], capture_output=True, text=True, timeout=60, check=True)
    assert "score" in done.stdout
    version = subprocess.run([xlreward, "--version"], capture_output=True, text=True, timeout=60, check=True)
    assert version.stdout.startswith("xlreward ")
