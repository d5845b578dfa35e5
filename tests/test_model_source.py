"""Naming a model as a folder or as a hub id with a revision, resolved offline from a cache the tests lay out.

huggingface_hub reads HF_HUB_OFFLINE and HF_HUB_CACHE into ``huggingface_hub.constants`` once, at import:
in-process tests switch ``constants.HF_HUB_OFFLINE`` on with monkeypatch and pass ``cache_dir``; the
subprocess tests set the environment variables before the process starts, as a user does. No test reaches
the network: the one online path runs against a closed port on this machine.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from hub_cache import populate_hub_cache
from xlreward.service.model_source import (
    IGNORE_PATTERNS,
    ModelNotFound,
    check_model_name,
    download_patterns,
    resolve_model,
)

HEAVY = ("torch", "transformers")


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def model_files(folder: Path, label: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "label": label}))
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 64}))
    return folder


def test_a_folder_is_itself(tmp_path: Path) -> None:
    folder = model_files(tmp_path / "policy", "local")
    source = resolve_model(str(folder))
    assert (source.folder, source.hub_id, source.revision) == (folder.resolve(), None, None)
    assert str(source) == str(folder.resolve())
    with pytest.raises(ValueError, match="revisions apply to Hugging Face hub ids"):
        resolve_model(str(folder), revision="main")


def test_hub_id_resolves_to_its_cached_snapshot(tmp_path: Path, offline: None) -> None:
    cache = tmp_path / "hub"
    snapshot = populate_hub_cache(cache, "org/tiny", model_files(tmp_path / "src", "main"))
    source = resolve_model("org/tiny", cache_dir=cache)
    assert (source.folder, source.hub_id, source.commit) == (snapshot, "org/tiny", snapshot.name)
    assert json.loads((source.folder / "config.json").read_text())["label"] == "main"
    assert source.describe() == f"org/tiny@main (cache: {snapshot})"


def test_a_named_branch_resolves_to_its_own_snapshot(tmp_path: Path, offline: None) -> None:
    cache = tmp_path / "hub"
    main = populate_hub_cache(cache, "org/tiny", model_files(tmp_path / "main", "main"))
    dev = populate_hub_cache(cache, "org/tiny", model_files(tmp_path / "dev", "dev"), revision="dev")
    assert main != dev
    assert resolve_model("org/tiny", revision="dev", cache_dir=cache).folder == dev
    assert resolve_model("org/tiny", revision=dev.name, cache_dir=cache).folder == dev  # a commit hash
    assert json.loads((dev / "config.json").read_text())["label"] == "dev"
    assert resolve_model("org/tiny", cache_dir=cache).folder == main


def test_the_populated_cache_is_one_huggingface_hub_reads_back(tmp_path: Path) -> None:
    """The helper's layout passes huggingface_hub's own cache scan, with no warnings."""
    from huggingface_hub import get_cached_repo_tree, scan_cache_dir

    populate_hub_cache(tmp_path / "hub", "org/tiny", model_files(tmp_path / "main", "main"))
    populate_hub_cache(tmp_path / "hub", "org/tiny", model_files(tmp_path / "dev", "dev"), revision="dev")
    scanned = scan_cache_dir(tmp_path / "hub")
    assert scanned.warnings == []
    assert [(repo.repo_id, sorted(repo.refs), len(repo.revisions)) for repo in scanned.repos] == [
        ("org/tiny", ["dev", "main"], 2)
    ]
    listed = get_cached_repo_tree("org/tiny", revision="dev", cache_dir=tmp_path / "hub")
    assert sorted(file.path for file in listed) == ["config.json", "tokenizer_config.json"]


def test_uncached_while_offline_names_the_id_and_the_download_command(tmp_path: Path, offline: None) -> None:
    with pytest.raises(ModelNotFound) as caught:
        resolve_model("org/absent", revision="v1", what="--reference", cache_dir=tmp_path)
    message = str(caught.value)
    assert message.startswith("--reference org/absent (revision v1) is not in the Hugging Face cache")
    assert "HF_HUB_OFFLINE is set" in message
    assert f"`hf download org/absent --revision v1 --cache-dir {tmp_path}`" in message
    assert isinstance(caught.value, FileNotFoundError)  # existing handlers keep catching it


def test_a_snapshot_missing_a_listed_file_is_refused(tmp_path: Path, offline: None) -> None:
    """The cached tree listing says config.json belongs to the commit: a snapshot without it is incomplete."""
    snapshot = populate_hub_cache(tmp_path / "hub", "org/tiny", model_files(tmp_path / "src", "main"))
    (snapshot / "config.json").unlink()
    with pytest.raises(
        ModelNotFound, match=r"org/tiny \(revision main\) is only partly in the Hugging Face cache"
    ):
        resolve_model("org/tiny", cache_dir=tmp_path / "hub")


@pytest.mark.parametrize(
    "name",
    [
        "/no/such/dir",
        "./missing",
        "../missing",
        "~/no-such-xlreward-model",
        "out/run/policy",
        "missing/",
        "out/model.safetensors",
        "policy.bin",
    ],
)
def test_a_missing_path_is_no_such_folder(name: str) -> None:
    with pytest.raises(ModelNotFound, match=f"^{re.escape(f'--policy {name}: no such folder')}$"):
        check_model_name(name)


@pytest.mark.parametrize("name", ["org/na--me", "org/name!", "-org/name", "org/name.git"])
def test_an_invalid_hub_id_says_so(name: str) -> None:
    with pytest.raises(
        ModelNotFound, match=re.escape(f"--policy {name}: no such folder, and not a Hugging Face model id")
    ):
        check_model_name(name)


def test_download_patterns_take_configs_tokenizers_and_root_safetensors() -> None:
    from huggingface_hub.utils import filter_repo_objects

    repo = [
        ".gitattributes",
        "README.md",
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "chat_template.jinja",
        "tokenizer.model",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
        "pytorch_model.bin",
        "consolidated.safetensors",
        "original/consolidated.00.pth",
        "original/tokenizer.model",
        "checkpoint-100/model.safetensors",
        "modeling_tiny.py",
    ]

    def taken(files: list[str], **options: bool) -> set[str]:
        patterns = download_patterns(files, **options)
        return set(filter_repo_objects(files, allow_patterns=patterns, ignore_patterns=IGNORE_PATTERNS))

    assert taken(repo) == set(repo[2:12])
    assert taken(repo, trust_remote_code=True) == {*repo[2:12], "modeling_tiny.py"}
    pickled = [
        "config.json",
        "pytorch_model.bin",
        "adapter_config.json",
        "adapter_model.bin",
        "sub/x.safetensors",
    ]
    assert taken(pickled) == set(pickled[:4])


def run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_"))
    }
    return subprocess.run(
        [sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True, timeout=60
    )


PROBE = """
import sys
from xlreward.service.model_source import ModelNotFound, check_model_name, resolve_model
try:
    {bad}
except ModelNotFound as error:
    print("bad:", error)
try:
    print("good:", resolve_model({good!r}).folder)
except ModelNotFound as error:
    print("good failed:", error)
print("heavy:", [name for name in {heavy!r} if name in sys.modules])
"""


def test_the_environment_is_honoured_and_torch_never_loads(tmp_path: Path) -> None:
    """HF_HUB_OFFLINE and HF_HUB_CACHE as a user sets them, before the process starts."""
    snapshot = populate_hub_cache(tmp_path / "hub", "org/tiny", model_files(tmp_path / "src", "main"))
    code = PROBE.format(bad="check_model_name('/no/such/dir')", good="org/tiny", heavy=HEAVY)
    done = run_python(code, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path / "hub"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "bad: --policy /no/such/dir: no such folder",
        f"good: {snapshot}",
        "heavy: []",
    ]


def test_an_unreachable_hub_falls_back_to_the_cache_then_fails_clearly(tmp_path: Path) -> None:
    """Online mode against a closed local port: the cached id resolves, the uncached one says why."""
    snapshot = populate_hub_cache(tmp_path / "hub", "org/tiny", model_files(tmp_path / "src", "main"))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    code = PROBE.format(bad="resolve_model('org/absent')", good="org/tiny", heavy=HEAVY)
    done = run_python(code, HF_HUB_CACHE=str(tmp_path / "hub"), HF_ENDPOINT=closed)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("bad: --policy org/absent (revision main) is not in the Hugging Face cache")
    assert "the Hub could not be reached (ConnectError" in lines[0]
    assert "`hf download org/absent --revision main`" in lines[0]
    assert lines[1:] == [f"good: {snapshot}", "heavy: []"]


def test_serve_offline_with_an_uncached_id_fails_at_start_naming_it(tmp_path: Path) -> None:
    """A server that could never load its model exits at once with the fetch command (exit 2, before torch),
    rather than starting and reporting the failure on /readyz; a cached id passes the same check."""
    xlreward = str(Path(sys.executable).with_name("xlreward"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")}
    command = [
        xlreward,
        "serve",
        "--policy",
        "org/not-cached",
        "--reference",
        "org/not-cached",
        "--port",
        "1",
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert "org/not-cached" in done.stderr and "hf download org/not-cached" in done.stderr
    populate_hub_cache(tmp_path / "hub", "org/tiny", model_files(tmp_path / "src", "main"))
    code = (
        "from xlreward.service.settings import ServiceSettings\n"
        "ServiceSettings(policy='org/tiny', reference='org/tiny')\n"
        "print('ok')"
    )
    assert run_python(code, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path / "hub")).stdout.strip() == "ok"
