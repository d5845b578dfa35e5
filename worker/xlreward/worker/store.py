"""Where a run's unit results live: written once per key, whoever writes first wins.

That write-once rule is what makes the tasks idempotent: a task redelivered after its worker died, or run
twice by two workers, computes the same thing again and finds its result already stored; nothing lands
twice. Embedded runs keep results in the output folder; Celery runs keep them in Redis, where every
worker can reach them, and whoever follows the run mirrors them into the output folder as they appear
(``MirroredStore``), so finished results outlive a Redis that restarts empty.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

Kind = str  # "generated" | "scored"


def unit_key(unit_id: str, language: str) -> str:
    return json.dumps([unit_id, language], ensure_ascii=False)


class ResultStore(Protocol):
    def put_once(self, kind: Kind, key: str, value: dict[str, Any]) -> bool:
        """Store ``value`` unless ``key`` already has one; True if this call stored it."""

    def get(self, kind: Kind, key: str) -> dict[str, Any] | None: ...

    def keys(self, kind: Kind) -> set[str]: ...


class DirectoryStore:
    """One JSON file per key; ``os.link`` creates the final name atomically or fails if it exists."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def _path(self, kind: Kind, key: str) -> Path:
        return self.root / kind / (hashlib.sha256(key.encode()).hexdigest()[:32] + ".json")

    def put_once(self, kind: Kind, key: str, value: dict[str, Any]) -> bool:
        path = self._path(kind, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as tmp:
            json.dump({"key": key, "value": value}, tmp, ensure_ascii=False)
        try:
            os.link(tmp.name, path)
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp.name)

    def get(self, kind: Kind, key: str) -> dict[str, Any] | None:
        path = self._path(kind, key)
        if not path.exists():
            return None
        value: dict[str, Any] = json.loads(path.read_text())["value"]
        return value

    def keys(self, kind: Kind) -> set[str]:
        folder = self.root / kind
        if not folder.is_dir():
            return set()
        return {json.loads(path.read_text())["key"] for path in folder.glob("*.json")}


class RedisStore:
    """One Redis hash per (run, kind); HSETNX is the atomic write-once. ``store_id`` names the run's
    output folder's results (``annotate.bind_out_dir``), not just its spec: the same spec annotated into
    another folder (the next iteration, with another policy served) must not find this one's samples."""

    def __init__(self, url: str, store_id: str) -> None:
        import redis

        self.client = redis.Redis.from_url(url, decode_responses=True)
        self.store_id = store_id
        self.prefix = f"xlreward:run:{store_id}"

    def put_once(self, kind: Kind, key: str, value: dict[str, Any]) -> bool:
        return bool(self.client.hsetnx(f"{self.prefix}:{kind}", key, json.dumps(value, ensure_ascii=False)))

    def get(self, kind: Kind, key: str) -> dict[str, Any] | None:
        raw = self.client.hget(f"{self.prefix}:{kind}", key)
        return None if raw is None else dict(json.loads(str(raw)))

    def keys(self, kind: Kind) -> set[str]:
        return {str(key) for key in self.client.hkeys(f"{self.prefix}:{kind}")}

    def get_many(self, kind: Kind, keys: list[str]) -> list[dict[str, Any] | None]:
        raws = self.client.hmget(f"{self.prefix}:{kind}", keys) if keys else []
        return [None if raw is None else dict(json.loads(str(raw))) for raw in raws]


class MirroredStore:
    """A Celery run's results: in Redis, where the workers write them, and mirrored into the run's output
    folder (the embedded runs' ``DirectoryStore``) by whoever follows the run (``sync``). Reads see both,
    the folder first; ``restore`` puts the mirrored results back into a Redis that lost them, so that the
    workers do not redo them. Writes go to Redis (the mirror only copies)."""

    def __init__(self, primary: RedisStore, mirror: DirectoryStore) -> None:
        self.primary, self.mirror = primary, mirror
        self._mirrored: dict[Kind, set[str]] = {}  # the folder's keys, read once (only ``sync`` adds)

    def mirrored(self, kind: Kind) -> set[str]:
        if kind not in self._mirrored:
            self._mirrored[kind] = self.mirror.keys(kind)
        return self._mirrored[kind]

    def put_once(self, kind: Kind, key: str, value: dict[str, Any]) -> bool:
        return self.primary.put_once(kind, key, value)

    def get(self, kind: Kind, key: str) -> dict[str, Any] | None:
        if key in self.mirrored(kind):
            return self.mirror.get(kind, key)
        return self.primary.get(kind, key)

    def keys(self, kind: Kind) -> set[str]:
        return self.primary.keys(kind) | self.mirrored(kind)

    def sync(self, kinds: Iterable[Kind]) -> None:
        """Copies the results that appeared in Redis since the last call into the folder."""
        for kind in kinds:
            new = sorted(self.primary.keys(kind) - self.mirrored(kind))
            for key, value in zip(new, self.primary.get_many(kind, new), strict=True):
                if value is not None:
                    self.mirror.put_once(kind, key, value)
                    self.mirrored(kind).add(key)

    def restore(self, kinds: Iterable[Kind]) -> None:
        """Writes the mirrored results that Redis lacks back into it (once: write-once as ever)."""
        for kind in kinds:
            for key in sorted(self.mirrored(kind) - self.primary.keys(kind)):
                value = self.mirror.get(kind, key)
                if value is not None:
                    self.primary.put_once(kind, key, value)


def open_store(*, broker_url: str | None, store_id: str, out_dir: Path) -> ResultStore:
    """Celery runs (a broker): Redis, mirrored into ``out_dir/state``; embedded runs: ``out_dir/state``."""
    folder = DirectoryStore(out_dir / "state")
    return MirroredStore(RedisStore(broker_url, store_id), folder) if broker_url else folder
