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
