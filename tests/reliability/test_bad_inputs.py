"""The bad-input corpus: every case gets a clear message naming the item, and good items still finish.

Item cases run a mixed batch ``[good URL, bad item]`` through the UpscaleOperator against a real
emulator process: the bad item fails alone with its code, the good one is upscaled and written,
and the task's error lists the bad item with what to do. Task cases (a broken connection,
destination or argument) must fail before anything is charged. The table of every case is
printed at the end of the run (see ``conftest.py``).
"""

from __future__ import annotations

import errno
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, PngImagePlugin

from airflow_provider_stablecog.emulator.testing import run_emulator
from airflow_provider_stablecog.ledger import item_key
from airflow_provider_stablecog.operators.upscale import UpscaleOperator
from airflow_provider_stablecog.utils.inputs import InvalidInput, coerce_input_list, plan_inputs
from airflow_provider_stablecog.utils.storage import read_manifest
from tests.reliability.support import destination_problems, make_context

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def emulator():
    with run_emulator(latency=0.01, credits=100_000, plan_concurrency=4, rate_limit=0) as emu:
        yield emu


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Local files of every kind the corpus needs."""
    from airflow.sdk.io.store import attach
    from fsspec.implementations.memory import MemoryFileSystem

    attach("memory", fs=MemoryFileSystem())  # an object store with nothing in it
    root = tmp_path_factory.mktemp("corpus-files")

    def save(name: str, image: Image.Image, fmt: str, **kwargs: Any) -> Path:
        path = root / name
        image.save(path, fmt, **kwargs)
        return path

    frames = [Image.new("RGB", (24, 24), (60 * i, 90, 120)) for i in range(3)]
    out = {
        "good": save("good.png", Image.new("RGB", (40, 30), (10, 200, 30)), "PNG"),
        "big_pixels": save("big.png", Image.new("RGB", (1100, 1000), (1, 2, 3)), "PNG"),
        "gif": save("anim.gif", frames[0], "GIF", save_all=True, append_images=frames[1:]),
        "animated_webp": save("anim.webp", frames[0], "WEBP", save_all=True, append_images=frames[1:]),
        "cmyk": save("cmyk.jpg", Image.new("CMYK", (40, 30), (0, 120, 0, 10)), "JPEG"),
        "png16": save("deep.png", Image.new("I;16", (40, 30), 40000), "PNG"),
        "bmp": save("old.bmp", Image.new("RGB", (20, 20)), "BMP"),
    }
    jpeg = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 10, 10)).save(jpeg, "JPEG")
    out["truncated"] = root / "truncated.jpg"
    out["truncated"].write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    out["text"] = root / "notes.png"
    out["text"].write_text("this is not an image\n")
    out["empty"] = root / "empty.png"
    out["empty"].write_bytes(b"")
    info = PngImagePlugin.PngInfo()
    info.add_text("padding", "x" * (11 * 1024 * 1024))  # 11 MiB of metadata on a tiny image
    out["huge_file"] = save("huge.png", Image.new("RGB", (10, 10)), "PNG", pnginfo=info)
    out["dir"] = root / "a-folder"
    out["dir"].mkdir()
    return out


@dataclass
class Ctx:
    emu: Any
    files: dict[str, Path]
    tmp: Path

    @property
    def good(self) -> str:
        return self.emu.sample_url("32x24.png")

    def url(self, name: str) -> str:
        return self.emu.sample_url(name)


@pytest.fixture
def ctx(emulator, files, tmp_path, monkeypatch) -> Ctx:
    emulator.reset()
    emulator.configure(latency=0.01, faults={}, rate_limit=0)
    monkeypatch.setenv(
        "AIRFLOW_CONN_STABLECOG_DEFAULT", emulator.connection_json(plan_concurrency=4, rate_limit=0)
    )
    return Ctx(emulator, files, tmp_path)


def _foreign_upload_key(ctx: Ctx) -> str:
    from airflow_provider_stablecog.client import StablecogClient

    other = ctx.emu.add_account(credits=5)["api_keys"][0]
    with StablecogClient(other, ctx.emu.base_url, rate_limit=None) as client:
        return client.upload_image(ctx.files["good"])


@dataclass(frozen=True)
class ItemCase:
    """``make(ctx)`` is the bad item; ``code`` its expected error (``"upscaled"``: it is accepted)."""

    id: str
    make: Callable[[Ctx], Any]
    code: str
    hints: tuple[str, ...] = ()
    shown: Callable[[Ctx], str] | None = None  # what the message must name (default: the item)
    secret: str | None = None  # must appear nowhere in the message or XCom


UUID_X = "0f0e0d0c-0b0a-4908-8706-050403020100"
ITEM_CASES = [
    ItemCase("empty string", lambda c: "", "empty", ("empty string",), shown=lambda c: "item 1"),
    ItemCase("whitespace only", lambda c: " \t\n ", "empty", ("empty string",), shown=lambda c: "item 1"),
    ItemCase("relative path", lambda c: "images/cat.png", "relative_path", ("absolute path",)),
    ItemCase("Windows path", lambda c: "C:\\images\\cat.png", "relative_path", ("absolute path",)),
    ItemCase("missing file", lambda c: str(c.tmp / "missing.png"), "file_not_found", ("no such file",)),
    ItemCase("directory", lambda c: str(c.files["dir"]), "not_a_file", ("not a", "image file")),
    ItemCase(
        "file:// to a non-image",
        lambda c: f"file://{c.files['text']}",
        "not_an_image",
        ("not a readable image",),
        shown=lambda c: str(c.files["text"]),
    ),
    ItemCase("zero-byte file", lambda c: str(c.files["empty"]), "not_an_image", ("not a readable image",)),
    ItemCase("ftp:// URL", lambda c: "ftp://files.example.com/cat.png", "unsupported_scheme", ("ftp",)),
    ItemCase("javascript: URL", lambda c: "javascript:alert(1)", "unsupported_scheme", ("not an image",)),
    ItemCase(
        "data: URL",
        lambda c: "data:image/png;base64,iVBORw0KGgo=",
        "unsupported_scheme",
        ("write the image to a file",),
    ),
    ItemCase("mailto: link", lambda c: "mailto:someone@example.com", "unsupported_scheme", ("not an image",)),
    ItemCase("unknown scheme", lambda c: "gopher-x://host/cat.png", "unsupported_scheme", ("not supported",)),
    ItemCase(
        "URL with credentials",
        lambda c: c.good.replace("http://", "http://alice:hunter2@"),
        "url_with_credentials",
        ("credentials",),
        shown=lambda c: "***@127.0.0.1",
        secret="hunter2",
    ),
    ItemCase("URL with no host", lambda c: "http:///cat.png", "invalid_url", ("no host",)),
    ItemCase(
        "URL with a bad port",
        lambda c: "http://example.com:99999/cat.png",
        "invalid_url",
        ("not a valid url",),
    ),
    ItemCase(
        "10,000-character URL",
        lambda c: c.good + "?pad=" + "a" * 10_000,
        "url_too_long",
        ("longer than",),
        shown=lambda c: "http://127.0.0.1",
    ),
    ItemCase("nested list", lambda c: [c.good], "nested_list", ("flatten",), shown=lambda c: "item 1"),
    ItemCase("integer item", lambda c: 42, "not_a_string", ("not a string",), shown=lambda c: "42"),
    ItemCase("None item", lambda c: None, "not_a_string", ("not a string",), shown=lambda c: "None"),
    ItemCase("bytes item", lambda c: b"\x89PNG", "not_a_string", ("not a string",), shown=lambda c: "item 1"),
    ItemCase(
        "dict item", lambda c: {"url": "x"}, "not_a_string", ("not a string",), shown=lambda c: "item 1"
    ),
    ItemCase(
        "non-image behind an image URL",
        lambda c: c.url("bad/not-an-image.png"),
        "image_url_width_height_error",
        ("content-type",),
    ),
    ItemCase(
        "wrong content type",
        lambda c: c.url("bad/wrong-type.png"),
        "image_url_width_height_error",
        ("content-type",),
    ),
    ItemCase(
        "missing Content-Length",
        lambda c: c.url("bad/no-length.png"),
        "image_url_width_height_error",
        ("content-length",),
    ),
    ItemCase(
        "oversize file behind a URL",
        lambda c: c.url("bad/too-big.png"),
        "image_url_width_height_error",
        ("10 mib",),
    ),
    ItemCase(
        "image URL answering 404",
        lambda c: c.url("bad/missing.png"),
        "image_url_width_height_error",
        ("fix",),
    ),
    ItemCase(
        "unreachable image host",
        lambda c: "http://127.0.0.1:9/cat.png",
        "image_url_width_height_error",
        ("fix",),
    ),
    ItemCase(
        "> 1 MP image URL",
        lambda c: c.url("1100x1000.png"),
        "image_url_width_height_error",
        ("1,048,576 pixels",),
    ),
    ItemCase(
        "> 1 MP local image",
        lambda c: str(c.files["big_pixels"]),
        "too_many_pixels",
        ("downscale_oversized",),
    ),
    ItemCase("> 10 MiB local file", lambda c: str(c.files["huge_file"]), "file_too_large", ("10 mib",)),
    ItemCase(
        "truncated JPEG URL", lambda c: c.url("bad/truncated.jpg"), "image_url_width_height_error", ("fix",)
    ),
    ItemCase("truncated local JPEG", lambda c: str(c.files["truncated"]), "not_an_image", ("complete jpeg",)),
    ItemCase("animated GIF", lambda c: str(c.files["gif"]), "unsupported_format", ("convert",)),
    ItemCase("animated WebP", lambda c: str(c.files["animated_webp"]), "animated_image", ("single frame",)),
    ItemCase("BMP file", lambda c: str(c.files["bmp"]), "unsupported_format", ("convert",)),
    ItemCase("CMYK JPEG (accepted)", lambda c: str(c.files["cmyk"]), "upscaled"),
    ItemCase("16-bit PNG (accepted)", lambda c: str(c.files["png16"]), "upscaled"),
    ItemCase("unknown output ID", lambda c: UUID_X, "output_not_found", ("output id",)),
    ItemCase(
        "unknown s3:// upload key",
        lambda c: f"s3://{'ab' * 16}/{UUID_X}.png",
        "init_image_not_found",
        ("upload the image again",),
    ),
    ItemCase("another account's upload key", _foreign_upload_key, "image_not_owned", ("another account",)),
    ItemCase(
        "missing object-storage file",
        lambda c: "memory://corpus/missing.png",
        "file_not_found",
        ("no such file",),
    ),
    ItemCase(
        "object storage without its filesystem",
        lambda c: "gs://my-bucket/photos/cat.png",
        "unreadable_file",
        ("gs://", "storage connection"),
    ),
    ItemCase(
        "2,000-character URL (accepted)",
        lambda c: c.good + "?pad=" + "b" * (2000 - len(c.good) - 5),
        "upscaled",
    ),
    ItemCase("URL in surrounding whitespace (accepted)", lambda c: f"  {c.url('20x20.png')}\n", "upscaled"),
    ItemCase(
        "presigned URL (accepted, masked)",
        lambda c: c.url("24x24.png") + "?X-Amz-Credential=AKIAEXAMPLE&X-Amz-Signature=5ec7e75167",
        "upscaled",
        secret="5ec7e75167",
    ),
]


def _outcome(plan, position: int, records: dict[str, dict]) -> tuple[str, str]:
    entry = plan.positions[position]
    if isinstance(entry, InvalidInput):
        return entry.code, entry.message
    record = records[item_key(entry)]
    return (record["status"] if record["status"] != "failed" else record["error"]), record.get(
        "message"
    ) or ""


@pytest.mark.parametrize("case", ITEM_CASES, ids=[c.id for c in ITEM_CASES])
def test_bad_item_fails_alone_with_a_clear_message(ctx, case, corpus_row):
    from airflow_provider_stablecog.compat import AirflowException

    bad = case.make(ctx)
    inputs = [ctx.good, bad]
    dest = ctx.tmp / "out"
    op = UpscaleOperator(task_id="corpus", inputs=inputs, destination=str(dest), progress_interval=0)
    error, xcom = None, None
    try:
        xcom = op.execute(make_context())
    except AirflowException as exc:
        error = str(exc)
    plan = plan_inputs(coerce_input_list(inputs))
    records = read_manifest(dest)
    code, item_message = _outcome(plan, 1, records)
    corpus_row(
        case.id,
        code,
        (error.split("\n", 1)[-1].strip() if error else "upscaled")
        if case.code != "upscaled"
        else "upscaled",
    )

    good = records[item_key(plan.positions[0])]
    assert good["status"] in ("upscaled", "skipped") and Path(good["path"]).is_file(), good
    assert destination_problems(dest) == []
    assert code == case.code, (code, item_message, error)
    if case.code == "upscaled":
        assert error is None and xcom is not None
        assert all(r["status"] == "upscaled" for r in xcom)
    else:
        assert error is not None, "a failed item must fail the task (max_failed_ratio=0)"
        text = error.lower()
        shown = case.shown(ctx) if case.shown else str(bad).strip()
        assert shown.lower()[:80] in text, f"the message does not name the item: {error}"
        for hint in case.hints:
            assert hint.lower() in text, f"{hint!r} missing from: {error}"
    if case.secret:
        assert (
            case.secret not in (error or "")
            and case.secret not in str(xcom)
            and case.secret not in item_message
        )
    ledger = ctx.emu.ledger()
    assert ledger["net_charged"] == (2 if case.code == "upscaled" and bad != inputs[0] else 1)
    corpus_row.done()


def test_ten_thousand_duplicates_are_upscaled_once(ctx, corpus_row):
    inputs = [ctx.good] * 10_000
    corpus_row("10,000 duplicates", "upscaled once", "")
    records = UpscaleOperator(
        task_id="dups", inputs=inputs, destination=str(ctx.tmp / "d"), progress_interval=0
    ).execute(make_context())
    assert len(records) == 10_000 and {r["status"] for r in records} == {"upscaled"}
    assert len({r["path"] for r in records}) == 1
    assert ctx.emu.ledger()["net_charged"] == 1 and len(read_manifest(ctx.tmp / "d")) == 1
    corpus_row.entry["message"] = "10,000 records, 1 upscale, 1 credit, 1 file"
    corpus_row.done()


def test_empty_list_does_nothing(ctx, corpus_row):
    corpus_row("empty list", "nothing to do", "")
    records = UpscaleOperator(
        task_id="empty", inputs=[], destination=str(ctx.tmp / "e"), progress_interval=0
    ).execute(make_context())
    assert records == [] and ctx.emu.ledger()["net_charged"] == 0
    corpus_row.entry["message"] = "returns [] and charges nothing"
    corpus_row.done()


# -- task-level cases: the whole task fails before anything is charged -------------------------


class FullFileSystem:
    """An fsspec memory filesystem whose writes fail with ENOSPC (``full_from``: bytes allowed)."""

    registered: set[str] = set()  # noqa: RUF012

    @classmethod
    def register(cls, protocol: str, full_from: int) -> None:
        import fsspec
        from fsspec.implementations.memory import MemoryFileSystem

        class _Full(MemoryFileSystem):
            store: dict = {}  # noqa: RUF012
            pseudo_dirs = [""]  # noqa: RUF012

            def _open(self, path, mode="rb", **kwargs):
                handle = super()._open(path, mode, **kwargs)
                if "w" in mode or "a" in mode:
                    write = handle.write

                    def limited(data, _write=write, _h=handle):
                        if _h.tell() + len(data) > full_from:
                            raise OSError(errno.ENOSPC, "No space left on device")
                        return _write(data)

                    handle.write = limited
                return handle

            def pipe_file(self, path, value, *args, **kwargs):  # a whole object in one write
                if len(value) > full_from:
                    raise OSError(errno.ENOSPC, "No space left on device")
                return super().pipe_file(path, value, *args, **kwargs)

        from airflow.sdk.io.store import attach

        _Full.protocol = (protocol,)
        fsspec.register_implementation(protocol, _Full, clobber=True)
        attach(protocol, fs=_Full())


@dataclass(frozen=True)
class TaskCase:
    id: str
    kwargs: Callable[[Ctx], dict[str, Any]]
    error: str  # exception class name
    code: str | None
    hints: tuple[str, ...] = ()
    conn: Callable[[Ctx], dict[str, Any]] | None = None  # fields of AIRFLOW_CONN_STABLECOG_DEFAULT
    fields: dict[str, Any] = field(default_factory=dict)


def _conn(ctx: Ctx, **changes: Any) -> dict[str, Any]:
    import json

    conn = json.loads(ctx.emu.connection_json(plan_concurrency=4, rate_limit=0))
    conn.update(changes)
    return {k: v for k, v in conn.items() if v is not None}


TASK_CASES = [
    TaskCase(
        "inputs is None",
        lambda c: {"inputs": None},
        "StablecogConfigError",
        "invalid_inputs",
        ("upstream task",),
    ),
    TaskCase(
        "inputs is a dict",
        lambda c: {"inputs": {"a": c.good}},
        "StablecogConfigError",
        "invalid_inputs",
        ("list(d.values())",),
    ),
    TaskCase(
        "inputs is a number", lambda c: {"inputs": 42}, "StablecogConfigError", "invalid_inputs", ("list",)
    ),
    TaskCase(
        "unknown model ID",
        lambda c: {"model_id": UUID_X},
        "StablecogConfigError",
        "invalid_model_id",
        ("leave it unset",),
    ),
    TaskCase(
        "model ID not a UUID",
        lambda c: {"model_id": "swinir"},
        "StablecogConfigError",
        "json_parse_error",
        ("not a uuid",),
    ),
    TaskCase(
        "wrong API key",
        lambda c: {},
        "AirflowFailException",
        None,
        ("unauthorized", "password"),
        conn=lambda c: _conn(c, password="sc-" + "f" * 64),
    ),
    TaskCase(
        "connection with no password",
        lambda c: {},
        "StablecogConfigError",
        "missing_api_key",
        ("password",),
        conn=lambda c: _conn(c, password=None),
    ),
    TaskCase(
        "unknown connection id",
        lambda c: {"stablecog_conn_id": "no_such_conn"},
        "AirflowNotFoundException",
        None,
        ("no_such_conn",),
    ),
    TaskCase(
        "http:// non-loopback host",
        lambda c: {},
        "StablecogConfigError",
        None,
        ("https://", "clear text"),
        conn=lambda c: _conn(c, host="http://api.stablecog.example"),
    ),
    TaskCase(
        "destination under a regular file",
        lambda c: {"destination": str(c.files["good"] / "out")},
        "StablecogConfigError",
        "destination_not_writable",
        ("not writable", "nothing was sent"),
    ),
    TaskCase(
        "destination under /proc",
        lambda c: {"destination": "/proc/stablecog-out"},
        "StablecogConfigError",
        "destination_not_writable",
        ("not writable",),
    ),
    TaskCase(
        "destination on a full filesystem",
        lambda c: {"destination": "fullzero://bucket/out"},
        "StablecogConfigError",
        "destination_not_writable",
        ("free space",),
    ),
]


@pytest.mark.parametrize("case", TASK_CASES, ids=[c.id for c in TASK_CASES])
def test_bad_configuration_fails_before_spending(ctx, case, monkeypatch, corpus_row):
    import json

    FullFileSystem.register("fullzero", full_from=-1)
    if case.conn is not None:
        monkeypatch.setenv("AIRFLOW_CONN_STABLECOG_DEFAULT", json.dumps(case.conn(ctx)))
    kwargs = {"inputs": [ctx.good, ctx.url("20x21.png")], "progress_interval": 0, **case.kwargs(ctx)}
    with pytest.raises(Exception) as info:
        UpscaleOperator(task_id="corpus", **kwargs).execute(make_context())
    message = str(info.value)
    corpus_row(case.id, getattr(info.value, "code", None) or type(info.value).__name__, message)
    assert type(info.value).__name__ == case.error, repr(info.value)
    if case.code:
        assert info.value.code == case.code
    for hint in case.hints:
        assert hint.lower() in message.lower(), f"{hint!r} missing from: {message}"
    assert ctx.emu.api_key not in message
    assert ctx.emu.ledger()["net_charged"] == 0
    corpus_row.done()


def test_filesystem_full_mid_batch_fails_items_clearly_and_a_retry_does_not_pay(ctx, corpus_row):
    """Writes of real data fail (ENOSPC) after the destination probe passed."""
    from airflow_provider_stablecog.compat import AirflowException
    from tests.reliability.support import MemoryStateStore

    FullFileSystem.register("fullsoon", full_from=0)
    inputs = [ctx.good, ctx.url("20x22.png")]
    store = MemoryStateStore()
    with pytest.raises(AirflowException) as info:
        UpscaleOperator(
            task_id="corpus", inputs=inputs, destination="fullsoon://bucket/out", progress_interval=0
        ).execute(make_context(store))
    message = str(info.value)
    corpus_row("filesystem full mid-batch", "destination_error", message.split("\n", 1)[-1])
    # write-ahead: a request that cannot be recorded is never sent, so nothing was paid
    assert "No space left" in message and "nothing was sent or charged" in message
    assert ctx.emu.ledger()["net_charged"] == 0
    # the same task instance retried onto a working destination pays once per image
    records = UpscaleOperator(
        task_id="corpus", inputs=inputs, destination=str(ctx.tmp / "ok"), progress_interval=0
    ).execute(make_context(store))
    assert {r["status"] for r in records} == {"upscaled"}
    assert ctx.emu.ledger()["net_charged"] == 2
    corpus_row.done()
