"""Issue 'credits sensor' must-show: a deferrable sensor waits for a top-up, then the upscale runs."""

from __future__ import annotations

import textwrap
import threading
import time

import pytest

from airflow_provider_stablecog.emulator.testing import run_emulator

pytestmark = pytest.mark.e2e

DAG = textwrap.dedent(
    """
    from __future__ import annotations

    import datetime

    from airflow.sdk import DAG

    from airflow_provider_stablecog.operators.upscale import UpscaleOperator
    from airflow_provider_stablecog.sensors.credits import StablecogCreditsSensor

    with DAG("gate_then_upscale", schedule=None, start_date=datetime.datetime(2026, 1, 1)) as dag:
        images = {images!r}
        wait = StablecogCreditsSensor(
            task_id="wait_for_credits", inputs=images, poke_interval=2, timeout=300, deferrable=True
        )
        upscale = UpscaleOperator(task_id="upscale", inputs=images, destination={destination!r})
        wait >> upscale
    """
)


def _credit_checks(emulator) -> int:
    return int(emulator.ledger()["requests_by_route"].get("GET /v1/credits", 0))


def test_deferred_sensor_succeeds_within_one_poke_after_top_up_then_upscale_runs(sandbox, tmp_path):
    with run_emulator(credits=2, latency=0.05) as emulator:
        images = [emulator.sample_url(f"{40 + i}x30.png") for i in range(5)]
        sandbox.set_connection_env("stablecog_default", emulator.connection_json(plan_concurrency=4))
        sandbox.write_dag("gate_then_upscale", DAG.format(images=images, destination=str(tmp_path / "out")))
        checks_at_top_up = []

        def top_up():
            deadline = time.monotonic() + 240
            while (
                time.monotonic() < deadline and _credit_checks(emulator) < 3
            ):  # the poke, then 2 trigger polls
                time.sleep(0.1)
            checks_at_top_up.append(_credit_checks(emulator))
            emulator.add_credits(10)

        helper = threading.Thread(target=top_up, daemon=True)
        helper.start()
        result = sandbox.dags_test("gate_then_upscale", timeout=300).check()
        helper.join(10)

        assert result.task_states() == {"wait_for_credits": "success", "upscale": "success"}
        # after the top-up: one trigger poll saw enough credits, then the operator read its balance
        # before and after the batch (the spend report's measured balance change)
        assert _credit_checks(emulator) - checks_at_top_up[0] <= 3
        assert result.xcom("wait_for_credits") == 12
        records = result.xcom("upscale")
        assert [r["status"] for r in records] == ["upscaled"] * 5
        ledger = emulator.ledger()
        assert ledger["net_charged"] == 5 and ledger["balance"] == 7
