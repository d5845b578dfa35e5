"""Where a model named by a user lives: a local folder, or a Hugging Face hub id (plus an optional revision)
resolved to its snapshot folder in the hub cache, the way vLLM and TRL users name checkpoints.

Torch-free, at import and at call time: a CLI checks ``--policy`` here before it imports torch, and
``huggingface_hub`` itself is imported only inside the functions that need it. What it raises::

    ModelNotFound (a FileNotFoundError, so older ``except FileNotFoundError`` handlers still catch it)
        the name looks like a path and no such folder exists; it is neither a folder nor a valid hub id;
        the hub id (at that revision) is not in the cache while offline or while the Hub is unreachable;
        the Hub has no such model or revision; a download failed
    ValueError
        a revision given with a local folder (revisions apply to hub ids only)

A name that is an existing folder is always that folder, even when it would also be a valid hub id
(``org/name`` as a relative path), as in transformers and vLLM.

Environment: huggingface_hub reads ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``), ``HF_HOME``,
``HF_HUB_CACHE`` (legacy: ``HUGGINGFACE_HUB_CACHE``), ``HF_ENDPOINT`` and ``HF_HUB_ETAG_TIMEOUT`` once, into
``huggingface_hub.constants``, when it is first imported; so set them before the process starts, not
after. An explicit ``cache_dir`` overrides the cache folder.

What is downloaded (``download_patterns``): only what loading a model, its tokenizer or a PEFT adapter from
the repo root reads: every ``*.json`` (config, generation config, tokenizer config, special tokens, the
safetensors index, ``adapter_config.json``), ``*.jinja`` chat templates, tokenizer files (``tokenizer*``,
sentencepiece ``*.model``, ``*.tiktoken``, ``merges.txt``, ``vocab.*``) and the root's ``*.safetensors``
(full weights or ``adapter_model.safetensors``). Pickled weights (``pytorch_model*.bin``,
``adapter_model.bin``) only when the repo root has no safetensors at all, since loading them runs the
unpickler and doubles the download where both exist. Never ``*.pth``, ``original/`` (Meta's consolidated
checkpoints) or root ``consolidated*`` files (Mistral's native format), nor weights in subfolders
(``checkpoint-*/``, quantised variants): transformers loads neither. ``*.py`` only with
``trust_remote_code``, as it is code that runs.

Time bounds: with the Hub unreachable, the first request (a model-info call waiting at most
``HF_HUB_ETAG_TIMEOUT`` seconds, default 10) fails and the cache is used instead; no name resolution or a
refused connection fails at once. Only once that request has succeeded does ``snapshot_download`` run, and
its own listing calls have no timeout in huggingface_hub (its HTTP client's default is ``timeout=None``):
a Hub that answers one request and then stalls can still stall a download.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "IGNORE_PATTERNS",
    "ModelNotFound",
    "ModelSource",
    "check_model_available",
    "check_model_name",
    "download_patterns",
    "resolve_model",
]

DEFAULT_REVISION = (
    "main"  # huggingface_hub.constants.DEFAULT_REVISION: what a hub id without a revision means
)

_CONFIG_FILES = ["*.json", "*.jinja"]
_TOKENIZER_FILES = ["tokenizer*", "*.model", "*.tiktoken", "merges.txt", "vocab.*"]
_SAFETENSORS = ["*.safetensors"]
_PICKLED_WEIGHTS = ["pytorch_model*.bin", "adapter_model.bin"]
_REMOTE_CODE = ["*.py"]
# huggingface_hub's ``*`` matches across ``/``, so the weight patterns above would reach into subfolders.
IGNORE_PATTERNS = ["*/*.safetensors", "*/*.bin", "original/*", "consolidated*"]

# A last part ending in one of these names a file, not a repo (``out/model.safetensors`` is a valid repo id).
_FILE_SUFFIXES = frozenset(
    {".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".onnx", ".h5", ".msgpack", ".json"}
    | {".jsonl", ".txt", ".yaml", ".yml", ".zip", ".tar", ".gz"}
)
_COMMIT_HASH = re.compile(r"[0-9a-f]{40}")


class ModelNotFound(FileNotFoundError):
    """The named model is not a folder here and cannot be had from the Hugging Face hub or its cache."""


@dataclass(frozen=True)
class ModelSource:
    """A model as the user named it, and the local folder that holds its config, tokenizer and weights."""

    name: str  # as the user gave it
    revision: str | None  # as the user gave it; None means the hub's default branch (hub ids only)
    folder: Path  # the folder itself, or the hub cache's snapshots/<commit> folder
    hub_id: str | None  # None for a local folder
    commit: str | None = None  # the snapshot's commit hash (hub ids only)

    def describe(self) -> str:
        """``org/name@main (cache: /.../snapshots/<commit>)`` for a hub id; the folder path otherwise."""
        if self.hub_id is None:
            return str(self.folder)
        return f"{self.hub_id}@{self.revision or DEFAULT_REVISION} (cache: {self.folder})"

    def __str__(self) -> str:
        return self.describe()


def check_model_name(name: str, *, revision: str | None = None, what: str = "--policy") -> None:
    """The cheap check a CLI runs before importing torch: ``name`` is an existing folder or a valid hub id.

    Raises ``ModelNotFound`` for a path-like name with no folder behind it (without importing
    huggingface_hub) and for an invalid hub id; ``ValueError`` for a revision given with a folder."""
    _folder_or_hub_id(name, revision, what)


def check_model_available(
    name: str, *, revision: str | None = None, what: str = "--policy", trust_remote_code: bool = False
) -> None:
    """``check_model_name``, and while offline (``HF_HUB_OFFLINE``) that a hub id's snapshot is in the cache:
    a lookup that loads nothing, so a server with a model it can never load fails at start with the fetch
    command instead of starting and reporting it on /readyz. Online, fetching is loading's job."""
    found = _folder_or_hub_id(name, revision, what)
    if isinstance(found, str):
        from huggingface_hub import constants

        if constants.is_offline_mode():
            _cached_snapshot(found, revision, what, trust_remote_code, None, None)


def resolve_model(
    name: str,
    *,
    revision: str | None = None,
    what: str = "--policy",
    trust_remote_code: bool = False,
    cache_dir: str | Path | None = None,
) -> ModelSource:
    """The folder to load ``name`` from: the folder itself, or the hub cache's snapshot of the hub id at
    ``revision`` (a branch, tag or commit hash; default ``main``), downloaded first unless offline.

    ``what`` names the option in messages (``--policy``, ``--reference``)."""
    found = _folder_or_hub_id(name, revision, what)
    if isinstance(found, Path):
        return ModelSource(name=name, revision=None, folder=found, hub_id=None)
    folder = _snapshot_folder(found, revision, what, trust_remote_code, cache_dir)
    commit = folder.name if _COMMIT_HASH.fullmatch(folder.name) else None
    return ModelSource(name=name, revision=revision, folder=folder, hub_id=found, commit=commit)


def download_patterns(
    repo_files: Iterable[str] | None = None, *, trust_remote_code: bool = False
) -> list[str]:
    """The ``allow_patterns`` for a repo whose files are ``repo_files`` (None: unknown, assume safetensors).

    Use with ``IGNORE_PATTERNS``. Pickled weights come instead of safetensors when the root has none:

    >>> download_patterns(["config.json", "pytorch_model.bin"])[-2:]
    ['pytorch_model*.bin', 'adapter_model.bin']
    >>> download_patterns(["config.json", "model.safetensors", "pytorch_model.bin"])[-1]
    '*.safetensors'
    """
    weights = _SAFETENSORS
    if repo_files is not None:
        # Public API (huggingface_hub.utils.__all__), built lazily so mypy cannot see it is exported.
        from huggingface_hub.utils import filter_repo_objects  # type: ignore[attr-defined]

        listed = list(repo_files)
        if not any(filter_repo_objects(listed, allow_patterns=_SAFETENSORS, ignore_patterns=IGNORE_PATTERNS)):
            weights = _PICKLED_WEIGHTS
    return _CONFIG_FILES + _TOKENIZER_FILES + (_REMOTE_CODE if trust_remote_code else []) + weights


def _folder_or_hub_id(name: str, revision: str | None, what: str) -> Path | str:
    """Decides, once, whether ``name`` is a local folder (returned resolved) or a hub id (returned as is)."""
    if not name.strip():
        raise ModelNotFound(f"{what} is empty: name a local folder or a Hugging Face model id like org/name")
    if revision is not None and not revision.strip():
        raise ValueError(f"{what} {name}: the revision is empty; leave it out for the default branch")
    path = Path(name).expanduser()
    if path.is_dir():
        if revision is not None:
            raise ValueError(
                f"{what} {name} is a local folder, and revisions apply to Hugging Face hub ids only: "
                f"drop the revision ({revision}), or name the model as org/name"
            )
        return path.resolve()
    if path.exists():
        raise ModelNotFound(f"{what} {name}: is a file; name the folder that holds config.json")
    if _looks_like_path(name):
        raise ModelNotFound(f"{what} {name}: no such folder")
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id  # type: ignore[attr-defined]  # public, lazily exported

    try:
        validate_repo_id(name)
    except HFValidationError as error:
        raise ModelNotFound(
            f"{what} {name}: no such folder, and not a Hugging Face model id ({error}): "
            "name a local folder, or a hub id like org/name"
        ) from error
    return name


def _looks_like_path(name: str) -> bool:
    separators = max(name.count("/"), name.count(os.sep))
    return (
        os.path.isabs(name)
        or name.startswith(("./", "../", "~", "." + os.sep, ".." + os.sep))
        or name.endswith(("/", os.sep))
        or separators >= 2
        or Path(name).suffix.lower() in _FILE_SUFFIXES
    )


def _snapshot_folder(
    hub_id: str, revision: str | None, what: str, trust_remote_code: bool, cache_dir: str | Path | None
) -> Path:
    """Downloads what is missing when the Hub answers; otherwise the cache must already hold the snapshot."""
    from huggingface_hub import constants

    if constants.is_offline_mode():
        return _cached_snapshot(hub_id, revision, what, trust_remote_code, cache_dir, None)
    try:
        repo_files = _repo_files(hub_id, revision)
    except _hub_unavailable() as error:
        return _cached_snapshot(hub_id, revision, what, trust_remote_code, cache_dir, error)
    return _download(
        hub_id, revision, what, download_patterns(repo_files, trust_remote_code=trust_remote_code), cache_dir
    )


def _hub_unavailable() -> tuple[type[Exception], ...]:
    """What a Hub request raises when the Hub cannot or will not serve it (unreachable, 4xx, 5xx, offline)."""
    import httpx2  # huggingface_hub's HTTP client
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    return (httpx2.TransportError, HfHubHTTPError, OfflineModeIsEnabled)


def _repo_files(hub_id: str, revision: str | None) -> list[str] | None:
    """The repo's file list at ``revision``: one request, bounded by ``HF_HUB_ETAG_TIMEOUT``."""
    from huggingface_hub import HfApi, constants

    info = HfApi().model_info(hub_id, revision=revision, timeout=constants.HF_HUB_ETAG_TIMEOUT)
    return None if info.siblings is None else [sibling.rfilename for sibling in info.siblings]


def _download(
    hub_id: str, revision: str | None, what: str, patterns: list[str], cache_dir: str | Path | None
) -> Path:
    import httpx2
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = _snapshot(hub_id, revision, cache_dir, patterns, local_files_only=False)
    except (httpx2.HTTPError, LocalEntryNotFoundError) as error:
        raise ModelNotFound(
            f"{what} {_label(hub_id, revision)}: downloading it into the Hugging Face cache "
            f"({_cache_folder(cache_dir)}) failed ({_first_line(error)}): retry, or pass a local folder"
        ) from error
    return Path(folder)


def _snapshot(
    hub_id: str,
    revision: str | None,
    cache_dir: str | Path | None,
    patterns: list[str],
    *,
    local_files_only: bool,
) -> str:
    """``snapshot_download`` of what loading reads (``patterns``, never ``IGNORE_PATTERNS``)."""
    from huggingface_hub import snapshot_download

    folder: str = snapshot_download(
        hub_id,
        revision=revision,
        cache_dir=cache_dir,
        allow_patterns=patterns,
        ignore_patterns=IGNORE_PATTERNS,
        local_files_only=local_files_only,
    )
    return folder


def _cached_snapshot(
    hub_id: str,
    revision: str | None,
    what: str,
    trust_remote_code: bool,
    cache_dir: str | Path | None,
    why: Exception | None,
) -> Path:
    """The cached snapshot of ``hub_id`` at ``revision``; ``why`` the Hub did not serve it (None: offline)."""
    from huggingface_hub.errors import IncompleteSnapshotError, LocalEntryNotFoundError

    try:
        patterns = download_patterns(trust_remote_code=trust_remote_code)
        folder = _snapshot(hub_id, revision, cache_dir, patterns, local_files_only=True)
    except IncompleteSnapshotError as error:
        raise ModelNotFound(
            f"{what} {_label(hub_id, revision)} is only partly in the Hugging Face cache "
            f"({_cache_folder(cache_dir)}): {_first_line(error)} {_fetch_advice(hub_id, revision, cache_dir)}"
        ) from error
    except LocalEntryNotFoundError as error:
        raise ModelNotFound(_not_cached_message(hub_id, revision, what, cache_dir, why)) from why or error
    return Path(folder)


def _not_cached_message(
    hub_id: str, revision: str | None, what: str, cache_dir: str | Path | None, why: Exception | None
) -> str:
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    head = f"{what} {_label(hub_id, revision)} is not in the Hugging Face cache ({_cache_folder(cache_dir)})"
    if why is None:
        return f"{head} and {_offline_variable()} is set: {_fetch_advice(hub_id, revision, cache_dir)}"
    if isinstance(why, RevisionNotFoundError):
        return f"{head}, and the Hub has no revision {revision} of {hub_id}: check the revision"
    if isinstance(why, RepositoryNotFoundError):  # also gated repos without access
        return (
            f"{head}, and the Hub refused it ({_first_line(why)}): check the id, or log in with "
            "`hf auth login` if the repo is private or gated"
        )
    advice = _fetch_advice(hub_id, revision, cache_dir)
    return f"{head}, and the Hub could not be reached ({_first_line(why)}): {advice}"


def _fetch_advice(hub_id: str, revision: str | None, cache_dir: str | Path | None) -> str:
    options = f"--revision {revision or DEFAULT_REVISION}" + (
        f" --cache-dir {cache_dir}" if cache_dir else ""
    )
    return (
        f"fetch it first with `hf download {hub_id} {options}` (before huggingface_hub 1.0: "
        f"`huggingface-cli download {hub_id} {options}`), or pass a local folder"
    )


def _offline_variable() -> str:
    """Which variable switched huggingface_hub offline (it reads either)."""
    if not os.environ.get("HF_HUB_OFFLINE") and os.environ.get("TRANSFORMERS_OFFLINE"):
        return "TRANSFORMERS_OFFLINE"
    return "HF_HUB_OFFLINE"


def _label(hub_id: str, revision: str | None) -> str:
    return f"{hub_id} (revision {revision or DEFAULT_REVISION})"


def _cache_folder(cache_dir: str | Path | None) -> str:
    from huggingface_hub import constants

    return str(Path(cache_dir or constants.HF_HUB_CACHE).expanduser())


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}".rstrip(": ")
