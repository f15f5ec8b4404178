"""The credit ledger on its own: one record, one 'already paid' rule, crash- and writer-safe storage."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from airflow_provider_stablecog.ledger import (
    ITEMS_DIR,
    LEDGER_DIR,
    MAX_SEGMENTS,
    SEGMENTS_DIR,
    STATE_VALUE_LIMIT,
    DestinationLedger,
    ItemRecord,
    Ledger,
    credits_needed,
    item_key,
)
from airflow_provider_stablecog.utils.storage import MANIFEST_NAME, resolve_destination, write_manifest
from tests.reliability.support import MemoryStateStore

PRESIGNED = "https://bucket.s3.test/a.png?X-Amz-Credential=AKIA&X-Amz-Signature=deadbeefcafe1234"


def _answered(identity: str, n: int = 0, model: str | None = None) -> ItemRecord:
    record = ItemRecord(key=item_key(identity, model), input=identity, model_id=model)
    record.answered(f"out-{n}", f"https://cdn.test/{n}.jpeg", charged=True)
    return record


def test_the_key_hashes_the_input_and_the_model():
    a, b = (
        item_key("https://x.test/a.png"),
        item_key("https://x.test/a.png", "5c9e8f2b-2d5a-4f3e-9a41-7f3b9c1d2e4f"),
    )
    assert a != b and len(a) == len(b) == 32
    assert item_key(PRESIGNED) != item_key(PRESIGNED.replace("deadbeef", "00000000"))
    assert "deadbeef" not in item_key(PRESIGNED)


def test_paid_is_the_one_rule_and_credits_needed_uses_it():
    paid, pending, failed = (
        _answered("a"),
        ItemRecord(key=item_key("b"), pending=["n1"]),
        ItemRecord(key=item_key("c")),
    )
    failed.fail("failed", "output_not_found", "c: gone")
    assert paid.paid and not pending.paid and pending.in_flight_at_crash and not failed.paid
    known = {r.key: r for r in (paid, pending, failed)}
    keys = [paid.key, pending.key, failed.key, item_key("d"), item_key("free")]
    assert credits_needed(keys, known, free={item_key("free")}) == 3


def test_views_are_derived_from_the_record():
    record = _answered("https://x.test/a.png")
    record.possibly_double_charged = 1
    assert set(record.manifest()) >= {
        "key",
        "input",
        "status",
        "output_id",
        "url",
        "credits_charged",
        "possibly_double_charged",
    }
    assert record.xcom() == {
        "input": "https://x.test/a.png",
        "status": "not_started",
        "output_id": "out-0",
        "url": "https://cdn.test/0.jpeg",
        "possibly_double_charged": 1,
    }
    assert "message" not in record.state_value() and len(json.dumps(record.state_value())) < 400


def test_destination_versions_are_created_never_rewritten_and_the_newest_wins(tmp_path):
    dest = DestinationLedger(resolve_destination(tmp_path))
    record = ItemRecord(key=item_key("a"), input="a", pending=["n1"])
    dest.write(record)
    record.pending = []
    record.answered("o", "https://cdn.test/o.jpeg", charged=True)
    dest.write(record)
    files = sorted((tmp_path / LEDGER_DIR / ITEMS_DIR).iterdir())
    assert len(files) == 2
    loaded, damaged = dest.load()
    assert damaged == 0 and loaded[record.key].paid and loaded[record.key].credits_charged == 1


def test_a_damaged_newest_version_falls_back_to_the_one_before(tmp_path):
    dest = DestinationLedger(resolve_destination(tmp_path))
    record = _answered("a")
    dest.write(record)
    newest = sorted((tmp_path / LEDGER_DIR / ITEMS_DIR).iterdir())[-1]
    broken = newest.with_name(f"{record.key}.{'z' * 13}-ffffff.json")
    broken.write_bytes(b'{"key": "' + record.key.encode() + b'", "url": "https://cdn.te')  # truncated
    loaded, damaged = dest.load()
    assert damaged == 1 and loaded[record.key].url == "https://cdn.test/0.jpeg"


class _Log:
    def __init__(self) -> None:
        self.warnings: list[str] = []

    def warning(self, message: str, *args) -> None:
        self.warnings.append(message % args)


def test_invalid_utf8_and_truncated_lines_are_survived_and_counted_once(tmp_path):
    records = [_answered(f"https://x.test/{i}.png", i).manifest() for i in range(3)]
    write_manifest(tmp_path, records)
    manifest = tmp_path / MANIFEST_NAME
    manifest.write_bytes(manifest.read_bytes() + b'{"key": "\xff\xfe bad"}\n{"key": "abc", "url": "htt\n')
    log = _Log()
    ledger = Ledger(destination=resolve_destination(tmp_path), log=log)  # type: ignore[arg-type]
    loaded = ledger.load()
    assert len(loaded) == 3 and all(r.paid for r in loaded.values())
    assert ledger.damaged == 2
    assert len(log.warnings) == 1 and "Ignored 2 damaged ledger record" in log.warnings[0]


def test_a_manifest_of_provider_0_1_is_read_as_paid(tmp_path):
    url = "https://x.test/legacy.png"
    write_manifest(
        tmp_path,
        [{"input": url, "key": url, "status": "upscaled", "url": "https://cdn.test/l.jpeg", "path": "x.jpg"}],
    )
    loaded = Ledger(destination=resolve_destination(tmp_path)).load()
    assert loaded[item_key(url)].paid


def test_segments_cover_item_versions_and_are_merged_past_the_limit(tmp_path):
    target = resolve_destination(tmp_path)
    for run in range(MAX_SEGMENTS + 2):
        ledger = Ledger(destination=target)
        ledger.load()
        for i in range(3):
            ledger.save(_answered(f"https://x.test/{run}-{i}.png", i))
        ledger.finish()
    segments = list((tmp_path / LEDGER_DIR / SEGMENTS_DIR).glob("*.jsonl"))
    assert 1 <= len(segments) <= MAX_SEGMENTS
    # covered item versions stay (read by name, never fetched) until a compaction removes them
    assert len(list((tmp_path / LEDGER_DIR / ITEMS_DIR).glob("*.json"))) < 3 * 3 * (MAX_SEGMENTS + 2)
    everything = Ledger(destination=target).load()
    assert len(everything) == 3 * (MAX_SEGMENTS + 2) and all(r.paid for r in everything.values())
    assert len((tmp_path / MANIFEST_NAME).read_text().splitlines()) == len(everything)


def test_state_store_values_stay_small_and_a_retry_reads_them(tmp_path):
    store = MemoryStateStore()
    ledger = Ledger(store=store)
    records = [
        ItemRecord(
            key=item_key(f"https://x.test/{i}.png?sig=s3cret"), input=f"https://x.test/{i}.png?sig=***"
        )
        for i in range(600)
    ]
    for record in records:
        ledger.sent(record)
    for record in records[:400]:
        record.pending = []
        record.answered("o", "https://cdn.test/" + "x" * 200 + ".jpeg", charged=True)
        ledger.save(record)
    assert max(len(json.dumps(v)) for v in store.values()) < 1000 < STATE_VALUE_LIMIT
    assert "s3cret" not in json.dumps(store)
    loaded = Ledger(store=store).load()
    assert sum(r.paid for r in loaded.values()) == 400
    assert sum(r.in_flight_at_crash for r in loaded.values()) == 200


def test_with_a_destination_each_version_is_in_one_store_and_the_state_store_is_the_fallback(tmp_path):
    """One durable write per version (no execution-API call per answer when the destination has
    it); an answer the destination refuses lands in the state store, and its version wins there."""
    store = MemoryStateStore()
    ledger = Ledger(store=store, destination=resolve_destination(str(tmp_path)))
    first, second = _answered("https://x.test/1.png", 1), _answered("https://x.test/2.png", 2)
    for record in (first, second):
        ledger.sent(record)
        ledger.save(record)
    assert store == {}  # the destination took every version
    second.downloaded(str(tmp_path / "2.jpg"), 8, 8)

    def refuse(record):
        raise OSError(28, "No space left on device")

    ledger.dest.write = refuse
    ledger.save(second)  # the destination is full: the state store keeps the answer
    assert len(store) == 1
    with pytest.raises(OSError):  # an intent nobody can read later is never written, so never sent
        ledger.sent(_answered("https://x.test/3.png", 3))
    loaded = Ledger(store=store, destination=resolve_destination(str(tmp_path))).load()
    assert loaded[second.key].path == str(tmp_path / "2.jpg")  # the state store's newer version won
    assert loaded[first.key].paid and not loaded[first.key].path
    # a state-store version older than the destination's loses (one clock for both stores)
    first.downloaded(str(tmp_path / "1.jpg"), 8, 8)
    Ledger(destination=resolve_destination(str(tmp_path))).save(first)
    stale = _answered("https://x.test/1.png", 1)
    Ledger(store=store).save(stale)
    store_first = next(v for v in store.values() if v["key"] == first.key)
    store_first["rev"] = "0000000000001-abcdef"  # written before the destination's version
    again = Ledger(store=store, destination=resolve_destination(str(tmp_path))).load()
    assert again[first.key].path == str(tmp_path / "1.jpg")


def test_an_answer_no_store_could_take_is_written_at_the_end_of_the_try(tmp_path):
    """Airflow 3.1/3.2 (no state store): the destination refuses an answer for a moment; the
    answer stays in memory and finish() writes it, so the paid item is never lost."""
    ledger = Ledger(destination=resolve_destination(str(tmp_path)))
    record = _answered("https://x.test/late.png", 7)
    write = ledger.dest.write

    def refuse(version):
        raise OSError(5, "Input/output error")

    ledger.dest.write = refuse
    with pytest.raises(OSError):
        ledger.save(record)
    ledger.dest.write = write
    ledger.finish()
    assert Ledger(destination=resolve_destination(str(tmp_path))).load()[record.key].paid


def _write_concurrently(target, tasks: int, per_task: int) -> None:
    barrier = threading.Barrier(tasks)

    def task(t: int) -> None:
        ledger = Ledger(destination=target)
        ledger.load()
        barrier.wait()
        for i in range(per_task):
            record = ItemRecord(key=item_key(f"https://x.test/new-{t}-{i}.png"), input=f"new-{t}-{i}")
            ledger.sent(record)
            record.pending = []
            record.answered(f"o{t}-{i}", f"https://cdn.test/{t}/{i}.jpeg", charged=True)
            ledger.save(record)
        ledger.finish()

    with ThreadPoolExecutor(tasks) as pool:
        list(pool.map(task, range(tasks)))


@pytest.mark.parametrize("trial", range(3))
def test_four_writers_on_a_destination_of_5000_records_lose_nothing(tmp_path, trial):
    target = resolve_destination(tmp_path / "dest")
    old = [_answered(f"https://x.test/old-{i}.png", i) for i in range(5000)]
    for record in old:
        record.rev = "0000000000000-000000"
    DestinationLedger(target).write_segment(old)
    _write_concurrently(target, tasks=4, per_task=25)
    loaded = Ledger(destination=target).load()
    assert len(loaded) == 5100 and all(r.paid for r in loaded.values())


def test_spent_by_counts_what_may_have_been_charged_by_that_task_only():
    from airflow_provider_stablecog.ledger import spent_by

    mine = [
        ItemRecord(key="a" * 32, url="u", credits_charged=1, sent_by="d/r/t"),  # answered: 1
        ItemRecord(key="b" * 32, pending=["n1"], sent_by="d/r/t"),  # in flight at a crash: maybe 1
        ItemRecord(key="c" * 32, url="u", credits_charged=1, possibly_double_charged=1, sent_by="d/r/t"),
        ItemRecord(key="d" * 32, status="failed", sent_by="d/r/t"),  # refused, never charged: 0
    ]
    other = [ItemRecord(key="e" * 32, url="u", credits_charged=1, sent_by="d/r2/t")]
    assert spent_by([*mine, *other], "d/r/t") == 4
    assert spent_by([*mine, *other], None) == 0
    back = ItemRecord.from_dict(mine[1].state_value())
    assert back is not None and back.sent_by == "d/r/t" and back.possibly_spent == 1


def test_the_ledger_stamps_its_owner_and_reads_its_spend_back(tmp_path):
    from airflow.sdk import ObjectStoragePath

    dest = ObjectStoragePath(f"file://{tmp_path}")
    ledger = Ledger(destination=dest, owner="d/r/t")
    record = ItemRecord(key="f" * 32, input="x")
    ledger.sent(record)  # then the task dies: no answer
    assert record.sent_by == "d/r/t"
    again = Ledger(destination=dest, owner="d/r/t")
    again.load()
    assert again.spent_before == 1
    other = Ledger(destination=dest, owner="d/r2/t")
    other.load()
    assert other.spent_before == 0


def test_a_generation_record_keeps_every_output_and_prices_its_requests(tmp_path):
    record = ItemRecord(key=item_key("a fox"), input="a fox [seed 7]", seed=7, cost=3)
    ledger = Ledger(store=MemoryStateStore(), destination=resolve_destination(str(tmp_path)))
    ledger.sent(record)
    assert record.sent_at and record.possibly_spent == 3  # one request without an answer: 3 credits
    outputs = [(f"o{i}", f"https://cdn.test/{i}.jpeg") for i in range(3)]
    record.answered("o0", "https://cdn.test/0.jpeg", charged=True, cost=3, outputs=outputs)
    ledger.settle(record, record.pending[0])
    record.adopted = 1
    for i in range(3):
        record.downloaded_output(i, f"/x/{i}.jpg")
    ledger.save(record)
    assert record.paid and record.credits_charged == 3 and record.possibly_spent == 3
    assert record.result_urls() == [u for _, u in outputs]
    again = Ledger(destination=resolve_destination(str(tmp_path))).load()[record.key]
    assert (again.output_ids, again.paths, again.seed, again.adopted, again.cost) == (
        ["o0", "o1", "o2"],
        ["/x/0.jpg", "/x/1.jpg", "/x/2.jpg"],
        7,
        1,
        3,
    )
    xcom = again.xcom()
    assert "output_id" not in xcom and "url" not in xcom  # the lists say it all
    assert xcom["output_ids"] == ["o0", "o1", "o2"] and xcom["adopted"] == 1 and xcom["seed"] == 7
    assert credits_needed(["a", "b", "c"], {}, free=["c"], cost={"a": 2, "b": 4}) == 6


def test_every_read_and_write_goes_through_the_airflow_filesystem(monkeypatch):
    """The ledger and the destination's writes use the path's ``fs`` (Airflow's, connection-aware),
    never the path's own methods: with no ``conn_id`` those build a second filesystem — on S3 a
    second client (~0.4 s to start) — and report every ledger object to hook lineage."""
    from airflow.sdk import ObjectStoragePath
    from airflow.sdk.io import attach
    from fsspec.implementations.memory import MemoryFileSystem

    from airflow_provider_stablecog.utils.storage import AtomicWrite, ensure_directory

    attach("memory", fs=MemoryFileSystem())

    def refusing(name):
        real = getattr(ObjectStoragePath, name)

        def method(self, *args, **kwargs):
            if self.protocol not in ("file", "local", ""):  # a local temporary file may use them
                raise AssertionError(f"{self}: {name}() used instead of the path's fs")
            return real(self, *args, **kwargs)

        return method

    for name in ("write_bytes", "read_bytes", "mkdir", "unlink", "exists", "iterdir", "open"):
        monkeypatch.setattr(ObjectStoragePath, name, refusing(name))
    dest = resolve_destination("memory://fs-only/out")
    ensure_directory(dest, lambda exc: exc)
    ledger = Ledger(destination=dest)
    ledger.load()
    record = ItemRecord(key=item_key("https://x.test/a.png"), input="https://x.test/a.png")
    nonce = ledger.sent(record)
    ledger.settle(record, nonce)
    record.answered("o1", "https://cdn.test/a.jpeg", charged=True)
    ledger.save(record)
    target = dest / "a.jpg"
    with AtomicWrite(target) as writer:
        writer.open().write(b"image")
    record.downloaded(str(target), 1, 1)
    ledger.keep(record)
    ledger.finish()
    assert dest.fs.cat_file(target.path) == b"image"
    again = Ledger(destination=dest).load()[record.key]
    assert again.paid and again.path == str(target)
