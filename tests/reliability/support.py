"""Helpers shared by the reliability tests and the soak command (no pytest imports here)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from airflow_provider_stablecog.utils.storage import MANIFEST_NAME


class MemoryStateStore(dict):
    """Stands in for Airflow 3.3's ``context["task_state_store"]`` (same get/set contract)."""

    def set(self, key: str, value: Any, **_kwargs: Any) -> None:
        assert value is not None
        self[key] = value


def make_context(store: MemoryStateStore | None = None) -> dict[str, Any]:
    from airflow.sdk.execution_time.context import OutletEventAccessors

    return {
        "task_state_store": store if store is not None else MemoryStateStore(),
        "outlet_events": OutletEventAccessors(),
    }


def manifest_lines(destination: str | Path) -> list[dict[str, Any]]:
    """Every record of the manifest, duplicates included (``read_manifest`` keeps the last one)."""
    path = Path(destination) / MANIFEST_NAME
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def destination_problems(destination: str | Path) -> list[str]:
    """What is inconsistent between a destination's manifest and its files (empty: consistent)."""
    dest = Path(destination)
    problems: list[str] = []
    records = manifest_lines(dest)
    keys = Counter(r["key"] for r in records)
    problems += [f"key twice in the manifest: {k}" for k, n in keys.items() if n > 1]
    files = {p.name for p in dest.iterdir() if p.is_file()} - {MANIFEST_NAME}
    problems += [
        f"temporary file left: {name}"
        for name in sorted(files)
        if name.endswith(".part") or name.startswith(".")
    ]
    paths = Counter(Path(r["path"]).name for r in records if r.get("path"))
    problems += [f"two records share the file {name}" for name, n in paths.items() if n > 1]
    for record in records:
        if record["status"] in ("upscaled", "skipped") and not (
            record.get("path") and (dest / Path(record["path"]).name).is_file()
        ):
            problems.append(f"{record['input']}: recorded {record['status']} but its file is missing")
        if record["status"] == "failed" and not record.get("error"):
            problems.append(f"{record['input']}: failed without an error code")
    images = {name for name in files if not name.endswith(".part") and not name.startswith(".")}
    problems += [f"file not in the manifest: {name}" for name in sorted(images - set(paths))]
    return problems
