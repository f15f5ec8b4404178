"""The operator on the ledger: model changes, secrets, and requests in flight when a try died."""

from __future__ import annotations

import json

import pytest

from airflow_provider_stablecog.compat import AirflowException
from airflow_provider_stablecog.hooks.stablecog import StablecogHook
from airflow_provider_stablecog.ledger import ItemRecord, Ledger, item_key
from airflow_provider_stablecog.operators.upscale import UpscaleOperator
from airflow_provider_stablecog.utils.storage import resolve_destination
from tests.operators.conftest import MemoryStateStore, make_context


def test_a_new_model_upscales_again_into_its_own_files(emu, tmp_path):
    url = emu.sample_url("30x30.png")
    models = StablecogHook().list_upscale_models()
    other = next(m.id for m in models if not m.is_default) if len(models) > 1 else None
    if other is None:
        pytest.skip("the emulator lists one upscale model")
    first = UpscaleOperator(
        task_id="u", inputs=[url], destination=str(tmp_path), progress_interval=0
    ).execute(make_context())
    second = UpscaleOperator(
        task_id="u", inputs=[url], destination=str(tmp_path), model_id=other, progress_interval=0
    ).execute(make_context())
    assert first[0]["status"] == second[0]["status"] == "upscaled"
    assert first[0]["path"] != second[0]["path"]
    assert emu.ledger()["net_charged"] == 2
    again = UpscaleOperator(
        task_id="u", inputs=[url], destination=str(tmp_path), model_id=other, progress_interval=0
    ).execute(make_context())
    assert again[0]["status"] == "skipped" and emu.ledger()["net_charged"] == 2


def test_no_presigned_signature_is_stored_anywhere(emu, tmp_path):
    secret = "5ec7e75167ab0c9d"
    url = emu.sample_url("31x31.png") + f"?X-Amz-Credential=AKIAEXAMPLE&X-Amz-Signature={secret}"
    store = MemoryStateStore()
    records = UpscaleOperator(
        task_id="u", inputs=[url], destination=str(tmp_path), progress_interval=0
    ).execute(make_context(store))
    assert records[0]["status"] == "upscaled"
    stored = [p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and p.suffix in (".json", ".jsonl")]
    assert len(stored) >= 2  # the manifest and at least one ledger object
    assert not [b for b in stored if secret.encode() in b]
    assert secret not in json.dumps(store) and secret not in json.dumps(records)


def _crashed_try(store: MemoryStateStore, destination, urls: list[str]) -> None:
    """What a SIGKILL leaves: the requests were recorded as sent, their answers never came."""
    ledger = Ledger(store=store, destination=resolve_destination(destination))
    for url in urls:
        ledger.sent(ItemRecord(key=item_key(url), input=url))


def test_requests_in_flight_at_a_crash_are_resent_and_reported(emu, tmp_path):
    urls = [emu.sample_url(f"{20 + i}x32.png") for i in range(5)]
    store = MemoryStateStore()
    _crashed_try(store, tmp_path, urls[:2])
    op = UpscaleOperator(task_id="u", inputs=urls, destination=str(tmp_path), progress_interval=0)
    records = op.execute(make_context(store))
    assert [r["status"] for r in records] == ["upscaled"] * 5
    assert [r.get("possibly_double_charged", 0) for r in records] == [1, 1, 0, 0, 0]
    assert op.summary["possibly_double_charged"] == 2
    manifest = Ledger(destination=resolve_destination(tmp_path)).load()
    assert (
        manifest[item_key(urls[0])].possibly_double_charged == 1 and not manifest[item_key(urls[0])].pending
    )


def test_resend_possibly_charged_false_leaves_them_to_the_user(emu, tmp_path):
    urls = [emu.sample_url(f"{20 + i}x33.png") for i in range(3)]
    store = MemoryStateStore()
    _crashed_try(store, tmp_path, urls[:1])
    op = UpscaleOperator(
        task_id="u",
        inputs=urls,
        destination=str(tmp_path),
        progress_interval=0,
        resend_possibly_charged=False,
    )
    with pytest.raises(AirflowException, match=r"possibly|may have been charged"):
        op.execute(make_context(store))
    assert emu.ledger()["net_charged"] == 2
    record = Ledger(destination=resolve_destination(tmp_path)).load()[item_key(urls[0])]
    assert record.status == "not_started" and record.error == "possibly_charged" and record.pending


def test_a_destination_only_crash_is_read_without_the_state_store(emu, tmp_path):
    """A new DAG run (new state store) still sees what the killed run had in flight."""
    urls = [emu.sample_url(f"{20 + i}x34.png") for i in range(3)]
    _crashed_try(MemoryStateStore(), tmp_path, urls[:1])
    records = UpscaleOperator(
        task_id="u", inputs=urls, destination=str(tmp_path), progress_interval=0
    ).execute(make_context())
    assert records[0].get("possibly_double_charged") == 1 and emu.ledger()["net_charged"] == 3


def test_images_written_by_a_try_that_died_before_its_end_are_skipped(emu, tmp_path, monkeypatch):
    """A file's record waits for the end-of-try segment: a try killed before it leaves "paid, file
    present", which the next try skips (pays nothing) and shows with the file's path."""
    urls = [emu.sample_url(f"{20 + i}x35.png") for i in range(3)]
    with monkeypatch.context() as m:
        m.setattr(Ledger, "finish", lambda self, records=(): None)  # killed after the last download
        first = UpscaleOperator(
            task_id="u", inputs=urls, destination=str(tmp_path), progress_interval=0
        ).execute(make_context())
    assert [r["status"] for r in first] == ["upscaled"] * 3
    assert not (tmp_path / "manifest.jsonl").exists()
    records = UpscaleOperator(
        task_id="u", inputs=urls, destination=str(tmp_path), progress_interval=0
    ).execute(make_context())
    assert [r["status"] for r in records] == ["skipped"] * 3
    assert [r["path"] for r in records] == [r["path"] for r in first]
    assert emu.ledger()["net_charged"] == 3
    manifest = Ledger(destination=resolve_destination(tmp_path)).load()
    assert {r.path for r in manifest.values()} == {r["path"] for r in first}
