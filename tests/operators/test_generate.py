"""StablecogGenerateOperator against a real emulator process; credits judged by the emulator's ledger."""

from __future__ import annotations

import pytest
from PIL import Image

from airflow_provider_stablecog.compat import AirflowFailException
from airflow_provider_stablecog.ledger import ItemRecord, Ledger, item_key
from airflow_provider_stablecog.operators.generate import OUTPUT_IDS_KEY, StablecogGenerateOperator
from airflow_provider_stablecog.operators.upscale import UpscaleOperator
from airflow_provider_stablecog.utils.storage import read_manifest, resolve_destination
from tests.operators.conftest import MemoryStateStore, charged, make_context

PROMPTS = ["a lighthouse at dawn", "a red fox in the snow", "a bowl of ramen"]


class _TI:
    """Just enough of a task instance for the operator's XCom pushes."""

    map_index = -1

    def __init__(self) -> None:
        self.pushed: dict[str, object] = {}

    def xcom_push(self, key: str, value: object) -> None:
        self.pushed[key] = value


def run(op, store=None, ti=None):
    context = make_context(store)
    if ti is not None:
        context["ti"] = ti
    return op.execute(context)


def generate(**kwargs) -> StablecogGenerateOperator:
    kwargs.setdefault("width", 256)
    kwargs.setdefault("height", 256)
    return StablecogGenerateOperator(task_id="generate", progress_interval=0, **kwargs)


def test_n_prompts_times_num_outputs_are_charged_exactly_and_written(emu, tmp_path):
    dest = tmp_path / "gen"
    ti = _TI()
    prompts = [*PROMPTS, {"prompt": "a cat astronaut", "num_outputs": 1, "width": 320}]
    records = run(generate(prompts=prompts, num_outputs=2, destination=str(dest)), ti=ti)

    assert [r["status"] for r in records] == ["generated"] * 4, records
    assert charged(emu) == 3 * 2 + 1  # Σ num_outputs, by the emulator's ledger
    assert [len(r["output_ids"]) for r in records] == [2, 2, 2, 1]
    assert all(isinstance(r["seed"], int) for r in records)  # a derived seed for each
    for r in records:
        assert len(r["paths"]) == len(r["output_ids"]) == len(r["urls"])
        for path in r["paths"]:
            assert Image.open(path).size == ((320, 256) if r["input"].startswith("a cat") else (256, 256))
    assert ti.pushed[OUTPUT_IDS_KEY] == [o for r in records for o in r["output_ids"]]
    assert ti.pushed["summary"]["credits_charged_this_try"] == 7
    manifest = read_manifest(dest)
    assert len(manifest) == 4 and sum(r["credits_charged"] for r in manifest.values()) == 7

    again = run(generate(prompts=prompts, num_outputs=2, destination=str(dest)))
    assert [r["status"] for r in again] == ["skipped"] * 4
    assert [r["output_ids"] for r in again] == [r["output_ids"] for r in records]
    assert charged(emu) == 7  # nothing paid twice


def test_the_output_ids_feed_an_upscale_1_credit_each_then_free(emu, tmp_path):
    ti = _TI()
    run(generate(prompts=PROMPTS[:2], num_outputs=2), ti=ti)
    output_ids = ti.pushed[OUTPUT_IDS_KEY]
    assert len(output_ids) == 4 and charged(emu) == 4
    up = UpscaleOperator(
        task_id="u", inputs=output_ids, destination=str(tmp_path / "up"), progress_interval=0
    )
    records = run(up)
    assert [r["status"] for r in records] == ["upscaled"] * 4
    assert charged(emu) == 4 + 4
    assert all(Image.open(r["path"]).size == (1024, 1024) for r in records)  # 4× the 256 px outputs
    # a re-run with a new destination: already upscaled by ID, answered for nothing
    rerun = UpscaleOperator(
        task_id="u", inputs=output_ids, destination=str(tmp_path / "up2"), progress_interval=0
    )
    assert [r["status"] for r in run(rerun)] == ["upscaled"] * 4
    assert charged(emu) == 8


def test_an_nsfw_prompt_fails_alone(emu, tmp_path):
    prompts = [PROMPTS[0], "a nude statue", PROMPTS[1]]
    op = generate(prompts=prompts, num_outputs=1, destination=str(tmp_path))
    with pytest.raises(AirflowFailException) as info:  # a bad item that a retry cannot fix
        run(op)
    assert "nsfw_prompt" in str(info.value) and "1 of 3" in str(info.value)
    manifest = {r["input"].split(" [seed")[0]: r for r in read_manifest(tmp_path).values()}
    assert manifest["a nude statue"]["status"] == "failed"
    assert manifest["a nude statue"]["error"] == "nsfw_prompt"
    assert manifest[PROMPTS[0]]["status"] == manifest[PROMPTS[1]]["status"] == "generated"
    assert charged(emu) == 2 and emu.ledger()["nsfw_rejected"] == 1
    # with a tolerance the task succeeds and still reports the refused prompt
    records = run(generate(prompts=prompts, num_outputs=1, destination=str(tmp_path), max_failed_ratio=0.5))
    assert [r["status"] for r in records] == ["skipped", "failed", "skipped"]
    assert charged(emu) == 2


def test_bad_items_are_refused_before_anything_is_spent(emu):
    bad = [
        "",
        {"prompt": "x", "width": 2048},
        {"prompt": "x", "width": 512.0},
        {"prompt": "x", "num_outputs": 5},
        {"prompt": "x", "guidance_scale": 31},
        {"prompt": "x", "seed": -1},
        {"prompt": "x" * 501},
        {"prompt": "x", "colour": "red"},
        {"prompt": "x", "model_id": "00000000-0000-4000-8000-000000000000"},
        {"prompt": "x", "scheduler_id": "00000000-0000-4000-8000-000000000000"},
        {"prompt": "x", "init_image": "relative/path.png"},
        42,
    ]
    op = generate(prompts=[PROMPTS[0], *bad], num_outputs=1)
    with pytest.raises(AirflowFailException) as info:
        run(op)
    message = str(info.value)
    assert f"{len(bad)} of {len(bad) + 1} inputs failed" in message
    assert "prompt 1" in message and "prompt 2 (x): width must be 256–1536" in message
    plan = generate(prompts=[PROMPTS[0], *bad], num_outputs=1).plan_prompts()
    codes = [b.code for b in plan.invalid]
    assert codes == [
        "empty_prompt",
        "invalid_width",
        "invalid_width",
        "invalid_num_outputs",
        "invalid_guidance_scale",
        "invalid_seed",
        "prompt_too_long",
        "unknown_parameter",
        "invalid_model_id",
        "invalid_scheduler_id",
        "relative_path",
        "not_a_prompt",
    ]
    assert charged(emu) == 1  # only the good prompt


def test_dry_run_sizes_the_prompts(emu):
    result = run(generate(prompts=[*PROMPTS, PROMPTS[0]], num_outputs=3, dry_run=True))
    assert result["unique"] == 3 and result["credits_needed"] == 9 and result["enough_credits"]
    assert (
        charged(emu) == 0
        and emu.ledger()["requests_by_route"].get("POST /v1/image/generation/create") is None
    )


def test_a_lost_answer_after_charge_is_found_in_the_listing_and_not_paid_twice(emu, tmp_path):
    emu.configure(faults={"drop_after_charge": 1.0})
    try:
        ti = _TI()
        records = run(generate(prompts=PROMPTS, num_outputs=2, destination=str(tmp_path)), ti=ti)
    finally:
        emu.configure(faults={})
    assert emu.ledger()["responses_lost"] == 3
    assert [r["status"] for r in records] == ["generated"] * 3
    assert all(r["adopted"] == 1 and len(r["paths"]) == 2 for r in records)
    assert "possibly_double_charged" not in records[0]
    assert charged(emu) == 6  # each prompt paid once
    summary = ti.pushed["summary"]
    assert summary["adopted"] == 3 and summary["credits_charged_this_try"] == 6
    assert summary["possibly_double_charged"] == 0


def test_in_flight_at_a_crash_is_adopted_from_the_listing(emu, tmp_path):
    """A try died after the server charged (the answer never reached the ledger): the next try finds it."""
    from airflow_provider_stablecog.hooks.stablecog import StablecogHook

    op = generate(prompts=[PROMPTS[0]], num_outputs=2, destination=str(tmp_path))
    planner = generate(prompts=[PROMPTS[0]], num_outputs=2)
    item = next(iter(planner.plan_prompts().unique.values()))
    store = MemoryStateStore()
    record = ItemRecord(key=item_key(item.key, item.model_id), input=item.display, seed=item.seed)
    Ledger(store=store, destination=resolve_destination(str(tmp_path))).sent(record)  # the intent
    StablecogHook().generate(**item.request())  # the request it sent; the try died before the answer
    assert charged(emu) == 2

    records = run(op, store)
    assert records[0]["status"] == "generated" and records[0]["adopted"] == 1
    assert len(records[0]["paths"]) == 2
    assert charged(emu) == 2  # found, not paid again
    assert op.summary["credits_adopted_from_earlier_tries"] == 2
    assert op.summary["credits_charged_this_try"] == 0


def test_the_credits_sensor_sizes_prompts_by_their_outputs(emu, tmp_path):
    from airflow_provider_stablecog.sensors.credits import StablecogCreditsSensor

    prompts = [*PROMPTS, {"prompt": "a cat astronaut", "num_outputs": 1}, PROMPTS[0], {"prompt": ""}]
    defaults = {"num_outputs": 3, "width": 256, "height": 256}

    def sensor() -> StablecogCreditsSensor:
        return StablecogCreditsSensor(
            task_id="enough",
            prompts=prompts,
            generation_defaults=defaults,
            destination=str(tmp_path),
            reserve=5,
            deferrable=False,
        )

    requirement = sensor().requirement()
    assert (requirement.needed, requirement.total) == (3 * 3 + 1, 15)  # Σ num_outputs; invalid: free
    run(generate(prompts=prompts[:2], destination=str(tmp_path), max_failed_ratio=1.0, **defaults))
    assert sensor().requirement().needed == 3 + 1  # what the destination already holds is paid
    with pytest.raises(ValueError, match="exactly one of"):
        StablecogCreditsSensor(task_id="s", prompts=prompts, min_credits=3)


def test_init_images_by_output_id_local_file_and_url(emu, tmp_path):
    from tests.operators.conftest import sample_images

    local = sample_images(tmp_path, sizes=((300, 300),))[0]
    output_id = emu.output_ids()[0]
    prompts = [
        {"prompt": "variation of an output", "init_image": output_id},
        {"prompt": "variation of a file", "init_image": local, "prompt_strength": 0.8},
        {"prompt": "variation of a URL", "init_image": emu.sample_url("300x300.png")},
        {"prompt": "variation of nothing", "init_image": "11111111-2222-4333-8444-555555555555"},
    ]
    records = run(generate(prompts=prompts, num_outputs=1, max_failed_ratio=0.5))
    assert [r["status"] for r in records] == ["generated"] * 3 + ["failed"]
    assert records[3]["error"] == "output_not_found"  # not one of the account's outputs: never sent
    assert charged(emu) == 3 and emu.ledger()["uploads"] == 1
