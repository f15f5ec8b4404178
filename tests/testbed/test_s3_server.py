"""The ``s3_server`` fixture in-process: ObjectStoragePath on s3:// through the aws_default connection."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.testbed


def test_object_storage_path_round_trip(s3_server, monkeypatch):
    from airflow.sdk import ObjectStoragePath

    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    bucket = s3_server.create_bucket()
    path = ObjectStoragePath(f"s3://{bucket}/prefix/hello.txt")
    path.write_text("hello")
    assert path.read_text() == "hello"
    assert s3_server.list_keys(bucket) == ["prefix/hello.txt"]
    assert s3_server.endpoint_url.startswith("http://127.0.0.1:")


def test_the_ledger_lists_afresh_what_another_process_wrote_since(s3_server, monkeypatch):
    """Two tasks share a destination: the listing cache of one task's filesystem must not hide the
    other's records (the other process's PUTs do not invalidate this process's cache)."""
    import json

    from airflow.sdk import ObjectStoragePath

    from airflow_provider_stablecog.ledger import (
        ITEMS_DIR,
        LEDGER_DIR,
        DestinationLedger,
        ItemRecord,
        item_key,
        new_rev,
    )

    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    bucket = s3_server.create_bucket()
    mine, theirs = item_key("https://example.com/a.png"), item_key("https://example.com/b.png")
    ledger = DestinationLedger(ObjectStoragePath(f"s3://{bucket}/out"))
    ledger.write(ItemRecord(key=mine, input="https://example.com/a.png", status="upscaled"))
    assert set(ledger.load()[0]) == {mine}  # this listing is now in the filesystem's cache

    other = ItemRecord(key=theirs, input="https://example.com/b.png", status="upscaled", rev=new_rev())
    s3_server.client().put_object(  # another process: this one's cache knows nothing of it
        Bucket=bucket,
        Key=f"out/{LEDGER_DIR}/{ITEMS_DIR}/{theirs}.{other.rev}.json",
        Body=json.dumps(other.manifest()).encode(),
    )
    assert set(ledger.load()[0]) == {mine, theirs}
