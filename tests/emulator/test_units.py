"""Unit tests: configuration, fault draws, images, rate limiter, import cost."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from airflow_provider_stablecog.emulator import imaging
from airflow_provider_stablecog.emulator.config import EmulatorConfig, format_faults, parse_faults
from airflow_provider_stablecog.emulator.faults import decide_fault, fault_draw
from airflow_provider_stablecog.emulator.state import RateLimiter, SlotPool


def test_parse_faults_accepts_string_and_mapping():
    assert parse_faults("timeout=0.05, worker_failure=0.1") == {"timeout": 0.05, "worker_failure": 0.1}
    assert parse_faults({"slow": "0.5", "bad_gateway": 0}) == {"slow": 0.5}
    assert parse_faults(format_faults({"spurious_429": 0.2})) == {"spurious_429": 0.2}
    assert parse_faults("") == {}


@pytest.mark.parametrize("spec", ["nope=0.1", "timeout", "timeout=1.5", "timeout=0.6,slow=0.6"])
def test_parse_faults_rejects_bad_specs(spec):
    with pytest.raises(ValueError):
        parse_faults(spec)


def test_config_update_validates_and_limits_names():
    config = EmulatorConfig(api_key="sc-x")
    config.update({"latency": "0.25", "faults": "timeout=0.5", "queue_limit": 3})
    assert (config.latency, config.faults, config.queue_limit) == (0.25, {"timeout": 0.5}, 3)
    with pytest.raises(ValueError):
        config.update({"latency": -1})
    with pytest.raises(ValueError):
        config.update({"api_key": "sc-y"})
    assert config.latency == 0.25


def test_default_api_key_shape():
    key = EmulatorConfig().api_key
    assert key.startswith("sc-") and len(key) == 67 and int(key[3:], 16) >= 0


def test_fault_decision_is_pure_and_roughly_calibrated():
    faults = {"timeout": 0.1, "worker_failure": 0.2, "slow": 0.3}
    first = [decide_fault(faults, 42, f"in-{i}", 1) for i in range(4000)]
    again = [decide_fault(faults, 42, f"in-{i}", 1) for i in reversed(range(4000))][::-1]
    assert first == again
    share = {kind: first.count(kind) / len(first) for kind in ("timeout", "worker_failure", "slow")}
    assert share == pytest.approx({"timeout": 0.1, "worker_failure": 0.2, "slow": 0.3}, abs=0.03)
    assert first.count(None) / len(first) == pytest.approx(0.4, abs=0.03)
    assert fault_draw(1, "x", 1) != fault_draw(2, "x", 1) != fault_draw(1, "x", 2)
    assert decide_fault({}, 1, "x", 1) is None


def test_sample_images_are_deterministic_and_sized():
    png = imaging.sample_bytes(256, 192, "png", 3)
    assert png == imaging.encode(imaging.render_sample(256, 192, 3), "png")
    assert png != imaging.sample_bytes(256, 192, "png", 4)
    for fmt, pil_format in (("png", "PNG"), ("jpg", "JPEG"), ("webp", "WEBP")):
        with Image.open(io.BytesIO(imaging.sample_bytes(100, 60, fmt))) as image:
            assert (image.format, image.size) == (pil_format, (100, 60))


def test_parse_sample_name():
    assert imaging.parse_sample_name("256x192.png") == (256, 192, "png")
    for bad in ("256.png", "0x10.png", "10x10.gif", "axb.png", "9000x10.png"):
        with pytest.raises(ValueError):
            imaging.parse_sample_name(bad)


def test_write_sample_images(tmp_path: Path):
    paths = imaging.write_sample_images(tmp_path / "in", sizes=["64x32.png", "40x40.jpg"], seed=5)
    assert [p.name for p in paths] == ["64x32.png", "40x40.jpg"]
    with Image.open(paths[0]) as image:
        assert image.size == (64, 32)
    assert len(imaging.write_sample_images(tmp_path / "default")) == len(imaging.DEFAULT_SAMPLE_SIZES)


def test_inspect_image_rejects_bad_inputs():
    assert imaging.inspect_image(imaging.sample_bytes(32, 32, "webp")) == imaging.ImageInfo("webp", 32, 32)
    bad_inputs = [imaging.NOT_AN_IMAGE, imaging.truncated_jpeg(), _gif_bytes()]
    for data in bad_inputs:
        with pytest.raises(imaging.ImageRejected):
            imaging.inspect_image(data)
    with pytest.raises(imaging.ImageRejected):
        imaging.inspect_image(imaging.too_big_png(), max_pixels=1024 * 1024)


def test_upscale_to_file_is_4x_rgb_jpeg(tmp_path: Path):
    rgba = Image.new("RGBA", (20, 10), (10, 20, 30, 128))
    buffer = io.BytesIO()
    rgba.save(buffer, "PNG")
    assert imaging.upscale_to_file(buffer.getvalue(), tmp_path / "out.jpeg") == (80, 40)
    with Image.open(tmp_path / "out.jpeg") as image:
        assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (80, 40))


def test_rate_limiter_sliding_window():
    limiter = RateLimiter()
    assert [limiter.check("ip", 2, now=10.0).allowed for _ in range(3)] == [True, True, False]
    assert limiter.check("other", 2, now=10.1).allowed
    assert limiter.check("ip", 2, now=10.5).remaining == 0
    assert limiter.check("ip", 2, now=11.01).allowed


def test_slot_pool_fifo_and_cancellation():
    import asyncio

    async def scenario() -> list[int]:
        pool, order = SlotPool(), []

        async def job(n: int) -> None:
            await pool.acquire(1)
            order.append(n)
            await asyncio.sleep(0.01)
            pool.release(1)

        await pool.acquire(1)
        tasks = [asyncio.create_task(job(n)) for n in range(3)]
        await asyncio.sleep(0.01)
        tasks[1].cancel()
        pool.release(1)
        await asyncio.gather(*tasks, return_exceptions=True)
        assert pool.running == 0 and not pool.waiters
        return order

    assert asyncio.run(scenario()) == [0, 2]


def test_package_import_is_cheap():
    code = (
        "import sys, airflow_provider_stablecog; before = set(sys.modules); "
        "import airflow_provider_stablecog.emulator; new = set(sys.modules) - before; "
        "heavy = [m for m in ('fastapi', 'PIL', 'uvicorn', 'httpx', 'airflow') if m in new]; "
        "print(heavy); assert not heavy"
    )
    root = str(Path(imaging.__file__).resolve().parents[2])
    command = [sys.executable, "-c", code]
    result = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def _gif_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, "GIF")
    return buffer.getvalue()


def test_lazy_exports():
    from airflow_provider_stablecog import emulator

    assert callable(emulator.create_app) and callable(emulator.run_emulator)
    assert emulator.write_sample_images is imaging.write_sample_images
    assert emulator.EmulatorConfig is EmulatorConfig
    with pytest.raises(AttributeError):
        emulator.nothing_here  # noqa: B018


def test_new_fault_and_route_class_settings():
    assert parse_faults("reset_after_charge=0.2") == {"reset_after_charge": 0.2}
    config = EmulatorConfig(api_key="k", rate_limit=10)
    assert (config.limit_for("create"), config.limit_for("read"), config.limit_for("upload")) == (10, 20, 4)
    config.update({"upload_rate_limit": 1, "read_rate_limit": 5, "latency_jitter": 0.3})
    assert (config.limit_for("read"), config.limit_for("upload"), config.latency_jitter) == (5, 1, 0.3)
    config.update({"rate_limit": 0, "upload_rate_limit": None, "read_rate_limit": None})
    assert (config.limit_for("create"), config.limit_for("read"), config.limit_for("upload")) == (0, 0, 0)
    with pytest.raises(ValueError, match="latency_jitter"):
        config.update({"latency_jitter": -1})


def test_worker_fails_sample_passes_validation():
    data = imaging.worker_fails_png()
    assert imaging.inspect_image(data).format == "png" and imaging.WORKER_FAILS_MARKER in data
