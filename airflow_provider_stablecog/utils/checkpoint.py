"""Checkpoints of finished items, so a retried task never pays twice for an image.

Two places remember what is done, and both are read on start:

* Airflow 3.3's ``context["task_state_store"]`` (per task instance, survives task retries): the
  output ID and URL of every item as soon as its upscale is answered, before the download. Values
  are kept small (≤ ~64 KB each, Airflow's default policy) by sharding them.
* The destination's ``manifest.jsonl`` (survives across DAG runs): items recorded as upscaled whose
  file is still there.

Writes are debounced (``flush_interval``) and made from the coordinating thread only.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

STATE_PREFIX = "stablecog.upscale"
SHARD_SIZE = 250


class StateStore(Protocol):
    def get(self, key: str, default: Any = None) -> Any: ...

    def set(self, key: str, value: Any) -> None: ...


class Checkpoint:
    """Done items by input key: ``{"output_id", "url", "path", "width", "height"}``."""

    def __init__(self, store: StateStore | None = None, *, flush_interval: float = 2.0) -> None:
        self.store = store
        self.flush_interval = flush_interval
        self.records: dict[str, dict[str, Any]] = {}
        self._order: list[str] = []
        self._position: dict[str, int] = {}
        self._dirty_shards: set[int] = set()
        self._last_flush = time.monotonic()

    def load(self) -> dict[str, dict[str, Any]]:
        """Read the task's earlier tries from the state store."""
        if self.store is None:
            return {}
        meta = self.store.get(f"{STATE_PREFIX}.meta", None) or {}
        for shard in range(int(meta.get("shards", 0))):
            for key, compact in (self.store.get(f"{STATE_PREFIX}.shard.{shard}", None) or {}).items():
                self._remember(key, _expand(compact), mark_dirty=False)
        return dict(self.records)

    def mark(self, key: str, record: dict[str, Any]) -> None:
        self._remember(key, record, mark_dirty=True)

    def _remember(self, key: str, record: dict[str, Any], *, mark_dirty: bool) -> None:
        if key not in self._position:
            self._position[key] = len(self._order)
            self._order.append(key)
        self.records[key] = record
        if mark_dirty:
            self._dirty_shards.add(self._position[key] // SHARD_SIZE)

    def maybe_flush(self) -> None:
        if self._dirty_shards and time.monotonic() - self._last_flush >= self.flush_interval:
            self.flush()

    def flush(self) -> None:
        """Write the changed shards (and the shard count) to the state store."""
        self._last_flush = time.monotonic()
        if self.store is None or not self._dirty_shards:
            self._dirty_shards.clear()
            return
        for shard in sorted(self._dirty_shards):
            keys = self._order[shard * SHARD_SIZE : (shard + 1) * SHARD_SIZE]
            self.store.set(f"{STATE_PREFIX}.shard.{shard}", {k: _compact(self.records[k]) for k in keys})
        self.store.set(f"{STATE_PREFIX}.meta", {"shards": (len(self._order) + SHARD_SIZE - 1) // SHARD_SIZE})
        self._dirty_shards.clear()


_FIELDS = ("output_id", "url", "path", "width", "height")


def _compact(record: dict[str, Any]) -> list[Any]:
    return [record.get(f) for f in _FIELDS]


def _expand(compact: Any) -> dict[str, Any]:
    values = list(compact) if isinstance(compact, (list, tuple)) else []
    return dict(zip(_FIELDS, values + [None] * (len(_FIELDS) - len(values))))
