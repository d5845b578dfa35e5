"""A Hugging Face hub cache laid out from a local folder, offline, as ``snapshot_download`` would leave it.

The layout (huggingface_hub's file_download.py and _snapshot_download.py; the cache folder is what
``HF_HUB_CACHE`` names, by default ``$HF_HOME/hub``)::

    <cache_dir>/models--<org>--<name>/
        blobs/<etag>                  file contents; the etag is the git blob sha1 of a regular file and the
                                      sha256 of an LFS file (weights, sentencepiece models, >= 10 MiB)
        snapshots/<commit>/<path>     relative symlinks to ../../blobs/<etag> (copies where links fail)
        refs/<revision>               the commit hash, with no trailing newline (read back unstripped)
        trees/<commit>.json           the commit's file listing, which snapshot_download writes and then uses
                                      offline to refuse an incomplete snapshot

With that, ``snapshot_download(repo_id, revision=..., local_files_only=True)``, ``hf_hub_download`` and
transformers' ``from_pretrained(repo_id, revision=...)`` under ``HF_HUB_OFFLINE=1`` find the files.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

# The Hub's default .gitattributes stores these in LFS, as it does any file of 10 MiB or more.
LFS_SUFFIXES = frozenset(
    [
        ".safetensors",
        ".bin",
        ".pt",
        ".pth",
        ".ckpt",
        ".h5",
        ".msgpack",
        ".onnx",
        ".model",
        ".gguf",
        ".zip",
        ".gz",
    ]
)
LFS_MIN_BYTES = 10 * 1024 * 1024


def populate_hub_cache(
    cache_dir: Path, repo_id: str, source_folder: Path, *, revision: str = "main", commit: str | None = None
) -> Path:
    """Caches every file under ``source_folder`` as ``repo_id`` at ``revision`` (a branch or tag name, or the
    commit itself); returns the snapshot folder. ``commit`` defaults to a hash of the files, so different
    contents get different snapshots and one cache can hold several revisions."""
    files = sorted(path for path in source_folder.rglob("*") if path.is_file())
    entries = {
        path.relative_to(source_folder).as_posix(): _store_blob(cache_dir, repo_id, path) for path in files
    }
    if commit is None:
        listing = json.dumps(entries, sort_keys=True).encode()
        commit = hashlib.sha1(listing).hexdigest()
    storage = cache_dir / repo_folder(repo_id)
    snapshot = storage / "snapshots" / commit
    for relative, entry in entries.items():
        _link(storage / "blobs" / entry["etag"], snapshot / relative)
    if revision != commit:
        (storage / "refs" / revision).parent.mkdir(parents=True, exist_ok=True)
        (storage / "refs" / revision).write_text(commit)
    tree: dict[str, Any] = {
        "format_version": 1,
        "files": {relative: entry["tree"] for relative, entry in entries.items()},
    }
    (storage / "trees").mkdir(parents=True, exist_ok=True)
    (storage / "trees" / f"{commit}.json").write_text(json.dumps(tree, indent=1))
    return snapshot


def repo_folder(repo_id: str) -> str:
    """``models--org--name``: huggingface_hub's repo_folder_name for a model repo."""
    return "--".join(["models", *repo_id.split("/")])


def _store_blob(cache_dir: Path, repo_id: str, path: Path) -> dict[str, Any]:
    """Writes one file's blob; returns its etag and its entry in the tree listing."""
    data = path.read_bytes()
    if path.suffix in LFS_SUFFIXES or len(data) >= LFS_MIN_BYTES:
        sha256 = hashlib.sha256(data).hexdigest()
        pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {len(data)}\n"
        etag = sha256
        tree = {
            "size": len(data),
            "blob_id": _git_blob_id(pointer.encode()),
            "lfs_sha256": sha256,
            "lfs_size": len(data),
        }
    else:
        etag = _git_blob_id(data)
        tree = {"size": len(data), "blob_id": etag}
    blob = cache_dir / repo_folder(repo_id) / "blobs" / etag
    blob.parent.mkdir(parents=True, exist_ok=True)
    if not blob.exists():
        blob.write_bytes(data)
    return {"etag": etag, "tree": tree}


def _git_blob_id(data: bytes) -> str:
    """The git object id of a file's contents: sha1 of ``blob <size>\\0<data>``."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _link(blob: Path, pointer: Path) -> None:
    pointer.parent.mkdir(parents=True, exist_ok=True)
    pointer.unlink(missing_ok=True)
    try:
        pointer.symlink_to(os.path.relpath(blob, pointer.parent))
    except OSError:  # no symlinks here (Windows without developer mode): huggingface_hub copies too
        shutil.copyfile(blob, pointer)
