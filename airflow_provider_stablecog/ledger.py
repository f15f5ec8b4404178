"""The credit ledger: the one item record, the one rule for "already paid", and where both live.

Everything the provider knows about money goes through this module:

* :class:`ItemRecord` is the record of one unique input. The manifest line, the state-store value
  and the XCom record are all derived from it (:meth:`ItemRecord.manifest`,
  :meth:`ItemRecord.state_value`, :meth:`ItemRecord.xcom`); nothing else lists its fields.
* :attr:`ItemRecord.paid` is the single rule "this item is already paid for": the server answered
  it with a result URL. The operator resumes from it, the engine skips it, the credits sensor and
  the dry run count no credit for it (:func:`credits_needed`).
* :func:`item_key` is the item's identity in every store: a hash of what changes the output (the
  input and the model), so a new model re-upscales and no presigned URL's signature is ever
  stored — the clear input is kept only in its redacted form (``input``).

Durability is **write-ahead, per item** (:class:`Ledger`): before an upscale request is sent the
item is recorded as *sent* (with a random ``nonce``), and the moment its answer arrives the answer
is recorded, before anything depends on it — each version in one durable store: the destination
when there is one (it survives across tries, runs and tasks, and every one of them reads it), else
Airflow's ``task_state_store`` (per task instance, survives retries; Airflow 3.3). An answer the
destination cannot take goes to the state store instead. After a crash the next try knows which
items were answered (skip them, download again if the file is missing) and which were in flight
without an answer (they may have been charged: see ``pending``). Versions in either store carry a
time-based ``rev``, so the newest wins wherever it was written. A downloaded file costs no record
of its own (:meth:`Ledger.keep`): it is written whole or not at all, so "answered, file present"
already means done; its path and size go into the try's segment.

At a destination the truth is the folder ``.stablecog/`` beside the images:

* ``.stablecog/items/<key>.<rev>.json`` — one object per record *version*, only ever created,
  never rewritten, so tasks sharing a destination (mapped chunks, overlapping runs) cannot lose
  each other's records on any filesystem or object store. The newest ``rev`` of a key wins; a
  damaged object falls back to the previous version.
* ``.stablecog/segments/<rev>-<id>.jsonl`` — at the end of every try, the records of that try in
  one object, so a resume reads a destination of 10,000 items with two listings and a few GETs
  instead of one GET per item. Item objects that a segment covers are then removed.
* ``manifest.jsonl`` — the human-readable view, regenerated from the truth at the end of every
  try. A manifest written by an older version of the provider is read as a segment.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from airflow_provider_stablecog.utils import is_local

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

UPSCALED, SKIPPED, FAILED, NOT_STARTED = "upscaled", "skipped", "failed", "not_started"
#: the done status of a generation item (the engine's job kind says which one applies)
GENERATED = "generated"
LEDGER_DIR = ".stablecog"
ITEMS_DIR = "items"
SEGMENTS_DIR = "segments"
MANIFEST_NAME = "manifest.jsonl"
STATE_PREFIX = "stablecog.ledger"
#: Airflow's default ``[state_store] max_value_storage_bytes``; one record is far below it.
STATE_VALUE_LIMIT = 65535
_KEY = re.compile(r"^[0-9a-f]{32}$")
_IMAGE_STEM = re.compile(r"^[0-9a-f]{32}(-[0-9]+)?$")
_REV_PATTERN = r"[0-9a-z]+-[0-9a-f]+"  # what new_rev() makes
_REV = re.compile(f"^{_REV_PATTERN}$")
_ITEM_NAME = re.compile(rf"^(?P<key>[0-9a-f]{{32}})\.(?P<rev>{_REV_PATTERN})\.json$")
IMAGE_EXTENSION = "jpg"
#: segments kept before the next finishing task merges them into one
MAX_SEGMENTS = 16
#: item objects already covered by a segment that may stay before a finishing task removes them
MAX_STALE_VERSIONS = 5000

log = logging.getLogger(__name__)


def item_key(identity: str, model_id: str | None = None) -> str:
    """The ledger key of an input: a hash of its identity and the model (32 hex characters).

    ``identity`` is :attr:`InputItem.key <airflow_provider_stablecog.utils.inputs.InputItem.key>`;
    it may hold a presigned URL's signature and is never stored, only hashed.
    """
    model = (model_id or "").strip().lower()
    return hashlib.sha256(f"{model}\n{identity}".encode()).hexdigest()[:32]


def image_name(key: str, index: int | None = None) -> str:
    """The image file of a key at the destination: safe, deterministic, never from the server.

    ``index``: output ``index`` of a job with several outputs (``<key>-<index>.jpg``).
    """
    return f"{key}.{IMAGE_EXTENSION}" if index is None else f"{key}-{index}.{IMAGE_EXTENSION}"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def new_rev() -> str:
    """A version id that sorts by time (ns, base 36) with a random tail against ties."""
    return f"{_base36(time.time_ns()):>13}".replace(" ", "0") + "-" + uuid.uuid4().hex[:6]


def _base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while n:
        n, r = divmod(n, 36)
        out = digits[r] + out
    return out or "0"


@dataclass
class ItemRecord:
    """What is known about one unique input, across all tries and runs of its destination.

    :param key: :func:`item_key` of the input and model.
    :param input: the input as shown to people (credentials and presigned signatures redacted).
    :param credits_charged: credits this item cost, across every try (answers that were charged).
    :param pending: nonces of requests sent and not (yet) answered. Non-empty after a crash means
        "in flight when the task died: it may have been charged".
    :param sent_by: the task instance that sent the item's last request (``dag/run/task[/map]``),
        so a task's spend across its tries can be read back from any store (``max_credits``).
    :param cost: the credits one request for this item costs when charged (an upscale 1, a
        generation its ``num_outputs``).
    :param possibly_double_charged: requests of this item that may have been charged without an
        answer (in flight at a crash, or an answer lost after the server charged) and were sent
        again — each may have cost its price once more than :attr:`credits_charged` says.
    :param output_ids: every output of a job with several (a generation); ``output_id`` and
        ``url`` are then its first. Empty for an upscale (one output).
    :param urls: the result URLs of ``output_ids``, in the same order.
    :param paths: where each of them was written at the destination, in the same order.
    :param seed: the seed a generation was sent with (set by the provider when none was given).
    :param sent_at: when the oldest request still in :attr:`pending` was recorded (UTC, ISO 8601):
        a lost answer is looked for among the outputs created after it.
    :param adopted: answers lost (or in flight at a crash) that were found again in Stablecog's
        outputs listing and adopted instead of paying again.
    """

    key: str
    input: str = ""
    model_id: str | None = None
    status: str = NOT_STARTED
    output_id: str | None = None
    url: str | None = None
    path: str | None = None
    width: int | None = None
    height: int | None = None
    error: str | None = None
    message: str | None = None
    credits_charged: int = 0
    possibly_double_charged: int = 0
    pending: list[str] = field(default_factory=list)
    sent_by: str | None = None
    cost: int = 1
    finished_at: str | None = None
    rev: str | None = None
    output_ids: list[str] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    seed: int | None = None
    sent_at: str | None = None
    adopted: int = 0

    # -- the one rule --------------------------------------------------------------------------

    @property
    def paid(self) -> bool:
        """Already paid for: the server answered with a result URL. Never pay for it again."""
        return bool(self.url)

    @property
    def possibly_spent(self) -> int:
        """The most this item may have cost: its charged answers, its resends that may have been
        charged twice, and its requests still without an answer (each may have been charged)."""
        unknown = self.possibly_double_charged + (0 if self.paid else len(self.pending))
        return self.credits_charged + unknown * max(1, self.cost)

    @property
    def in_flight_at_crash(self) -> bool:
        """Sent by an earlier try that ended before the answer: it may have been charged."""
        return bool(self.pending) and not self.paid

    # -- transitions -----------------------------------------------------------------------------

    def fail(self, status: str, code: str, message: str) -> None:
        self.status, self.error, self.message = status, code, message
        self.finished_at = _now()

    def downloaded(self, path: str, width: int, height: int, *, status: str = UPSCALED) -> None:
        """Every output is at the destination: ``path`` is the first; a multi-output job's are in
        :attr:`paths` (see :meth:`downloaded_output`)."""
        self.path, self.width, self.height = path, width, height
        self.status, self.error, self.message = status, None, None
        self.finished_at = _now()

    def downloaded_output(self, index: int, path: str) -> None:
        """Output ``index`` of a multi-output job was written to ``path``."""
        while len(self.paths) <= index:
            self.paths.append("")
        self.paths[index] = path

    def answered(
        self,
        output_id: str,
        url: str | None,
        *,
        charged: bool,
        cost: int = 1,
        outputs: list[tuple[str, str | None]] | None = None,
    ) -> None:
        """The server answered: ``output_id``/``url`` (the first output), ``cost`` credits if ``charged``.

        ``outputs``: every output of a job with several (a generation), first included.
        """
        self.output_id, self.url = output_id, url
        if outputs is not None:
            self.output_ids = [o for o, _ in outputs]
            self.urls = [u or "" for _, u in outputs]
            self.paths = []
        self.credits_charged += cost if charged else 0
        self.error = self.message = None
        self.finished_at = _now()

    def result_urls(self) -> list[str]:
        """The URL of every output (one for an upscale)."""
        return list(self.urls) if self.urls else ([self.url] if self.url else [])

    # -- views -----------------------------------------------------------------------------------

    def manifest(self) -> dict[str, Any]:
        """The manifest line (and the durable record at the destination): every field, the lists
        copied (a plain read, not ``dataclasses.asdict``: this runs several times per item)."""
        record = {name: getattr(self, name) for name in MANIFEST_FIELDS}
        for name in _LIST_FIELDS:
            record[name] = list(record[name])
        return record

    def xcom(self) -> dict[str, Any]:
        """The compact XCom record: no image bytes, no secrets, empty fields left out."""
        multi = bool(self.output_ids)  # a generation: the lists say it all
        record = {
            "input": self.input,
            "status": self.status,
            "output_id": None if multi else self.output_id,
            "url": None if multi else self.url,
            "path": None if multi else self.path,
            "error": self.error,
            "possibly_double_charged": self.possibly_double_charged or None,
            "output_ids": self.output_ids or None,
            "urls": self.urls or None,
            "paths": self.paths or None,
            "seed": self.seed,
            "adopted": self.adopted or None,
        }
        return {k: v for k, v in record.items() if v is not None}

    def state_value(self) -> dict[str, Any]:
        """The state-store value: the record without the long human message."""
        value = {k: v for k, v in self.manifest().items() if v not in (None, [], 0, "") and k != "message"}
        value["key"] = self.key
        return value

    def copy(self) -> ItemRecord:
        """An independent copy (the lists too)."""
        return ItemRecord(**self.manifest())

    @classmethod
    def from_dict(cls, data: Any) -> ItemRecord | None:
        """A record from stored JSON; ``None`` when it is not one (damaged or foreign)."""
        if not isinstance(data, Mapping):
            return None
        key = data.get("key")
        if not isinstance(key, str) or not key:
            return None
        if not _KEY.match(key):  # a manifest line of provider 0.1 (keyed by the clear input)
            key = item_key(key, data.get("model_id"))
        values: dict[str, Any] = {"key": key}
        for f in fields(cls):
            if f.name == "key" or f.name not in data:
                continue
            values[f.name] = data[f.name]
        try:
            record = cls(**values)
            record.credits_charged = int(record.credits_charged or 0)
            record.possibly_double_charged = int(record.possibly_double_charged or 0)
            record.cost = max(1, int(record.cost or 1))
            record.adopted = int(record.adopted or 0)
            record.seed = None if record.seed is None else int(record.seed)
            record.pending = (
                [str(n) for n in (record.pending or [])] if isinstance(record.pending, list) else []
            )
            for name in ("output_ids", "urls", "paths"):
                value = getattr(record, name)
                setattr(record, name, [str(v) for v in value] if isinstance(value, list) else [])
            for name in ("output_id", "url", "path", "input", "status", "error", "message", "sent_by"):
                value = getattr(record, name)
                if value is not None and not isinstance(value, str):
                    setattr(record, name, str(value))
        except (TypeError, ValueError):
            return None
        return record


#: the manifest line's fields: the record's, in order (one place)
MANIFEST_FIELDS = tuple(f.name for f in fields(ItemRecord))
_LIST_FIELDS = tuple(f.name for f in fields(ItemRecord) if f.default_factory is list)


def newer(a: ItemRecord | None, b: ItemRecord | None) -> ItemRecord | None:
    """The newer of two versions of one key's record; a paid version beats an unpaid one."""
    if a is None or b is None:
        return a or b
    if a.paid != b.paid:
        return a if a.paid else b
    return a if (a.rev or "") >= (b.rev or "") else b


# -- credits needed --------------------------------------------------------------------------------


def credits_needed(
    keys: Iterable[str],
    known: Mapping[str, ItemRecord],
    free: Iterable[str] = (),
    cost: Mapping[str, int] | None = None,
) -> int:
    """Credits a batch of ``keys`` needs: each key's price, unless already paid or known to be free.

    The one function the operator, its dry run and the credits sensor use. ``free`` holds the
    keys of output IDs the server already upscaled (answered at once, for nothing); ``cost`` the
    price of each key (default 1: an upscale; a generation costs its ``num_outputs``).
    """
    free = set(free)
    return sum((cost or {}).get(k, 1) for k in keys if k not in free and not (k in known and known[k].paid))


def spent_by(records: Iterable[ItemRecord], owner: str | None) -> int:
    """The most the task instance ``owner`` may have spent on these records, across its tries.

    The one rule a budget (``max_credits``) is read from: :attr:`ItemRecord.possibly_spent` of every
    record whose last request that task sent. ``None`` (no task identity) owns nothing.
    """
    if owner is None:
        return 0
    return sum(r.possibly_spent for r in records if r.sent_by == owner)


# -- stores ----------------------------------------------------------------------------------------


class StateStore(Protocol):
    def get(self, key: str, default: Any = None) -> Any: ...

    def set(self, key: str, value: Any) -> None: ...


class StateStoreLedger:
    """Records in ``task_state_store``: one key per record version, written once.

    The store has no listing, so the keys are numbered without gaps: ``stablecog.ledger.<n>`` holds
    the n-th record written by this task instance (any try); a reader stops at the first missing
    number. One ``set`` per record version, each value one small record, far below
    ``[state_store] max_value_storage_bytes``.
    """

    def __init__(self, store: StateStore) -> None:
        self.store = store
        self._next: int | None = None

    def _get(self, n: int) -> Any:
        return self.store.get(f"{STATE_PREFIX}.{n}", None)

    def write(self, record: ItemRecord) -> None:
        """Callers serialise writes (the numbering must have no gaps). Sets ``record.rev``: on the
        destination's clock (:func:`new_rev`), so a version here and one there compare by time."""
        if self._next is None:
            self._next = 0
            while self._get(self._next) is not None:
                self._next += 1
        record.rev = new_rev()
        value = record.state_value()
        if len(json.dumps(value)) > STATE_VALUE_LIMIT:  # never: URLs are short. Keep the essentials.
            keep = (
                "key",
                "rev",
                "status",
                "output_id",
                "url",
                "pending",
                "output_ids",
                "urls",
                "seed",
                "sent_at",
            )
            value = {k: value[k] for k in keep if k in value}
        self.store.set(f"{STATE_PREFIX}.{self._next}", value)
        self._next += 1

    def load(self) -> tuple[dict[str, ItemRecord], int]:
        """Every key's newest record, and how many stored values were damaged."""
        out: dict[str, ItemRecord] = {}
        damaged = 0
        n = 0
        while (value := self._get(n)) is not None:
            record = ItemRecord.from_dict(value)
            if record is None:
                damaged += 1
            else:
                # a value of provider 0.2 has no time-based rev: its number (older than any rev)
                if not record.rev or not _REV.match(record.rev):
                    record.rev = f"{n:012d}"
                out[record.key] = newer(out.get(record.key), record) or record
            n += 1
        self._next = n
        return out, damaged


class DestinationLedger:
    """Records at a destination, under ``.stablecog/`` (see the module docstring)."""

    def __init__(self, destination: ObjectStoragePath) -> None:
        self.destination = destination
        self.root = destination / LEDGER_DIR
        self.items = self.root / ITEMS_DIR
        self.segments = self.root / SEGMENTS_DIR
        self.loaded_segments: list[str] = []
        self.stale_versions = 0
        self._prepared = False

    def prepare(self) -> None:
        if not self._prepared:
            for folder in (self.items, self.segments):
                folder.fs.makedirs(folder.path, exist_ok=True)
            self._prepared = True

    # -- write -----------------------------------------------------------------------------------

    def write(self, record: ItemRecord) -> None:
        """Create one new object for this version of the record (durable when this returns)."""
        self.prepare()
        record.rev = new_rev()
        _create(self.items / f"{record.key}.{record.rev}.json", json.dumps(record.manifest()).encode())

    def write_segment(self, records: Iterable[ItemRecord], *, clean: bool = True) -> str | None:
        """One object with these records; then (``clean``) remove the item objects it covers."""
        records = [r for r in records if r.rev]
        if not records:
            return None
        self.prepare()
        name = f"{new_rev()}-{uuid.uuid4().hex[:8]}.jsonl"
        body = "".join(json.dumps(r.manifest()) + "\n" for r in records)
        _create(self.segments / name, body.encode())
        if not clean:
            return name
        covered = {r.key: r.rev or "" for r in records}
        stale = []
        for entry in self._names(self.items):
            m = _ITEM_NAME.match(entry)
            if m and m["key"] in covered and m["rev"] <= covered[m["key"]]:  # this version or older
                stale.append(self.items / entry)
        _remove(stale)
        return name

    def compact(self, records: Mapping[str, ItemRecord], keep: int = MAX_SEGMENTS) -> None:
        """More than ``keep`` segments: merge the ones listed now into one (others' new ones stay)."""
        names = self.loaded_segments  # only what ``records`` was read from: never a newer one
        if len(names) <= keep and self.stale_versions <= MAX_STALE_VERSIONS:
            return
        self.write_segment(records.values())
        _remove([self.segments / name for name in names])

    # -- read ------------------------------------------------------------------------------------

    def load(self) -> tuple[dict[str, ItemRecord], int]:
        """Every key's newest record, and how many stored objects or lines were damaged."""
        best: dict[str, ItemRecord] = {}
        damaged = 0
        self.loaded_segments = sorted(n for n in self._names(self.segments) if n.endswith(".jsonl"))
        sources = [self.destination / MANIFEST_NAME] + [self.segments / n for n in self.loaded_segments]
        for source in sources:
            text, bad = _read_text(source)
            damaged += bad
            if text is None:
                continue
            for line in text.splitlines():
                if not line.strip():
                    continue
                record = _parse(line)
                if record is None:
                    damaged += 1
                    continue
                best[record.key] = newer(best.get(record.key), record) or record
        versions: dict[str, list[str]] = {}
        for entry in self._names(self.items):
            m = _ITEM_NAME.match(entry)
            if m:
                versions.setdefault(m["key"], []).append(m["rev"])
        self.stale_versions = 0
        for key, revs in versions.items():
            known = best.get(key)
            self.stale_versions += sum(1 for rev in revs if known is not None and (known.rev or "") >= rev)
            for rev in sorted(revs, reverse=True):
                if known is not None and (known.rev or "") >= rev:
                    break
                text, bad = _read_text(self.items / f"{key}.{rev}.json")
                record = _parse(text) if text is not None else None
                if record is None:
                    damaged += 1 if (bad or text is not None) else 0
                    continue  # a damaged newest version: fall back to the one before
                record.rev = rev
                best[key] = newer(known, record) or record
                break
        return best, damaged

    def images_present(self) -> set[str]:
        """Names (without ``.jpg``) of the images at the destination: ``<key>`` or ``<key>-<n>`` (one listing)."""
        suffix = f".{IMAGE_EXTENSION}"
        return {
            n[: -len(suffix)]
            for n in self._names(self.destination)
            if n.endswith(suffix) and _IMAGE_STEM.match(n[: -len(suffix)])
        }

    def write_manifest(self, records: Iterable[ItemRecord]) -> ObjectStoragePath:
        """Replace ``manifest.jsonl`` (the human-readable view) whole, in one write."""
        target = self.destination / MANIFEST_NAME
        ordered = sorted(records, key=lambda r: r.input or r.key)
        _create(target, "".join(json.dumps(r.manifest()) + "\n" for r in ordered).encode("utf-8"))
        return target

    @staticmethod
    def _names(folder: ObjectStoragePath) -> list[str]:
        """The entries' names, from one fresh listing (another task may have written since the
        filesystem's listing cache was filled). Names, not path objects: building an object per
        entry costs ~0.5 ms on an object store, seconds for a destination of ten thousand images."""
        try:
            entries = folder.fs.ls(folder.path, detail=False, refresh=True)
        except (FileNotFoundError, NotADirectoryError):
            return []
        own = folder.path.rstrip("/")
        return [os.path.basename(str(e).rstrip("/")) for e in entries if str(e).rstrip("/") != own]


def _create(target: ObjectStoragePath, data: bytes) -> None:
    """Write a new object whole: a temporary name and a rename locally, one PUT elsewhere.

    Every read and write here goes through the path's ``fs`` (Airflow's, connection-aware) rather
    than the path's own methods: with no ``conn_id`` those build a second filesystem (a second S3
    client, ~0.4 s to start), and they report each ledger object to hook lineage.

    Locally the data is in the OS once ``os.replace`` returns: it survives the death of the task
    process (SIGKILL, OOM, timeout) — the failures this ledger is for. No fsync: a lost machine
    takes its worker with it, and a version damaged by a power cut is read as absent.
    """
    if is_local(target):
        temp = f"{os.path.dirname(target.path)}/.{target.name}.{uuid.uuid4().hex[:8]}.part"
        with open(temp, "wb") as fh:
            fh.write(data)
        os.replace(temp, target.path)
    else:
        target.fs.pipe_file(target.path, data)


def _remove(paths: list[ObjectStoragePath]) -> None:
    """Delete objects in bulk (one request per 1,000 on S3); missing ones are fine."""
    if not paths:
        return
    try:
        paths[0].fs.rm([p.path for p in paths])
    except (FileNotFoundError, OSError):
        for p in paths:
            try:
                p.fs.rm_file(p.path)
            except (FileNotFoundError, OSError):
                pass


def _read_text(path: ObjectStoragePath) -> tuple[str | None, int]:
    """The object's text, or None when missing; undecodable bytes count as one damaged record."""
    try:
        data = path.fs.cat_file(path.path)
    except (FileNotFoundError, IsADirectoryError):
        return None, 0
    try:
        return data.decode("utf-8"), 0
    except UnicodeDecodeError:
        # keep every line that decodes; the damaged ones are dropped (and counted by the caller)
        lines = []
        bad = 0
        for raw in data.split(b"\n"):
            try:
                lines.append(raw.decode("utf-8"))
            except UnicodeDecodeError:
                bad += 1
        return "\n".join(lines), bad


def _parse(line: str) -> ItemRecord | None:
    try:
        return ItemRecord.from_dict(json.loads(line))
    except ValueError:
        return None


class Ledger:
    """The records of one task's items, durable at the destination or in the state store.

    Thread-safe: worker threads call :meth:`sent` just before a request and :meth:`save` the
    moment its answer arrives; both return only once the record is durable (see :meth:`save`).
    """

    def __init__(
        self,
        *,
        store: StateStore | None = None,
        destination: ObjectStoragePath | None = None,
        log: logging.Logger | Any | None = None,
        owner: str | None = None,
    ) -> None:
        """``owner``: the task instance writing (stamped as ``sent_by`` on what it sends)."""
        self.state = StateStoreLedger(store) if store is not None else None
        self.dest = DestinationLedger(destination) if destination is not None else None
        self.log = log or logging.getLogger(__name__)
        self.owner = owner
        self.records: dict[str, ItemRecord] = {}
        self.images: set[str] = set()
        self.damaged = 0
        #: what ``owner`` may have spent before this try, on any item (set by :meth:`load`)
        self.spent_before = 0
        self._touched: set[str] = set()
        self._lock = threading.Lock()

    def load(self, keys: Iterable[str] | None = None) -> dict[str, ItemRecord]:
        """Read both stores (newest version of each key wins); report damaged records once."""
        found: dict[str, ItemRecord] = {}
        damaged = 0
        for source in (self.dest, self.state):
            if source is None:
                continue
            try:
                records, bad = source.load()
            except OSError as exc:
                self.log.warning(
                    "Could not read the ledger in %s (%s: %s); treating it as empty",
                    _where(source),
                    type(exc).__name__,
                    exc,
                )
                continue
            damaged += bad
            for key, record in records.items():
                found[key] = newer(found.get(key), record) or record
        if self.dest is not None:
            try:
                self.images = self.dest.images_present()
            except OSError:
                self.images = set()
        self.spent_before = spent_by(found.values(), self.owner)
        if keys is not None:
            wanted = set(keys)
            found = {k: r for k, r in found.items() if k in wanted}
        if damaged:
            self.log.warning(
                "Ignored %d damaged ledger record(s) (undecodable or truncated); their items count as not done",
                damaged,
            )
        self.damaged = damaged
        self.records.update(found)
        return found

    def image_present(self, key: str, outputs: int | None = None) -> bool:
        """The item's image is at the destination (``outputs``: all of a multi-output job's images)."""
        if outputs is None:
            return key in self.images
        return all(image_name(key, i).rsplit(".", 1)[0] in self.images for i in range(outputs))

    def sent(self, record: ItemRecord) -> str:
        """Record, durably, that a request for this item is about to be sent; returns its nonce."""
        nonce = uuid.uuid4().hex[:12]
        with self._lock:
            if not record.pending:  # the oldest request without an answer: lost outputs are newer
                record.sent_at = datetime.now(UTC).isoformat(timespec="milliseconds")
            record.pending = [*record.pending, nonce]
            if self.owner is not None:
                record.sent_by = self.owner
        self.save(record, intent=True)
        return nonce

    def settle(self, record: ItemRecord, nonce: str) -> None:
        """The request ``nonce`` has an outcome (answer or error); call :meth:`save` after."""
        with self._lock:
            record.pending = [n for n in record.pending if n != nonce]

    def save(self, record: ItemRecord, *, intent: bool = False) -> None:
        """Make this version of the record durable in one store before returning.

        The destination when there is one: every later try and run reads it, and the record's
        item, cost and owner are in it, so a second copy per version in the state store (one
        execution-API call each, on a loaded worker) would buy nothing. If the destination cannot
        take an *answer*, the state store takes it instead (the same task instance's retries read
        it, and :meth:`finish` writes it to the destination again); an *intent* (``intent=True``,
        a request about to be sent) that the destination cannot take raises, so nothing is sent
        that no later try could know of. Without a destination: the state store.

        :raises OSError: nothing could take the version (an intent is then never sent; an answer
            is kept in memory and written by :meth:`finish`).
        """
        snapshot = record.copy()
        if self.dest is not None:
            try:
                self.dest.write(snapshot)
            except OSError as exc:
                if intent:  # never sent: nothing to keep
                    raise
                if self.state is None:  # kept in memory: finish() writes it with the try's segment
                    with self._lock:
                        record.rev = new_rev()  # a segment keeps only versions with a rev
                        self.records[record.key] = record
                        self._touched.add(record.key)
                    raise
                self.log.warning(
                    "Could not record %s at the destination (%s: %s); kept in the task state store, "
                    "and written to the destination again at the end of the try",
                    record.input,
                    type(exc).__name__,
                    exc,
                )
                with self._lock:
                    self.state.write(snapshot)
        elif self.state is not None:
            with self._lock:
                self.state.write(snapshot)
        with self._lock:
            record.rev = snapshot.rev
            self.records[record.key] = record
            self._touched.add(record.key)

    def keep(self, record: ItemRecord) -> None:
        """A change worth no money (a file written and its size): kept for this try's segment
        (:meth:`finish`), no write now. Nothing is lost if the try dies first: what was paid is
        durable already, and the file at the destination says itself that it is there."""
        if self.dest is None:  # no end-of-try segment to carry it
            self.save(record)
            return
        with self._lock:
            record.rev = new_rev()
            self.records[record.key] = record
            self._touched.add(record.key)

    def finish(self, records: Iterable[ItemRecord] = ()) -> ObjectStoragePath | None:
        """End of a try: one segment with this try's records, then the manifest view.

        ``records`` may add records that changed without being saved (not started, pre-flight
        failures): they go into the segment only, one write for all of them.
        """
        if self.dest is None:
            return None
        with self._lock:
            saved = [self.records[k] for k in sorted(self._touched)]
            extra = [r for r in records if r.key not in self._touched]
        for record in extra:
            record.rev = new_rev()
            self.records[record.key] = record
        # the covered item objects stay until enough pile up (removing them costs a request each on
        # some stores): a reader skips them by name, without a GET
        self.dest.write_segment([*saved, *extra], clean=False)
        everything, _ = self.dest.load()
        self.dest.compact(everything)
        return self.dest.write_manifest(everything.values())


def _where(source: Any) -> str:
    return str(source.destination) if isinstance(source, DestinationLedger) else "the task state store"


def load_destination(destination: ObjectStoragePath | str | None) -> dict[str, ItemRecord]:
    """The newest record of every key at a destination (empty when there is none)."""
    if destination is None:
        return {}
    from airflow_provider_stablecog.utils.storage import resolve_destination

    return Ledger(destination=resolve_destination(destination)).load()


__all__ = [
    "FAILED",
    "GENERATED",
    "MANIFEST_FIELDS",
    "MANIFEST_NAME",
    "NOT_STARTED",
    "SKIPPED",
    "UPSCALED",
    "DestinationLedger",
    "ItemRecord",
    "Ledger",
    "StateStoreLedger",
    "credits_needed",
    "image_name",
    "item_key",
    "load_destination",
    "spent_by",
]
