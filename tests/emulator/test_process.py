"""Tests against a real emulator process (CLI, run_emulator, lost responses)."""

from __future__ import annotations

import io
import json
import re
import signal
import subprocess
import sys
import time
from urllib.parse import unquote

import httpx
import pytest
from PIL import Image

from airflow_provider_stablecog.emulator.testing import (
    PACKAGE_ROOT,
    EmulatorStartError,
    RunningEmulator,
    emulator_command,
    run_emulator,
)

READY = re.compile(r"^Stablecog emulator ready at http://127\.0\.0\.1:(\d+) \(API key: (sc-[0-9a-f]{64})\)$")
pytestmark = [pytest.mark.timeout(60), pytest.mark.stablecog_emulator(latency=0.05, credits=20)]


def auth(emulator: RunningEmulator) -> dict[str, str]:
    return {"Authorization": f"Bearer {emulator.api_key}"}


def upscale(emulator: RunningEmulator, input_: str, timeout: float = 10.0) -> httpx.Response:
    return httpx.post(
        f"{emulator.base_url}/v1/image/upscale/create",
        headers=auth(emulator),
        json={"input": input_},
        timeout=timeout,
    )


def test_cli_port_zero_prints_one_ready_line_and_stops_on_sigterm():
    command = emulator_command(port=0, latency=0.01)
    env = {"PYTHONPATH": str(PACKAGE_ROOT), "PATH": "/usr/bin:/bin"}
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(PACKAGE_ROOT), env=env
    )
    try:
        line = process.stdout.readline().rstrip("\n")
        match = READY.match(line)
        assert match, line
        port = int(match[1])
        assert port != 0
        assert httpx.get(f"http://127.0.0.1:{port}/v1/health", timeout=5).json() == {"status": "ok"}
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
        assert process.stdout.read() == ""
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
        process.stderr.close()


def test_cli_rejects_bad_faults():
    result = subprocess.run(
        emulator_command(faults="meteor=0.5"),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        cwd=str(PACKAGE_ROOT),
    )
    assert result.returncode == 2 and "meteor" in result.stderr


def test_run_emulator_end_to_end(stablecog_emulator: RunningEmulator):
    emulator = stablecog_emulator
    assert emulator.pid > 0 and emulator.base_url.startswith("http://127.0.0.1:")
    response = upscale(emulator, emulator.sample_url("64x40.jpg"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["remaining_credits"] == 19
    image = Image.open(io.BytesIO(httpx.get(body["outputs"][0]["upscaled_image_url"]).content))
    assert (image.format, image.size) == ("JPEG", (256, 160))
    assert emulator.add_credits(5) == 24
    assert emulator.configure(latency=0.02)["latency"] == 0.02
    books = emulator.ledger()
    assert (books["charged"], books["delivered"], books["balance"]) == (1, 1, 24)
    other = emulator.add_account(credits=3)
    assert len(other["outputs"]) == 8
    assert len(emulator.output_ids(upscaled=False)) == 4
    free = upscale(emulator, emulator.output_ids(upscaled=True)[0])
    assert free.json()["remaining_credits"] == 24


def test_connection_helpers(stablecog_emulator_module: RunningEmulator):
    emulator = stablecog_emulator_module
    conn = json.loads(emulator.connection_json(timeout=30))
    assert conn == {
        "conn_type": "stablecog",
        "host": emulator.base_url,
        "password": emulator.api_key,
        "extra": {"timeout": 30},
    }
    uri = emulator.connection_uri(timeout=30)
    scheme, rest = uri.split("://", 1)
    credentials, host_and_query = rest.split("@", 1)
    assert scheme == "stablecog" and unquote(credentials) == ":" + emulator.api_key
    assert unquote(host_and_query.split("?")[0]) == emulator.base_url and uri.endswith("?timeout=30")


def test_drop_after_charge_breaks_the_connection(stablecog_emulator: RunningEmulator):
    emulator = stablecog_emulator
    emulator.configure(faults={"drop_after_charge": 1})
    with pytest.raises(httpx.HTTPError):
        upscale(emulator, emulator.sample_url("32x32.png"))
    books = emulator.ledger()
    assert (books["charged"], books["refunded"], books["responses_lost"], books["delivered"]) == (1, 0, 1, 0)
    assert books["faults_injected"] == {"drop_after_charge": 1}


def test_client_gone_before_a_slow_answer_counts_as_lost(stablecog_emulator: RunningEmulator):
    emulator = stablecog_emulator
    emulator.configure(faults={"slow": 1}, slow_seconds=0.8)
    with pytest.raises(httpx.ReadTimeout):
        upscale(emulator, emulator.sample_url("32x32.png"), timeout=0.3)
    deadline = time.monotonic() + 5
    while emulator.ledger()["responses_lost"] == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    books = emulator.ledger()
    assert (books["charged"], books["responses_lost"], books["delivered"]) == (1, 1, 0)


def test_real_rate_limit_headers():
    with run_emulator(rate_limit=1, latency=0.01) as emulator:
        url = f"{emulator.base_url}/v1/image/upscale/models"
        statuses = [httpx.get(url) for _ in range(3)]
        assert [r.status_code for r in statuses] == [200, 200, 429]
        assert statuses[0].headers["x-ratelimit-limit"] == "2"
        assert statuses[2].text == "Too Many Requests" and statuses[2].headers["retry-after"] == "1"


def test_run_emulator_reports_start_failure():
    with (
        pytest.raises(EmulatorStartError, match="plan_concurrency") as caught,
        run_emulator(plan_concurrency=-1),
    ):
        pass  # pragma: no cover
    assert caught.value.log_path is not None and caught.value.log_path.is_file()
    caught.value.log_path.unlink()


def test_emulator_command_maps_options():
    command = emulator_command(latency=0.1, faults={"timeout": 0.5}, access_log=True, data_dir=None)
    assert command[:3] == [sys.executable, "-m", "airflow_provider_stablecog.emulator"]
    assert command[3:] == ["--latency", "0.1", "--faults", "timeout=0.5", "--access-log", "--port", "0"]


def test_reset_after_charge_resets_before_any_byte(stablecog_emulator: RunningEmulator):
    emulator = stablecog_emulator
    emulator.configure(faults={"reset_after_charge": 1})
    with pytest.raises(httpx.HTTPError) as caught:
        upscale(emulator, emulator.sample_url("32x32.png"))
    assert not isinstance(caught.value, httpx.HTTPStatusError)  # no status line ever came
    books = emulator.ledger()
    assert (books["charged"], books["refunded"], books["responses_lost"], books["delivered"]) == (1, 0, 1, 0)
    assert books["faults_injected"] == {"reset_after_charge": 1}
    assert "ASGI callable returned without" not in emulator.log_text()


def test_new_options_reach_the_process():
    with run_emulator(
        latency_jitter=0.25, read_rate_limit=7, upload_rate_limit=1.5, rate_limit=3
    ) as emulator:
        config = emulator._call("GET", "/_emulator/config")
        assert (config["latency_jitter"], config["read_rate_limit"], config["upload_rate_limit"]) == (
            0.25,
            7.0,
            1.5,
        )
        assert emulator.configure(latency_jitter=0)["latency_jitter"] == 0


def test_jittered_answers_report_the_balance_of_their_own_charge(stablecog_emulator: RunningEmulator):
    """With answer-order jitter, an older (higher) balance can arrive after a newer one."""
    import concurrent.futures

    emulator = stablecog_emulator
    emulator.configure(latency=0.01, latency_jitter=0.5, fault_seed=11)
    arrivals: list[int] = []

    def one(n: int) -> None:
        arrivals.append(
            upscale(emulator, emulator.sample_url("32x32.png", seed=n)).json()["remaining_credits"]
        )

    with concurrent.futures.ThreadPoolExecutor(5) as pool:
        list(pool.map(one, range(10)))
    assert sorted(arrivals) == list(range(10, 20))  # credits=20: each answer its own charge's balance
    assert arrivals != sorted(arrivals, reverse=True)
