"""Normalise, classify and de-duplicate the images a task is asked to upscale.

Each item of ``inputs`` is one of:

* an **image URL** (``http://`` / ``https://``), sent to Stablecog as is;
* a **Stablecog output ID** (a UUID of one of your generations), sent as is;
* a **Stablecog upload key**, ``s3://<hex hash>/<uuid>.<jpeg|jpg|png|webp>`` as returned by
  ``/v1/image/upload``, sent as is;
* a **local file**: an absolute path or a ``file://`` URL; uploaded first;
* an **object-storage file**: an :class:`~airflow.sdk.ObjectStoragePath`, or any other
  ``<protocol>://bucket/key`` string (``s3://my-bucket/photos/a.png``, ``gs://...``), read through
  Airflow's ObjectStoragePath (fsspec) and uploaded first.

The two meanings of ``s3://`` are told apart by shape: only a key whose bucket is a hex hash and
whose object name is a single ``<uuid>.<ext>`` is a Stablecog upload key. Any other ``s3://`` path
is your own bucket. To force object storage for a path that happens to look like an upload key,
pass an ``ObjectStoragePath``.

Bad items are reported one by one (:class:`InvalidInput`) with what to do; they never stop the
good items.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Generic, Literal, Protocol, TypeVar
from urllib.parse import unquote, urlsplit

from airflow_provider_stablecog.utils import is_local
from airflow_provider_stablecog.utils.urls import redact_url

InputKind = Literal["url", "output_id", "upload_key", "local_file", "object_storage"]
UPLOAD_KINDS = ("local_file", "object_storage")

MAX_URL_LENGTH = 8192
_UPLOAD_KEY = re.compile(
    r"^s3://[0-9a-f]{8,128}/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\.(jpe?g|png|webp)$",
    re.IGNORECASE,
)
_UNSUPPORTED_SCHEMES = {
    "javascript": "a javascript: URL is not an image",
    "data": "data: URLs are not accepted by Stablecog; write the image to a file and pass its path",
    "ftp": "ftp:// is not supported; use an http(s) URL or copy the file to local or object storage",
    "mailto": "a mailto: link is not an image",
}


@dataclass(frozen=True)
class InputItem:
    """One valid input. ``key`` is its identity: equal keys are upscaled once."""

    key: str
    kind: InputKind
    value: str  # what is sent (URL, UUID, s3 key) or the path to upload

    @property
    def needs_upload(self) -> bool:
        return self.kind in UPLOAD_KINDS

    @property
    def display(self) -> str:
        """How the item appears in logs and messages (credentials redacted)."""
        return redact_url(self.value) if self.kind == "url" else self.value


class _Shown(Protocol):
    """What a plan needs of its items: how each appears in logs and messages."""

    @property
    def display(self) -> str: ...


#: the item type of a plan (an :class:`InputItem`, or a prompt's ``GenerationItem``)
ItemT = TypeVar("ItemT", bound=_Shown)


@dataclass(frozen=True)
class InvalidInput:
    """An item rejected before anything was sent; ``message`` says what to do."""

    position: int
    display: str
    code: str
    message: str


@dataclass
class InputPlan(Generic[ItemT]):
    """``positions[i]`` is the key of item ``i`` (or its InvalidInput); ``unique`` keeps first-seen order.

    The plan of any batch's items: images here (:func:`plan_inputs`), prompts in
    :class:`~airflow_provider_stablecog.utils.prompts.PromptPlan`.
    """

    positions: list[str | InvalidInput]
    unique: dict[str, ItemT]

    @property
    def invalid(self) -> list[InvalidInput]:
        return [p for p in self.positions if isinstance(p, InvalidInput)]

    def display_for(self, index: int) -> str:
        entry = self.positions[index]
        return entry.display if isinstance(entry, InvalidInput) else self.unique[entry].display


def coerce_input_list(value: Any) -> list[Any]:
    """The rendered ``inputs`` argument as a list: one string or path is a batch of one.

    :raises StablecogConfigError: ``None``, a mapping, or another type that is not a list of items.
    """
    from airflow_provider_stablecog.exceptions import StablecogConfigError

    if value is None:
        raise StablecogConfigError(
            "inputs is None: the upstream task returned nothing. Pass a list of image URLs, output "
            "IDs, upload keys or file paths (e.g. inputs=list_images.output)",
            code="invalid_inputs",
        )
    if isinstance(value, (str, os.PathLike)) or _is_object_storage_path(value):
        return [value]
    if isinstance(value, dict):
        raise StablecogConfigError(
            f"inputs is a dict ({_short(repr(value))}): pass a list of images; to use a dict's "
            "values, return list(d.values()) from the upstream task",
            code="invalid_inputs",
        )
    if isinstance(value, Iterable) and not isinstance(value, (bytes, bytearray)):
        return list(value)
    raise StablecogConfigError(
        f"inputs must be a list of images (or one string), got {type(value).__name__}",
        code="invalid_inputs",
    )


def plan_inputs(values: Iterable[Any]) -> InputPlan:
    """Classify every item and de-duplicate by key (first occurrence wins the order)."""
    positions: list[str | InvalidInput] = []
    unique: dict[str, InputItem] = {}
    for position, raw in enumerate(values):
        parsed = parse_input(raw, position)
        if isinstance(parsed, InvalidInput):
            positions.append(parsed)
            continue
        unique.setdefault(parsed.key, parsed)
        positions.append(parsed.key)
    return InputPlan(positions=positions, unique=unique)


def parse_input(raw: Any, position: int = 0) -> InputItem | InvalidInput:
    """Classify one item, or say why it is not usable."""
    if _is_object_storage_path(raw):
        if is_local(raw):
            return _parse_path(raw.path, position)
        return InputItem(key=str(raw), kind="object_storage", value=str(raw))
    if isinstance(raw, os.PathLike):
        raw = os.fspath(raw)
    if not isinstance(raw, str):
        shown = _short(repr(raw))
        if isinstance(raw, (list, tuple, set)):
            return _bad(
                position,
                shown,
                "nested_list",
                "a nested list; flatten the upstream result into one list of images",
            )
        return _bad(
            position,
            shown,
            "not_a_string",
            f"a {type(raw).__name__}, not a string or path; pass the image URL, output ID or path as a string",
        )
    text = raw.strip()
    if not text:
        return _bad(
            position,
            repr(raw),
            "empty",
            "an empty string; remove it or fix the upstream task that produced it",
        )
    return _parse_text(text, position)


def _parse_text(text: str, position: int) -> InputItem | InvalidInput:
    if is_uuid(text):
        return InputItem(key=text.lower(), kind="output_id", value=text.lower())
    scheme, sep, _rest = text.partition(":")
    scheme = scheme.lower()
    if not sep or len(scheme) < 2 or "/" in scheme:  # no scheme (a Windows drive letter is not one)
        return _parse_path(text, position)
    if scheme in _UNSUPPORTED_SCHEMES:
        return _bad(position, _short(text), "unsupported_scheme", _UNSUPPORTED_SCHEMES[scheme])
    if scheme in ("http", "https"):
        return _parse_url(text, position)
    if scheme == "file":
        return _parse_path(unquote(urlsplit(text).path), position)
    if scheme == "s3" and _UPLOAD_KEY.match(text):
        return InputItem(key=text, kind="upload_key", value=text)
    if text.startswith(f"{scheme}://") and _known_protocol(scheme):
        return InputItem(key=text, kind="object_storage", value=text)
    return _bad(
        position,
        _short(redact_url(text)),
        "unsupported_scheme",
        f"the {scheme}: scheme is not supported; use an http(s) URL, an output ID, an s3:// upload "
        "key, a local path or an object-storage path (s3://, gs://, ...)",
    )


def _parse_url(text: str, position: int) -> InputItem | InvalidInput:
    shown = _short(redact_url(text))
    if len(text) > MAX_URL_LENGTH:
        return _bad(position, shown, "url_too_long", f"a URL longer than {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 -- raises on a bad port
    except ValueError:
        return _bad(position, shown, "invalid_url", "not a valid URL; check it")
    if not parts.hostname:
        return _bad(position, shown, "invalid_url", "a URL with no host; check it")
    if parts.username or parts.password:
        return _bad(
            position,
            shown,
            "url_with_credentials",
            "a URL with user:password@ in it; Stablecog would see the credentials. Use a presigned "
            "URL, or download the image and pass the file",
        )
    return InputItem(key=text, kind="url", value=text)


def _parse_path(text: str, position: int) -> InputItem | InvalidInput:
    if not os.path.isabs(text):
        return _bad(
            position,
            _short(text),
            "relative_path",
            "a relative path (or a string that is neither a URL nor an output ID); give an absolute "
            "path or a file:// URL",
        )
    path = os.path.normpath(text)
    return InputItem(key=f"file://{path}", kind="local_file", value=path)


def _known_protocol(scheme: str) -> bool:
    """A protocol fsspec knows (imported only for unusual schemes)."""
    if scheme in (
        "s3",
        "s3a",
        "gs",
        "gcs",
        "az",
        "abfs",
        "abfss",
        "adl",
        "memory",
        "hdfs",
        "webhdfs",
        "sftp",
        "oss",
    ):
        return True
    try:
        from fsspec.registry import known_implementations
    except ImportError:  # pragma: no cover - fsspec ships with Airflow
        return False
    return scheme in known_implementations


def is_uuid(text: str) -> bool:
    """A canonical 36-character UUID (any case): what Stablecog output IDs and model IDs look like."""
    if len(text) != 36:
        return False
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


def _is_object_storage_path(value: Any) -> bool:
    return type(value).__name__ == "ObjectStoragePath" and hasattr(value, "protocol")


def _bad(position: int, shown: str, code: str, what: str) -> InvalidInput:
    return InvalidInput(
        position=position, display=shown, code=code, message=f"item {position} ({shown}): {what}"
    )


def _short(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def as_count(value: Any, name: str) -> int:
    """A (rendered template) value → a whole number of credits >= 0, or a ValueError that says what to do.

    Templates render to strings unless ``render_template_as_native_obj``: ``"12"`` is 12."""
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        number = int(value.strip())
    if number is None:
        raise ValueError(
            f"{name} must be a whole number of credits (an int >= 0), got {value!r} "
            f"({type(value).__name__}); fix the argument or the template that renders it"
        )
    if number < 0:
        raise ValueError(f"{name} must be >= 0, got {number}; pass 0 or a positive number of credits")
    return number
