"""Small helpers shared by the client, hook and operators (no Airflow import at module level)."""

from __future__ import annotations

from typing import Any


def is_local(path: Any) -> bool:
    """An ``ObjectStoragePath`` on this machine's filesystem (renames are atomic, paths are shown bare)."""
    return path.protocol in ("file", "local", "")
