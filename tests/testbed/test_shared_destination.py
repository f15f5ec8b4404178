"""Four tasks at once on one destination that already holds 5,000 records: nothing is lost.

Each task is a real :class:`UpscaleOperator` run in its own thread against the emulator; the
destination is a local folder or an ``s3://`` bucket on the loopback S3 API. Afterwards a re-run of
every input charges nothing (judged by the emulator's ledger), three trials each.
"""

from __future__ import annotations

import threading
import uuid

import pytest

from airflow_provider_stablecog.ledger import DestinationLedger, ItemRecord, Ledger, item_key
from airflow_provider_stablecog.operators.upscale import UpscaleOperator
from airflow_provider_stablecog.utils.storage import resolve_destination
from tests.reliability.support import MemoryStateStore, make_context

pytestmark = pytest.mark.testbed
TASKS, PER_TASK, EXISTING = 4, 12, 5000


def _seed(destination) -> None:
    """5,000 records of earlier runs, as one segment (what a finished run leaves)."""
    old = []
    for i in range(EXISTING):
        record = ItemRecord(
            key=item_key(f"https://old.test/{i}.png"), input=f"https://old.test/{i}.png", status="upscaled"
        )
        record.answered(f"old-{i}", f"https://cdn.test/old/{i}.jpeg", charged=True)
        record.rev = "0000000000000-000000"
        old.append(record)
    DestinationLedger(destination).write_segment(old)


@pytest.fixture
def shared_emulator(emulator, monkeypatch):
    emulator.reset()
    emulator.configure(latency=0.05, faults={}, rate_limit=0)
    monkeypatch.setenv(
        "AIRFLOW_CONN_STABLECOG_DEFAULT", emulator.connection_json(plan_concurrency=4, rate_limit=0)
    )
    return emulator


@pytest.mark.parametrize("trial", range(3))
@pytest.mark.parametrize("where", ["local", "s3"])
def test_four_tasks_share_a_destination_and_a_rerun_charges_nothing(
    shared_emulator, s3_server, monkeypatch, tmp_path, where, trial
):
    emu = shared_emulator
    if where == "s3":
        for name, value in s3_server.env().items():
            monkeypatch.setenv(name, value)
        destination = f"s3://{s3_server.create_bucket(f'shared-{uuid.uuid4().hex[:8]}')}/upscaled"
    else:
        destination = str(tmp_path / "upscaled")
    _seed(resolve_destination(destination))
    chunks = [
        [emu.sample_url(f"{20 + t * PER_TASK + i}x{40 + trial}.png") for i in range(PER_TASK)]
        for t in range(TASKS)
    ]
    barrier = threading.Barrier(TASKS)
    errors: list[BaseException] = []

    def task(inputs: list[str]) -> None:
        op = UpscaleOperator(
            task_id="chunk", inputs=inputs, destination=destination, max_concurrency=2, progress_interval=0
        )
        barrier.wait()
        try:
            op.execute(make_context(MemoryStateStore()))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=task, args=(chunk,)) for chunk in chunks]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    everything = [url for chunk in chunks for url in chunk]
    assert emu.ledger()["net_charged"] == len(everything)

    loaded = Ledger(destination=resolve_destination(destination)).load()
    assert len(loaded) == EXISTING + len(everything)
    assert all(loaded[item_key(url)].paid and loaded[item_key(url)].path for url in everything)

    records = UpscaleOperator(
        task_id="again", inputs=everything, destination=destination, progress_interval=0
    ).execute(make_context())
    assert {r["status"] for r in records} == {"skipped"}
    assert emu.ledger()["net_charged"] == len(everything)  # the re-run charged nothing
