"""The example DAGs as parsed (no stack): docs render as markdown, params are described, chunks claim
their pool slots, upscale tasks retry, the emulator URL is configurable, and the Asset wiring holds."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

EXAMPLE_DAGS = Path(__file__).resolve().parents[2] / "example_dags"


def _load(name: str, monkeypatch, **env: str):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    spec = importlib.util.spec_from_file_location(f"_example_{name}", EXAMPLE_DAGS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bag():
    try:
        from airflow.dag_processing.dagbag import DagBag
    except ImportError:  # Airflow 3.1
        from airflow.models.dagbag import DagBag

    dagbag = DagBag(dag_folder=str(EXAMPLE_DAGS), **_no_examples(DagBag))
    assert dagbag.import_errors == {}
    return dagbag


def test_doc_md_headings_stand_alone(bag):
    for dag_id, dag in bag.dags.items():
        lines = dag.doc_md.splitlines()
        assert lines[0].startswith("# "), dag_id
        for i, line in enumerate(lines):
            if line.startswith("#"):
                assert i == 0 or lines[i - 1] == "", f"{dag_id}: no blank line before {line!r}"
                assert lines[i + 1] == "", f"{dag_id}: no blank line after {line!r}"
        # no section text indented 4 spaces (markdown would render it as code glued to the title)
        prose = re.sub(r"```.*?```", "", dag.doc_md, flags=re.S)
        assert not [ln for ln in prose.splitlines() if ln.startswith("    ")], dag_id


def test_every_param_has_a_description(bag):
    for dag_id, dag in bag.dags.items():
        for name in dag.params:
            assert getattr(dag.params.get_param(name), "description", None), f"{dag_id}: param {name!r}"


def test_upscale_tasks_retry(bag):
    for dag_id, dag in bag.dags.items():
        for task in dag.tasks:
            if task.task_type == "UpscaleOperator" or getattr(task, "operator_name", "") == "UpscaleOperator":
                retries = (
                    task.partial_kwargs.get("retries") if hasattr(task, "partial_kwargs") else task.retries
                )
                assert retries and retries >= 1, f"{dag_id}.{task.task_id}"


def test_fanout_chunks_claim_pool_slots_equal_to_their_concurrency(bag):
    dag = bag.dags["example_stablecog_credit_aware_fanout"]
    chunk = dag.task_dict["upscale_chunk"]
    assert chunk.pool == "stablecog"
    assert chunk.partial_kwargs["pool_slots"] == chunk.partial_kwargs["max_concurrency"] == 2
    assert "pool_slots" in dag.doc_md and 'airflow pools set stablecog 5 "Stablecog plan"' in dag.doc_md
    assert "check_pool" in dag.task_dict


def test_scheduled_batch_documents_its_folder_variables(bag):
    doc = bag.dags["example_stablecog_scheduled_batch"].doc_md
    assert "STABLECOG_EXAMPLE_SOURCE" in doc and "STABLECOG_EXAMPLE_DESTINATION" in doc


def test_archive_name_from_run_id(monkeypatch):
    module = _load("example_stablecog_scheduled_batch", monkeypatch)
    assert (
        module.archive_name("manual__2026-01-01T00:00:00.123+00:00")
        == "manual__2026-01-01T00_00_00.123_00_00"
    )
    assert (
        module.archive_name("scheduled__2026-01-02T00:00:00+00:00") == "scheduled__2026-01-02T00_00_00_00_00"
    )
    assert "/" not in module.archive_name("a/../b") and module.archive_name("..") == "run"


def test_emulator_url_is_configurable(monkeypatch):
    url = "http://127.0.0.1:40123"
    fanout = _load("example_stablecog_credit_aware_fanout", monkeypatch, STABLECOG_EXAMPLE_SAMPLES_URL=url)
    assert all(image.startswith(url + "/samples/") for image in fanout.DEFAULT_IMAGES)
    etl = _load("example_stablecog_etl_enrichment", monkeypatch, STABLECOG_EXAMPLE_SAMPLES_URL=url)
    assert etl.dag.params["samples_url"] == url
    asset = _load("example_stablecog_asset", monkeypatch, STABLECOG_EXAMPLE_SAMPLES_URL=url)
    assert all(image.startswith(url) for image in asset.DEFAULT_IMAGES)
    catalogue = (EXAMPLE_DAGS / "data" / "catalogue.json").read_text()
    assert etl.CATALOGUE_SAMPLES_URL in catalogue  # what extract() rewrites


def test_asset_consumer_is_scheduled_on_the_producers_outlet(monkeypatch):
    module = _load(
        "example_stablecog_asset", monkeypatch, STABLECOG_EXAMPLE_ASSET_DESTINATION="s3://bucket/upscaled"
    )
    outlets = module.producer.task_dict["upscale"].outlets
    assert [o.uri for o in outlets] == ["s3://bucket/upscaled"]
    assert module.UPSCALED.uri == "s3://bucket/upscaled"
    condition = module.consumer.timetable.asset_condition
    assert [(a.uri, a.name) for a in condition.objects] == [(o.uri, o.name) for o in outlets]


def _no_examples(dagbag_class) -> dict:
    """Airflow 3.1 and 3.2 load their own example DAGs unless told not to (3.3 has no such flag)."""
    import inspect

    return (
        {"include_examples": False}
        if "include_examples" in inspect.signature(dagbag_class).parameters
        else {}
    )


def test_paid_tasks_carry_the_stablecog_retry_policy_on_3_3(bag):
    from airflow_provider_stablecog.compat import AIRFLOW_V_3_3_PLUS
    from airflow_provider_stablecog.retry_policy import StablecogTaskRetryPolicy

    paid = [
        (dag_id, task)
        for dag_id, dag in bag.dags.items()
        for task in dag.tasks
        if task.task_type in ("UpscaleOperator", "StablecogGenerateOperator")
        and not hasattr(task, "partial_kwargs")
    ]
    assert len(paid) >= 6
    for dag_id, task in paid:
        policy = getattr(task, "retry_policy", None)
        assert isinstance(policy, StablecogTaskRetryPolicy) == AIRFLOW_V_3_3_PLUS, f"{dag_id}.{task.task_id}"
