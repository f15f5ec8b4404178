"""Destination handling: safe file names, atomic writes and the ``manifest.jsonl``.

A destination is a local path or any :class:`~airflow.sdk.ObjectStoragePath` URL
(``s3://bucket/prefix``, ``file:///data/out``, ...). Everything written there goes to a temporary
name first and is renamed into place, so a killed task never leaves a partial image or manifest.

``manifest.jsonl`` holds one JSON record per unique input: the human-readable view of the
destination's ledger. The truth is the ledger folder ``.stablecog/`` (see
:mod:`airflow_provider_stablecog.ledger`), which also reads manifests of older versions.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterable
from typing import IO, TYPE_CHECKING, Any

from airflow_provider_stablecog.ledger import MANIFEST_FIELDS, MANIFEST_NAME
from airflow_provider_stablecog.utils import is_local

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

__all__ = [
    "MANIFEST_FIELDS",
    "MANIFEST_NAME",
    "AtomicWrite",
    "read_manifest",
    "resolve_destination",
    "write_manifest",
]


def resolve_destination(destination: str | os.PathLike[str] | ObjectStoragePath) -> ObjectStoragePath:
    """A local path or a URL → ObjectStoragePath (local paths become absolute ``file://`` paths)."""
    from airflow.sdk import ObjectStoragePath

    if isinstance(destination, ObjectStoragePath):
        return destination
    text = os.fspath(destination)
    if "://" not in text:
        text = "file://" + os.path.abspath(os.path.expanduser(text))
    return ObjectStoragePath(text)


def atomic_writer(target: ObjectStoragePath) -> AtomicWrite:
    return AtomicWrite(target)


class AtomicWrite:
    """``with AtomicWrite(path) as w: w.open().write(...)``: the target appears whole or not at all.

    Locally the data goes to a temporary sibling that is renamed into place. On an object store
    (no rename, and an object exists only once its upload is closed) it goes to a local temporary
    file that is uploaded in one piece on success: a PUT is atomic. ``temp`` can be read back
    (to verify the image) before the target is written.
    """

    def __init__(self, target: ObjectStoragePath) -> None:
        self.target = target
        self._local_target = is_local(target)
        if self._local_target:
            self.temp = target.parent / f".{target.name}.{uuid.uuid4().hex[:12]}.part"
        else:
            import tempfile

            from airflow.sdk import ObjectStoragePath

            fd, name = tempfile.mkstemp(prefix="stablecog-", suffix=".part")
            os.close(fd)
            self.temp = ObjectStoragePath("file://" + name)
        self._fh: IO[bytes] | None = None

    def open(self) -> IO[bytes]:
        """A fresh, empty temporary file (may be called again to restart a download)."""
        if self._fh is not None:
            self._fh.close()
        self._fh = self.temp.open("wb")
        return _NoCloseFile(self._fh)  # type: ignore[return-value]

    def __enter__(self) -> AtomicWrite:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._fh is not None:
            self._fh.flush()
            self._fh.close()
        try:
            if exc_type is None and self._fh is not None:
                if self._local_target:
                    os.replace(self.temp.path, self.target.path)
                else:  # one upload through Airflow's filesystem for the path (see ledger._create)
                    self.target.fs.put_file(self.temp.path, self.target.path)
        finally:
            if self.temp.exists():
                self.temp.unlink()


class _NoCloseFile:
    """Wraps a file so ``with open_target() as fh`` in the client leaves closing to AtomicWrite."""

    def __init__(self, fh: IO[bytes]) -> None:
        self._fh = fh

    def write(self, data: bytes) -> int:
        return self._fh.write(data)

    def __enter__(self) -> _NoCloseFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._fh.flush()


def write_bytes_atomic(target: ObjectStoragePath, data: bytes) -> None:
    with AtomicWrite(target) as w:
        w.open().write(data)


def read_manifest(destination: ObjectStoragePath | str) -> dict[str, dict[str, Any]]:
    """The manifest's records by key (the last record of a key wins); empty when there is none."""
    manifest = resolve_destination(destination) / MANIFEST_NAME
    try:
        text = manifest.fs.cat_file(manifest.path).decode("utf-8", errors="replace")
    except FileNotFoundError:
        return {}
    records: dict[str, dict[str, Any]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a damaged line is ignored: its input is simply done again
        if isinstance(record, dict) and isinstance(record.get("key"), str):
            records[record["key"]] = record
    return records


def write_manifest(
    destination: ObjectStoragePath | str, records: Iterable[dict[str, Any]]
) -> ObjectStoragePath:
    """Replace the manifest atomically with ``records`` (one JSON object per line)."""
    target = resolve_destination(destination) / MANIFEST_NAME
    body = "".join(
        json.dumps({f: r.get(f) for f in MANIFEST_FIELDS}, sort_keys=False) + "\n" for r in records
    )
    write_bytes_atomic(target, body.encode("utf-8"))
    return target


def ensure_directory(path: ObjectStoragePath, on_error: Callable[[Exception], Exception]) -> None:
    """Create the destination (a no-op on object stores) and prove it is writable."""
    try:
        fs = path.fs  # Airflow's, as every later read and write (see ledger._create)
        fs.makedirs(path.path, exist_ok=True)
        probe = f"{path.path.rstrip('/')}/.stablecog-write-test-{uuid.uuid4().hex[:8]}"
        fs.pipe_file(probe, b"")
        fs.rm_file(probe)
    except Exception as exc:
        raise on_error(exc) from None
