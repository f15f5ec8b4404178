"""One isolated measurement, run by ``benchmarks/run.py`` in a fresh process.

    python benchmarks/_child.py '<json spec>'

The spec's ``kind`` picks the workload (``operator``, ``generate`` or ``sequential``). The connection comes from
``AIRFLOW_CONN_STABLECOG_DEFAULT`` (set by the parent). The last stdout line starting with
``@@RESULT`` is the JSON answer; everything else (task logs) is noise for the parent.

Only what happens inside the measured call is timed (wall and process CPU); the interpreter and
Airflow import are excluded from the time but included in the peak RSS (``ru_maxrss``), which is
what the task's worker process would really hold.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from typing import Any


def _inputs(spec: dict[str, Any]) -> list[str]:
    """``n`` distinct image URLs: ``url_template`` with ``{i}`` (e.g. an emulator sample's seed)."""
    first = int(spec.get("seed", 0))
    return [spec["url_template"].format(i=first + i) for i in range(int(spec["n"]))]


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class _MemoryStateStore(dict):
    """Stands in for Airflow 3.3's ``context["task_state_store"]`` (same get/set contract)."""

    def set(self, key: str, value: Any, **_kwargs: Any) -> None:
        self[key] = value


def _profiled(spec: dict[str, Any], fn):
    """Run ``fn`` under pyinstrument when the spec asks for it (text + HTML next to each other)."""
    target = spec.get("profile")
    if not target:
        return fn()
    from pyinstrument import Profiler

    profiler = Profiler(interval=0.0005, async_mode="disabled")
    profiler.start()
    try:
        return fn()
    finally:
        profiler.stop()
        with open(target + ".txt", "w", encoding="utf-8") as fh:
            fh.write(profiler.output_text(unicode=True, color=False, show_all=False))
        with open(target + ".html", "w", encoding="utf-8") as fh:
            fh.write(profiler.output_html())


def run_operator(spec: dict[str, Any]) -> dict[str, Any]:
    """``UpscaleOperator.execute`` exactly as a worker would call it (context from the task runner)."""
    from airflow.sdk.execution_time.context import OutletEventAccessors

    from airflow_provider_stablecog.operators.upscale import UpscaleOperator

    urls = _inputs(spec)
    op = UpscaleOperator(
        task_id="bench_upscale",
        inputs=urls,
        destination=spec.get("destination"),
        rate_limit=spec.get("rate_limit"),
        max_concurrency=spec.get("max_concurrency"),
        emit_asset=False,
    )
    context = {"task_state_store": _MemoryStateStore(), "outlet_events": OutletEventAccessors()}
    cpu0, wall0 = _cpu(), time.perf_counter()
    result = _profiled(spec, lambda: op.execute(context))  # type: ignore[arg-type]
    wall, cpu = time.perf_counter() - wall0, _cpu() - cpu0
    statuses: dict[str, int] = {}
    for record in result:
        statuses[record["status"]] = statuses.get(record["status"], 0) + 1
    out: dict[str, Any] = {
        "n": len(urls),
        "wall_s": wall,
        "cpu_s": cpu,
        "statuses": statuses,
        "xcom_bytes": len(json.dumps(result)),
        "xcom_compact_bytes": len(json.dumps(result, separators=(",", ":"))),
        "xcom_value_bytes": sum(len(json.dumps(v)) for r in result for v in r.values()),
        "avg_input_chars": sum(len(r.get("input", "")) for r in result) / max(len(result), 1),
        "avg_url_chars": sum(len(r.get("url") or "") for r in result) / max(len(result), 1),
    }
    if spec.get("destination") and "://" not in spec["destination"]:
        sizes = [os.path.getsize(r["path"]) for r in result if r.get("path")]
        out["output_bytes_max"] = max(sizes, default=0)
        out["output_bytes_total"] = sum(sizes)
        from PIL import Image  # after the measurement; reads headers only

        dims = set()
        for r in result:
            if r.get("path"):
                with Image.open(r["path"]) as img:
                    dims.add("x".join(map(str, img.size)))
        out["output_sizes"] = sorted(dims)
    return out


def run_generate(spec: dict[str, Any]) -> dict[str, Any]:
    """``StablecogGenerateOperator.execute``: ``n`` distinct prompts, ``num_outputs`` images each."""
    from airflow.sdk.execution_time.context import OutletEventAccessors

    from airflow_provider_stablecog.operators.generate import StablecogGenerateOperator

    first = int(spec.get("seed", 0))
    prompts = [f"benchmark prompt {first + i}" for i in range(int(spec["n"]))]
    op = StablecogGenerateOperator(
        task_id="bench_generate",
        prompts=prompts,
        num_outputs=int(spec.get("num_outputs", 2)),
        width=256,
        height=256,
        destination=spec.get("destination"),
        max_concurrency=spec.get("max_concurrency"),
        emit_asset=False,
    )
    context = {"task_state_store": _MemoryStateStore(), "outlet_events": OutletEventAccessors()}
    cpu0, wall0 = _cpu(), time.perf_counter()
    result = _profiled(spec, lambda: op.execute(context))  # type: ignore[arg-type]
    wall, cpu = time.perf_counter() - wall0, _cpu() - cpu0
    statuses: dict[str, int] = {}
    for record in result:
        statuses[record["status"]] = statuses.get(record["status"], 0) + 1
    images = sum(len(r.get("output_ids", [])) for r in result)
    return {"n": len(prompts), "images": images, "wall_s": wall, "cpu_s": cpu, "statuses": statuses}


def run_sequential(spec: dict[str, Any]) -> dict[str, Any]:
    """What a user would write in a PythonOperator: post each upscale with requests, wait, next."""
    import requests

    conn = json.loads(os.environ["AIRFLOW_CONN_STABLECOG_DEFAULT"])
    base, headers = conn["host"].rstrip("/"), {"Authorization": f"Bearer {conn['password']}"}
    urls = _inputs(spec)
    done: list[str] = []

    def loop() -> None:
        with requests.Session() as session:
            for url in urls:
                response = session.post(
                    f"{base}/v1/image/upscale/create", json={"input": url}, headers=headers, timeout=300
                )
                response.raise_for_status()
                output = response.json()["outputs"][0]
                done.append(output.get("upscaled_image_url") or output["url"])

    cpu0, wall0 = _cpu(), time.perf_counter()
    _profiled(spec, loop)
    wall, cpu = time.perf_counter() - wall0, _cpu() - cpu0
    return {"n": len(urls), "wall_s": wall, "cpu_s": cpu, "statuses": {"upscaled": len(done)}}


def main() -> int:
    spec = json.loads(sys.argv[1])
    runner = {"operator": run_operator, "sequential": run_sequential, "generate": run_generate}[spec["kind"]]
    out = runner(spec)
    out["maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    sys.stdout.flush()
    print("@@RESULT " + json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
