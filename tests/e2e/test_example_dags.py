"""Every example DAG end to end: real Airflow (``airflow dags test``, SQLite) against a real emulator."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from airflow_provider_stablecog.emulator.imaging import write_sample_images
from airflow_provider_stablecog.emulator.testing import run_emulator
from airflow_provider_stablecog.testing.airflow_sandbox import AirflowSandbox
from airflow_provider_stablecog.utils.storage import read_manifest

pytestmark = pytest.mark.e2e
EXAMPLE_DAGS = Path(__file__).resolve().parents[2] / "example_dags"


@pytest.fixture(scope="module")
def emulator():
    with run_emulator(latency=0.1, credits=1000, plan_concurrency=4) as emu:
        yield emu


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory, emulator):
    home = tmp_path_factory.mktemp("airflow")
    box = AirflowSandbox(home, home / "dags")
    for dag_file in EXAMPLE_DAGS.glob("example_*.py"):
        shutil.copy(dag_file, box.dags_folder / dag_file.name)
    shutil.copytree(EXAMPLE_DAGS / "data", box.dags_folder / "data")
    box.set_connection_env("stablecog_default", emulator.connection_json(plan_concurrency=4))
    box.migrate()
    done = box.run_cli("pools", "set", "stablecog", "2", "Stablecog plan concurrency")
    assert done.returncode == 0, done.stderr
    return box


def _dims(path) -> tuple[int, int]:
    with Image.open(path) as img:
        return img.size


def test_scheduled_batch(sandbox, emulator, tmp_path):
    emulator.reset()
    inputs = write_sample_images(
        tmp_path / "incoming", sizes=["64x48.png", "48x64.jpg", "80x60.webp"], seed=3
    )
    dest = tmp_path / "upscaled"
    conf = {"source": str(tmp_path / "incoming"), "destination": str(dest)}

    result = sandbox.dags_test("example_stablecog_scheduled_batch", conf=conf).check()

    states = sandbox.task_states("example_stablecog_scheduled_batch", result.run_id)
    assert set(states.values()) == {"success"}, states
    records = sandbox.xcom("example_stablecog_scheduled_batch", "upscale", result.run_id)
    assert [r["status"] for r in records] == ["upscaled"] * 3
    assert sandbox.xcom("example_stablecog_scheduled_batch", "wait_for_credits", result.run_id) == 1000
    manifest = read_manifest(dest)
    for path in inputs:
        record = next(r for r in manifest.values() if r["input"] == str(path))
        w, h = _dims(path)
        assert _dims(record["path"]) == (4 * w, 4 * h) == (record["width"], record["height"])
    summary = sandbox.xcom("example_stablecog_scheduled_batch", "record_manifest", result.run_id)
    assert summary["totals"] == {"upscaled": 3}
    assert Path(summary["manifest"].removeprefix("file://")).is_file()
    assert emulator.ledger()["net_charged"] == 3

    # the next scheduled run finds nothing new to pay for
    again = sandbox.dags_test("example_stablecog_scheduled_batch", conf=conf).check()
    records = sandbox.xcom("example_stablecog_scheduled_batch", "upscale", again.run_id)
    assert {r["status"] for r in records} == {"skipped"}
    assert emulator.ledger()["net_charged"] == 3


def test_etl_enrichment(sandbox, emulator, tmp_path):
    emulator.reset()
    catalogue = json.loads((EXAMPLE_DAGS / "data" / "catalogue.json").read_text())
    for row in catalogue:  # point the bundled catalogue at this emulator's port
        if row["image_url"]:
            row["image_url"] = row["image_url"].replace("http://127.0.0.1:8765", emulator.base_url)
    catalogue.append(
        {"sku": "SKU-BAD", "name": "Broken image", "image_url": emulator.sample_url("bad/not-an-image.png")}
    )
    (tmp_path / "catalogue.json").write_text(json.dumps(catalogue))
    conf = {
        "catalogue": str(tmp_path / "catalogue.json"),
        "destination": str(tmp_path / "images"),
        "output": str(tmp_path / "enriched.jsonl"),
    }

    result = sandbox.dags_test("example_stablecog_etl_enrichment", conf=conf).check()

    rows = [json.loads(line) for line in (tmp_path / "enriched.jsonl").read_text().splitlines()]
    assert [r["sku"] for r in rows] == [r["sku"] for r in catalogue]
    with_image = [r for r in rows if r["image_url"] and r["sku"] != "SKU-BAD"]
    for row in with_image:
        w, h = map(int, row["image_url"].rsplit("/", 1)[1].split(".")[0].split("x"))
        assert (row["upscaled_width"], row["upscaled_height"]) == (4 * w, 4 * h)
        assert _dims(row["upscaled_path"]) == (4 * w, 4 * h)
    assert next(r for r in rows if r["sku"] == "SKU-BAD")["upscale_error"] == "image_url_width_height_error"
    assert next(r for r in rows if r["sku"] == "SKU-1009").get("upscaled_path") is None
    # SKU-1001 and SKU-1008 share an image: paid once
    assert emulator.ledger()["net_charged"] == len({r["image_url"] for r in with_image})
    load = sandbox.xcom("example_stablecog_etl_enrichment", "load", result.run_id)
    assert load == {"loaded": len(catalogue), "failed": 1, "output": conf["output"]}


def test_credit_aware_fanout(sandbox, emulator, tmp_path):
    emulator.reset()
    images = [emulator.sample_url(f"{32 + i}x32.png") for i in range(23)] + [emulator.sample_url("32x32.png")]
    conf = {"images": images, "chunk_size": 10, "destination": str(tmp_path / "fanout")}

    result = sandbox.dags_test("example_stablecog_credit_aware_fanout", conf=conf).check()

    instances = sandbox.task_instances("example_stablecog_credit_aware_fanout", result.run_id)
    chunks = [ti for ti in instances if ti.task_id == "upscale_chunk"]
    assert len(chunks) == 3 and {ti.state for ti in chunks} == {"success"}
    labels = [
        r["rendered_map_index"]
        for r in sandbox.query(
            "SELECT rendered_map_index FROM task_instance WHERE task_id = 'upscale_chunk' AND run_id = ? ORDER BY map_index",
            (result.run_id,),
        )
    ]
    # the repeated first image is split once: no image is in two chunks (the credit plan's bound)
    assert labels == [
        "10 images: 32x32.png … 41x32.png",
        "10 images: 42x32.png … 51x32.png",
        "3 images: 52x32.png … 54x32.png",
    ]
    summary = sandbox.xcom("example_stablecog_credit_aware_fanout", "collect", result.run_id)
    assert summary["images"] == 23 and summary["chunks"] == 3
    assert summary["upscaled"] == 23 and not summary.get("skipped")
    assert emulator.ledger()["net_charged"] == 23
    assert len(read_manifest(tmp_path / "fanout")) == 23
    assert (
        sandbox.xcom("example_stablecog_credit_aware_fanout", "enough_credits_for_all", result.run_id) == 1000
    )
    # every chunk got the sensor's credit plan for the whole list
    assert sandbox.xcom(
        "example_stablecog_credit_aware_fanout", "enough_credits_for_all", result.run_id, key="credit_plan"
    ) == {"remaining": 1000, "needed": 23, "reserve": 0}


def test_dag_integrity():
    """No import errors, and every example DAG parses with no network access."""
    import socket

    try:
        from airflow.dag_processing.dagbag import DagBag
    except ImportError:  # Airflow 3.1
        from airflow.models.dagbag import DagBag

    real_connect = socket.socket.connect
    socket.socket.connect = lambda *a, **k: (_ for _ in ()).throw(AssertionError("network access at parse"))
    try:
        bag = DagBag(dag_folder=str(EXAMPLE_DAGS), **_no_examples(DagBag))
    finally:
        socket.socket.connect = real_connect
    assert bag.import_errors == {}
    assert {
        "example_stablecog_scheduled_batch",
        "example_stablecog_etl_enrichment",
        "example_stablecog_credit_aware_fanout",
    } <= set(bag.dag_ids)
    for dag_id in bag.dag_ids:
        assert bag.dags[dag_id].doc_md, f"{dag_id} has no documentation"


def _no_examples(dagbag_class) -> dict:
    """Airflow 3.1 and 3.2 load their own example DAGs unless told not to (3.3 has no such flag)."""
    import inspect

    return (
        {"include_examples": False}
        if "include_examples" in inspect.signature(dagbag_class).parameters
        else {}
    )


def test_generate_then_upscale_in_the_demo(tmp_path, monkeypatch, capsys):
    """``./dev demo --dag example_stablecog_generate_upscale``: prompts → credits → generate → upscale
    by output ID → contact sheet, in a throwaway Airflow against its own emulator."""
    from airflow_provider_stablecog import demo

    monkeypatch.delenv("AIRFLOW_CONN_STABLECOG_DEFAULT", raising=False)
    assert (
        demo.main(["--dag", demo.GENERATE_DAG_ID, "--out", str(tmp_path / "demo"), "--timeout", "400"]) == 0
    )
    printed = capsys.readouterr().out
    results = tmp_path / "demo" / "results"
    generated = read_manifest(results / "generated")
    upscaled = read_manifest(results / "upscaled")
    catalogue = json.loads((EXAMPLE_DAGS / "data" / "prompts.json").read_text())
    assert len(generated) == len(catalogue) and {r["status"] for r in generated.values()} == {"generated"}
    outputs = sum(len(r["output_ids"]) for r in generated.values())
    assert outputs == sum(item.get("num_outputs", 2) for item in catalogue)
    assert {r["input"] for r in upscaled.values()} == {o for r in generated.values() for o in r["output_ids"]}
    # charged by the emulator's ledger: Σ num_outputs for the prompts, 1 per upscale
    assert f"Emulator ledger: {2 * outputs} credits charged" in printed
    assert (results / "contact_sheet.png").is_file()
