"""UpscaleOperator against a real emulator process (plus requests-mock where a fault is easier to force)."""

from __future__ import annotations

import json
import threading
import time

import pytest
from PIL import Image

from airflow_provider_stablecog.compat import AirflowException, AirflowFailException
from airflow_provider_stablecog.exceptions import StablecogConfigError
from airflow_provider_stablecog.operators.upscale import UpscaleOperator
from airflow_provider_stablecog.utils.storage import read_manifest
from tests.operators.conftest import MemoryStateStore, charged, make_context, sample_images


def run(op, store=None):
    return op.execute(make_context(store))


def by_status(records):
    out = {}
    for r in records:
        out.setdefault(r["status"], []).append(r)
    return out


def test_mixed_batch_with_duplicates_downloads_4x_and_writes_manifest(emu, tmp_path):
    urls = [emu.sample_url("64x48.png"), emu.sample_url("32x32.jpg"), emu.sample_url("40x40.webp")]
    fresh_outputs = emu.output_ids(upscaled=False)[:2]
    upscaled_outputs = emu.output_ids(upscaled=True)[:1]
    local = sample_images(tmp_path)
    inputs = [
        *urls,
        *fresh_outputs,
        *upscaled_outputs,
        *local,
        urls[0],
        local[0].upper().lower(),
        fresh_outputs[0].upper(),
    ]
    dest = tmp_path / "out"

    records = run(UpscaleOperator(task_id="u", inputs=inputs, destination=str(dest), progress_interval=0))

    assert len(records) == len(inputs)
    assert [r["input"] for r in records[:3]] == urls
    assert all(r["status"] == "upscaled" for r in records), records
    # duplicates map back to the same result and were upscaled once
    assert records[-3]["output_id"] == records[0]["output_id"]
    assert records[-1]["output_id"] == records[3]["output_id"]
    ledger = emu.ledger()
    unique_paid = len(urls) + len(fresh_outputs) + len(local)  # already-upscaled output IDs are free
    assert ledger["net_charged"] == unique_paid
    assert all(n == 1 for n in ledger["charges_by_input"].values())
    # every output is exactly 4x its input
    sizes = {**{u: tuple(map(int, u.rsplit("/", 1)[1].split(".")[0].split("x"))) for u in urls}}
    for path in local:
        sizes[path] = Image.open(path).size
    for r in records:
        if r["input"] in sizes:
            w, h = sizes[r["input"]]
            assert Image.open(r["path"]).size == (4 * w, 4 * h)
    manifest = read_manifest(dest)
    assert len(manifest) == len(set(urls) | set(fresh_outputs) | set(upscaled_outputs) | set(local))
    record = next(iter(manifest.values()))
    assert {
        "input",
        "status",
        "output_id",
        "url",
        "path",
        "width",
        "height",
        "error",
        "credits_charged",
    } <= set(record)
    assert sum(r["credits_charged"] for r in manifest.values()) == unique_paid
    files = sorted(p.name for p in dest.iterdir() if p.is_file())
    assert "manifest.jsonl" in files and not [f for f in files if f.endswith(".part")]
    assert len(files) == len(manifest) + 1
    assert not list(dest.rglob("*.part"))


def test_xcom_is_compact_and_ordered(emu):
    inputs = [emu.sample_url(f"{16 + i}x16.png") for i in range(20)]
    records = run(UpscaleOperator(task_id="u", inputs=inputs, progress_interval=0))
    assert [r["input"] for r in records] == inputs
    assert all(
        set(r) == {"input", "status", "output_id", "url"} for r in records
    )  # no path: nothing downloaded
    assert len(json.dumps(records)) / len(records) < 220


def test_bad_items_fail_alone_and_the_task_fails_after_saving(emu, tmp_path):
    good = [emu.sample_url("24x24.png"), emu.sample_url("25x25.png")]
    bad = [
        "",
        "ftp://x/y.png",
        emu.sample_url("bad/not-an-image.png"),
        str(tmp_path / "missing.png"),
        "00000000-0000-4000-8000-000000000000",
    ]
    dest = tmp_path / "out"
    op = UpscaleOperator(task_id="u", inputs=good + bad, destination=str(dest), progress_interval=0)
    with pytest.raises(AirflowException) as info:
        run(op)
    message = str(info.value)
    assert "5 of 7 inputs failed" in message and "ftp" in message and "a retry cannot fix" in message
    assert isinstance(info.value, AirflowFailException)  # only bad items left: no Airflow retry for nothing
    manifest = read_manifest(dest)
    statuses = {r["input"]: (r["status"], r["error"]) for r in manifest.values()}
    assert statuses[good[0]][0] == statuses[good[1]][0] == "upscaled"
    assert statuses[bad[2]] == ("failed", "image_url_width_height_error")
    assert statuses[bad[3]] == ("failed", "file_not_found")
    assert statuses["00000000-0000-4000-8000-000000000000"] == ("failed", "output_not_found")
    assert charged(emu) == 2
    # a retry (same destination) redoes only the failures and pays nothing for the good ones
    with pytest.raises(AirflowException):
        run(UpscaleOperator(task_id="u", inputs=good + bad, destination=str(dest), progress_interval=0))
    assert charged(emu) == 2


def test_max_failed_ratio_lets_the_batch_pass(emu):
    records = run(
        UpscaleOperator(
            task_id="u", inputs=[emu.sample_url("20x20.png"), "javascript:alert(1)"], max_failed_ratio=0.5
        )
    )
    assert [r["status"] for r in records] == ["upscaled", "failed"]
    assert records[1]["error"] == "unsupported_scheme"


def test_concurrency_reaches_max_and_never_exceeds_it(emu):
    emu.configure(latency=0.3)
    inputs = [emu.sample_url(f"{20 + i}x20.png") for i in range(12)]
    run(UpscaleOperator(task_id="u", inputs=inputs, max_concurrency=3, progress_interval=0))
    assert emu.ledger()["max_in_flight"] == 3


def test_reserve_floor_respected_under_concurrency(emu):
    emu.set_balance(10)
    inputs = [emu.sample_url(f"{20 + i}x21.png") for i in range(20)]
    op = UpscaleOperator(
        task_id="u", inputs=inputs, max_concurrency=4, credit_reserve=4, fail_on_not_started=False
    )
    records = run(op)
    statuses = by_status(records)
    assert len(statuses["upscaled"]) == 6
    assert len(statuses["not_started"]) == 14
    assert all(r["error"] == "credit_reserve" for r in statuses["not_started"])
    assert emu.ledger()["balance"] == 4


def test_not_started_items_fail_the_task_by_default(emu, tmp_path):
    emu.set_balance(2)
    inputs = [emu.sample_url(f"{20 + i}x22.png") for i in range(4)]
    with pytest.raises(AirflowException, match="2 of 4 images were not started"):
        run(UpscaleOperator(task_id="u", inputs=inputs, destination=str(tmp_path), max_concurrency=2))
    emu.add_credits(10)
    records = run(UpscaleOperator(task_id="u", inputs=inputs, destination=str(tmp_path), max_concurrency=2))
    assert [r["status"] for r in records].count("skipped") == 2
    assert charged(emu) == 4


def test_insufficient_credits_mid_batch_stops_at_once(stablecog_conn, requests_mock):
    from tests.conftest import BASE_URL

    requests_mock.get(f"{BASE_URL}/v1/credits", json={"total_remaining_credits": 100})
    ok = {
        "json": {
            "outputs": [{"id": "o", "url": "u", "upscaled_image_url": "https://b.test/o.jpeg"}],
            "remaining_credits": 50,
        }
    }
    out = {"status_code": 400, "json": {"error": "insufficient_credits"}}
    m = requests_mock.post(f"{BASE_URL}/v1/image/upscale/create", [ok, ok, out, ok, ok])
    inputs = [f"https://img.test/{i}.png" for i in range(6)]
    op = UpscaleOperator(task_id="u", inputs=inputs, max_concurrency=1, fail_on_not_started=False)
    records = run(op)
    assert m.call_count == 3  # no new request after insufficient_credits
    assert [r["status"] for r in records] == [
        "upscaled",
        "upscaled",
        "not_started",
        "not_started",
        "not_started",
        "not_started",
    ]
    assert {r["error"] for r in records[2:]} == {"insufficient_credits"}


def test_bad_key_fails_without_retry(emu):
    emu.configure()  # keep the emulator; use a wrong key
    import os

    conn = json.loads(emu.connection_json())
    conn["password"] = "sc-" + "f" * 64
    os.environ["AIRFLOW_CONN_STABLECOG_DEFAULT"] = json.dumps(conn)
    with pytest.raises(Exception) as info:
        run(UpscaleOperator(task_id="u", inputs=[emu.sample_url("20x20.png")]))
    assert "Unauthorized" in str(info.value) and "password" in str(info.value)
    assert conn["password"] not in str(info.value)
    assert charged(emu) == 0


@pytest.mark.parametrize(
    "faults",
    # the draws hash the inputs (whose URLs hold the emulator's port): 16 items at 0.35 leave
    # P(no fault at all) ~ 0.1 %, and 13 attempts make P(an item never succeeds) negligible
    [
        {"spurious_429": 0.35},
        {"timeout": 0.35},
        {"worker_failure": 0.35},
        {"bad_gateway": 0.35},
        {"drop_after_charge": 0.35},
    ],
    ids=["429", "TIMEOUT", "worker_failure", "502", "dropped"],
)
def test_transient_faults_are_recovered(emu, tmp_path, faults):
    emu.configure(faults=faults, fault_seed=7)
    import os

    os.environ["AIRFLOW_CONN_STABLECOG_DEFAULT"] = emu.connection_json(
        plan_concurrency=4, rate_limit=0, max_retries=12, retry_backoff=0.05
    )
    inputs = [emu.sample_url(f"{20 + i}x23.png") for i in range(16)]
    op = UpscaleOperator(
        task_id="u", inputs=inputs, destination=str(tmp_path), progress_interval=0, max_failed_ratio=1.0
    )
    records = run(op)
    ledger = emu.ledger()
    if "worker_failure" in faults:
        # two worker failures in a row on one input mean a broken image: it stops there, refunded
        broken = [r for r in records if r["status"] == "failed"]
        assert all(r["error"] == "image_probably_broken" for r in broken), broken
        assert all(ledger["attempts_by_input"][r["input"]] == 2 for r in broken)
        assert len(broken) < len(records) / 2
    elif "drop_after_charge" in faults:
        # a lost answer may have been charged: resent (reported) up to twice, then left to the user
        gave_up = [r for r in records if r["status"] == "failed"]
        assert all(r["error"] == "response_lost" for r in gave_up), gave_up
        reported = sum(r.get("possibly_double_charged", 0) for r in records)
        assert reported + len(gave_up) == ledger["responses_lost"] > 0
    else:
        assert all(r["status"] == "upscaled" for r in records), records
    assert sum(ledger["faults_injected"].values()) > 0
    assert ledger["net_charged"] == ledger["delivered"] + ledger["responses_lost"]
    assert len(read_manifest(tmp_path)) == 16


def test_killed_then_retried_task_does_not_pay_twice(emu, tmp_path):
    emu.configure(latency=0.2)
    inputs = [emu.sample_url(f"{20 + i}x24.png") for i in range(30)]
    store = MemoryStateStore()
    op = UpscaleOperator(task_id="u", inputs=inputs, max_concurrency=2, progress_interval=0)

    def kill_soon():
        time.sleep(1.0)
        op.on_kill()

    threading.Thread(target=kill_soon).start()
    with pytest.raises(AirflowException, match="Stopped"):
        run(op, store)
    first = emu.ledger()["charges_by_input"]
    assert 0 < len(first) < 30
    retry = UpscaleOperator(task_id="u", inputs=inputs, max_concurrency=2, progress_interval=0)
    records = run(retry, store)  # the task_state_store of the same task instance
    assert all(r["status"] in ("upscaled", "skipped") for r in records)
    second = emu.ledger()["charges_by_input"]
    done_first = {r["input"] for r in records if r["status"] == "skipped"}
    assert done_first and all(second[i] == 1 for i in done_first)
    # at most the requests in flight at the kill can have been paid twice
    assert sum(second.values()) - 30 <= 2


def test_second_run_with_same_destination_charges_nothing(emu, tmp_path):
    inputs = [emu.sample_url(f"{20 + i}x25.png") for i in range(6)]
    run(UpscaleOperator(task_id="u", inputs=inputs, destination=str(tmp_path)))
    assert charged(emu) == 6
    records = run(UpscaleOperator(task_id="u", inputs=inputs, destination=str(tmp_path)))
    assert charged(emu) == 6
    assert {r["status"] for r in records} == {"skipped"}
    assert all(r["path"] for r in records)


def test_dry_run_sends_no_upscale(emu, tmp_path):
    inputs = [emu.sample_url("20x26.png"), emu.sample_url("20x26.png"), "ftp://nope"]
    plan = run(UpscaleOperator(task_id="u", inputs=inputs, destination=str(tmp_path), dry_run=True))
    assert plan["to_upscale"] == 1 and plan["invalid"] == 1 and plan["credits_needed"] == 1
    assert plan["credits_remaining"] == 10_000 and plan["enough_credits"] is True
    assert charged(emu) == 0
    assert "POST /v1/image/upscale/create" not in emu.ledger()["requests_by_route"]


def test_model_id_checked_before_spending(emu):
    with pytest.raises(StablecogConfigError, match="not a UUID"):
        run(UpscaleOperator(task_id="u", inputs=[emu.sample_url("20x20.png")], model_id="swinir"))
    with pytest.raises(StablecogConfigError, match="not one of the upscale models"):
        run(
            UpscaleOperator(
                task_id="u",
                inputs=[emu.sample_url("20x20.png")],
                model_id="00000000-0000-4000-8000-000000000001",
            )
        )
    assert charged(emu) == 0
    from airflow_provider_stablecog.hooks.stablecog import StablecogHook

    model = StablecogHook().list_upscale_models()[-1].id
    records = run(UpscaleOperator(task_id="u", inputs=[emu.sample_url("20x20.png")], model_id=model))
    assert records[0]["status"] == "upscaled"


def test_unwritable_destination_fails_before_spending(emu, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StablecogConfigError, match="not writable"):
        run(
            UpscaleOperator(
                task_id="u", inputs=[emu.sample_url("20x20.png")], destination=str(blocker / "sub")
            )
        )
    assert charged(emu) == 0


def test_oversized_local_image_fails_or_is_downscaled(emu, tmp_path):
    big = tmp_path / "big.png"
    Image.new("RGB", (1200, 1000), (10, 20, 30)).save(big)
    with pytest.raises(AirflowException, match=r"too_many_pixels|1,048,576"):
        run(UpscaleOperator(task_id="u", inputs=[str(big)]))
    assert charged(emu) == 0
    records = run(
        UpscaleOperator(
            task_id="u", inputs=[str(big)], downscale_oversized=True, destination=str(tmp_path / "o")
        )
    )
    w, h = Image.open(records[0]["path"]).size
    assert w * h <= 16 * 1_048_576 and (w, h) == (4 * (w // 4), 4 * (h // 4))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_concurrency": 0}, "max_concurrency"),
        ({"credit_reserve": -1}, "credit_reserve"),
        ({"max_failed_ratio": 2}, "max_failed_ratio"),
        ({"rate_limit": -1}, "rate_limit"),
    ],
)
def test_arguments_checked_at_parse(kwargs, match):
    with pytest.raises(ValueError, match=match):
        UpscaleOperator(task_id="u", inputs=[], **kwargs)


@pytest.mark.parametrize("inputs", [None, {"a": 1}, 42])
def test_inputs_that_are_not_a_list(stablecog_conn, inputs):
    with pytest.raises(StablecogConfigError, match="inputs"):
        run(UpscaleOperator(task_id="u", inputs=inputs))


def test_literal_destination_becomes_an_outlet_asset(tmp_path):
    op = UpscaleOperator(task_id="u", inputs=[], destination=str(tmp_path))
    assert [o.uri for o in op.outlets] == [f"file://{tmp_path}"]
    assert UpscaleOperator(task_id="v", inputs=[], destination="{{ ds }}").outlets == []


def test_operator_can_be_deep_copied():
    """Airflow deep-copies tasks (e.g. when rendering or taking a subset of a DAG)."""
    import copy

    op = UpscaleOperator(task_id="u", inputs=["https://img.test/a.png"], destination="/tmp/x")
    clone = copy.deepcopy(op)
    assert clone.inputs == op.inputs and clone is not op


def test_upload_key_inputs_are_sent_as_is(emu, tmp_path):
    from airflow_provider_stablecog.hooks.stablecog import StablecogHook
    from airflow_provider_stablecog.utils.inputs import parse_input

    (path,) = sample_images(tmp_path, sizes=((30, 20),))
    key = StablecogHook().upload_image(path)
    assert parse_input(key).kind == "upload_key"
    records = run(UpscaleOperator(task_id="u", inputs=[key], destination=str(tmp_path / "o")))
    assert records[0]["status"] == "upscaled" and Image.open(records[0]["path"]).size == (120, 80)
    assert emu.ledger()["uploads"] == 1  # not uploaded a second time


def test_operator_modules_import_without_the_client():
    """DAG files import the operators at every parse: the hook, client, requests and Pillow come at run time."""
    from tests.importcost import loaded_after_import

    heavy = (
        "requests",
        "PIL",
        "airflow_provider_stablecog.client",
        "airflow_provider_stablecog.hooks.stablecog",
    )
    modules = [
        "airflow_provider_stablecog.operators.upscale",
        "airflow_provider_stablecog.operators.generate",
    ]
    assert loaded_after_import(modules, heavy) == []
