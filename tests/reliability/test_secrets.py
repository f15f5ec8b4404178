"""The API key never leaves the connection: every example DAG run end to end, then grep for it.

Real Airflow (``airflow dags test``, SQLite) against a real emulator whose account has a known
key. Searched: the ``dags test`` output (the task logs go there), every file under
``$AIRFLOW_HOME`` (``logs/``, the metadata DB with its ``xcom`` and
``rendered_task_instance_fields`` tables), the destinations with their manifests, and the
exceptions of a failed run with a rejected key. Presigned input URLs must not show their
signature in the task logs or the upscale XComs either (they do stay in the rendered template
fields and upstream XComs, where the user's own tasks put them, and in the manifest's ``key``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from airflow_provider_stablecog.emulator.imaging import write_sample_images
from airflow_provider_stablecog.emulator.testing import run_emulator
from airflow_provider_stablecog.testing.airflow_sandbox import AirflowSandbox
from tests.reliability.conftest import record_secret_grep

pytestmark = pytest.mark.e2e
EXAMPLE_DAGS = Path(__file__).resolve().parents[2] / "example_dags"
KNOWN_KEY = "sc-" + "5ec7e75ec7e7a11e" * 4
REJECTED_KEY = "sc-" + "bad0bad0c0ffee00" * 4
SIGNATURE = "f00dfacef00dface9e7a11"
CREDENTIAL = "AKIAKNOWNCREDENTIAL7"


def _presigned(url: str) -> str:
    return f"{url}?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential={CREDENTIAL}%2F20260101&X-Amz-Signature={SIGNATURE}"


def _count(haystack: bytes, needle: str) -> int:
    return haystack.count(needle.encode())


@pytest.fixture(scope="module")
def runs(tmp_path_factory, migrated_db_template):
    """Run the three example DAGs (and one with a rejected key); return what they left."""
    with run_emulator(api_key=KNOWN_KEY, latency=0.05, credits=1000, plan_concurrency=4, rate_limit=0) as emu:
        root = tmp_path_factory.mktemp("secrets")
        box = AirflowSandbox(root / "airflow", root / "dags")
        for dag_file in EXAMPLE_DAGS.glob("example_*.py"):
            shutil.copy(dag_file, box.dags_folder / dag_file.name)
        shutil.copytree(EXAMPLE_DAGS / "data", box.dags_folder / "data")
        box.set_connection_env("stablecog_default", emu.connection_json(plan_concurrency=4, rate_limit=0))
        box.migrate(template=migrated_db_template)
        assert box.run_cli("pools", "set", "stablecog", "2", "Stablecog plan concurrency").returncode == 0

        write_sample_images(root / "incoming", sizes=["64x48.png", "48x64.jpg"], seed=5)
        catalogue = [
            {"sku": "A", "name": "presigned", "image_url": _presigned(emu.sample_url("40x30.png"))},
            *(
                {"sku": f"B{i}", "name": "plain", "image_url": emu.sample_url(f"{30 + i}x40.png")}
                for i in range(4)
            ),
            {"sku": "C", "name": "broken", "image_url": _presigned(emu.sample_url("bad/not-an-image.png"))},
        ]
        (root / "catalogue.json").write_text(json.dumps(catalogue))
        fanout_images = [_presigned(emu.sample_url(f"{20 + i}x20.png")) for i in range(3)] + [
            emu.sample_url("24x20.png")
        ]
        results = [
            box.dags_test(
                "example_stablecog_scheduled_batch",
                conf={"source": str(root / "incoming"), "destination": str(root / "out-batch")},
            ),
            box.dags_test(
                "example_stablecog_etl_enrichment",
                conf={
                    "catalogue": str(root / "catalogue.json"),
                    "destination": str(root / "out-etl"),
                    "output": str(root / "enriched.jsonl"),
                },
            ),
            box.dags_test(
                "example_stablecog_credit_aware_fanout",
                conf={"images": fanout_images, "chunk_size": 2, "destination": str(root / "out-fanout")},
            ),
        ]
        for result in results:
            result.check()
        rejected_conn = json.loads(emu.connection_json(plan_concurrency=4, rate_limit=0))
        rejected_conn["password"] = REJECTED_KEY
        rejected = box.dags_test(
            "example_stablecog_credit_aware_fanout",
            conf={"images": fanout_images, "chunk_size": 2, "destination": str(root / "out-rejected")},
            extra_env={"AIRFLOW_CONN_STABLECOG_DEFAULT": json.dumps(rejected_conn)},
        )
        yield {"box": box, "root": root, "results": results, "rejected": rejected, "emu": emu}


def test_example_dags_leak_no_key(runs):
    box, root = runs["box"], runs["root"]
    assert not runs["rejected"].ok and "Unauthorized" in runs["rejected"].output  # the rejected key failed
    outputs = "\n".join(r.output for r in [*runs["results"], runs["rejected"]]).encode()
    files = b"\n".join(
        p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    )  # AIRFLOW_HOME, DB, destinations
    xcoms = "\n".join(str(r["value"]) for r in box.query("SELECT value FROM xcom")).encode()
    rendered = "\n".join(
        str(r["rendered_fields"])
        for r in box.query("SELECT rendered_fields FROM rendered_task_instance_fields")
    ).encode()
    manifests = b"\n".join(p.read_bytes() for p in root.rglob("manifest.jsonl"))
    assert rendered and xcoms and manifests  # something was searched in each
    sources = {
        "dags test output": outputs,
        "AIRFLOW_HOME + destinations": files,
        "xcom": xcoms,
        "rendered fields": rendered,
        "manifests": manifests,
    }
    hits = {name: _count(data, KNOWN_KEY) + _count(data, REJECTED_KEY) for name, data in sources.items()}
    # the key without its prefix, and its tail, must not appear either
    hits["key fragments"] = sum(
        _count(outputs + files, k[3:]) + _count(outputs + files, k[-24:]) for k in (KNOWN_KEY, REJECTED_KEY)
    )
    total = sum(hits.values())
    record_secret_grep(total, ", ".join(sources), sum(len(d) for d in sources.values()))
    assert hits == dict.fromkeys(hits, 0)


def test_presigned_urls_are_masked_in_logs_and_xcoms(runs):
    """The provider's own log lines and XComs show presigned URLs redacted.

    (The example DAGs' plain ``@task`` functions return the URL lists, and Airflow logs those
    return values in full — "Done. Returned value was: ..."; that is the DAG author's to mask.)
    """
    box = runs["box"]
    outputs = "\n".join(r.output for r in [*runs["results"], runs["rejected"]])
    ours = [line for line in outputs.splitlines() if "airflow_provider_stablecog" in line]
    assert any("X-Amz-Signature=***" in line for line in ours)  # the URLs were logged, redacted
    xcoms = "\n".join(
        str(r["value"]) for r in box.query("SELECT value FROM xcom WHERE task_id LIKE 'upscale%'")
    )
    assert xcoms
    for secret in (SIGNATURE, CREDENTIAL):
        leaking = [line for line in ours if secret in line]
        assert not leaking, leaking[:3]
        assert secret not in xcoms, f"{secret} in the upscale XComs"
