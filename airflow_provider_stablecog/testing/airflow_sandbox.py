"""A throwaway Airflow installation for end-to-end tests and demos (stdlib + subprocess only).

    sandbox = AirflowSandbox(tmp_path / "airflow", dags_folder)
    sandbox.set_connection_env("stablecog_default", emulator.connection_json())
    sandbox.migrate()                                  # ~4 s; or migrate(template=...) to copy a DB
    result = sandbox.dags_test("my_dag", conf={"n": 3}).check()
    assert sandbox.task_states("my_dag", result.run_id)["upscale"] == "success"
    assert sandbox.xcom("my_dag", "wait_for_credits", result.run_id) == 7

What ``airflow dags test`` (3.3) does, and so what this harness can observe:

* every task runs **in the ``airflow dags test`` process** (no executor, no API server); task logs
  go to that process's stdout/stderr (:attr:`DagTestResult.output`), **not** to files under
  ``$AIRFLOW_HOME/logs`` (:meth:`AirflowSandbox.log_files` finds files only when something else
  wrote them);
* a deferred task's trigger is run **inline** (``asyncio.run`` of its first event) and the task
  then resumes in ``method_name``; the ``defer(timeout=...)`` is not enforced there, so a trigger
  must honour its own deadline;
* task retries happen: a failed try goes ``up_for_retry`` and is run again once ``retry_delay``
  has passed (the loop polls every second); earlier tries are in ``task_instance_history``;
* the command exits with status 1 ("DagRun failed") when the run failed.

Connections are passed as ``AIRFLOW_CONN_<ID>`` environment variables; the metadata DB is SQLite.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_DAGS_TEST_TIMEOUT = 600.0
DEFAULT_MIGRATE_TIMEOUT = 300.0
DB_NAME = "airflow.db"
_RUN_FINISHED = re.compile(r"DagRun Finished: dag_id=(?P<dag_id>[^,]+), .*?run_id=(?P<run_id>[^,]+),")
# inherited variables that would point the child at another Airflow installation
_INHERITED_PREFIXES = ("AIRFLOW__", "AIRFLOW_CONN_", "AIRFLOW_VAR_")
_INHERITED_NAMES = ("AIRFLOW_HOME", "AIRFLOW_CONFIG")


def outside_airflow_environ() -> dict[str, str]:
    """This process's environment without anything that points at another Airflow installation."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(_INHERITED_PREFIXES) and k not in _INHERITED_NAMES
    }


class SandboxError(RuntimeError):
    """An Airflow command of the sandbox failed; the message holds its output's tail."""


@dataclass(frozen=True)
class TaskInstanceInfo:
    """One row of ``task_instance`` for a run."""

    task_id: str
    map_index: int
    state: str | None
    try_number: int
    max_tries: int


@dataclass
class DagTestResult:
    """What one ``airflow dags test`` run left behind.

    :param run_id: the run's id (from the command's output, else the DAG's newest run).
    :param state: the DAG run's state in the metadata DB (``success``, ``failed``, ...).
    """

    dag_id: str
    command: list[str]
    returncode: int | None
    stdout: str
    stderr: str
    duration: float
    run_id: str | None = None
    state: str | None = None
    timed_out: bool = False
    sandbox: AirflowSandbox | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out and self.state == "success"

    @property
    def output(self) -> str:
        """stdout and stderr together (the task logs are in here)."""
        return self.stdout + "\n" + self.stderr

    def tail(self, limit: int = 6000) -> str:
        return self.output[-limit:]

    def check(self) -> DagTestResult:
        """Return self when the run succeeded, else raise :class:`SandboxError` with the output's tail."""
        if not self.ok:
            why = "timed out" if self.timed_out else f"exit code {self.returncode}, run state {self.state}"
            raise SandboxError(f"airflow dags test {self.dag_id} failed ({why}):\n{self.tail()}")
        return self

    def task_states(self) -> dict[str, str | None]:
        assert self.sandbox is not None and self.run_id is not None
        return self.sandbox.task_states(self.dag_id, self.run_id)

    def xcom(self, task_id: str, key: str = "return_value", map_index: int = -1) -> Any:
        assert self.sandbox is not None and self.run_id is not None
        return self.sandbox.xcom(self.dag_id, task_id, self.run_id, key=key, map_index=map_index)


def airflow_command() -> list[str]:
    """The ``airflow`` CLI of this interpreter's environment (its bin dir), else ``python -m airflow``."""
    candidate = Path(sys.executable).parent / ("airflow.exe" if os.name == "nt" else "airflow")
    if candidate.exists():
        return [str(candidate)]
    return [sys.executable, "-m", "airflow"]


def decode_xcom(value: Any) -> Any:
    """An ``xcom.value`` cell → Python: a JSON text (SQLite may have stored numbers as numbers)."""
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    if isinstance(value, str):
        return json.loads(value)
    return value  # SQLite's NUMERIC affinity turned "7" into 7


class AirflowSandbox:
    """A throwaway ``AIRFLOW_HOME`` with a SQLite metadata DB, driven through the ``airflow`` CLI.

    :param home: the ``AIRFLOW_HOME`` to create (the DB, ``airflow.cfg`` and ``logs/`` live here).
    :param dags_folder: the folder ``airflow dags test`` parses.
    :param env: extra environment variables for every command (e.g. ``AIRFLOW_CONN_*``).
    """

    def __init__(self, home: Path, dags_folder: Path, env: Mapping[str, str] | None = None) -> None:
        self.home = Path(home).resolve()
        self.dags_folder = Path(dags_folder).resolve()
        self.home.mkdir(parents=True, exist_ok=True)
        self.dags_folder.mkdir(parents=True, exist_ok=True)
        self.logs_folder.mkdir(parents=True, exist_ok=True)
        self.env: dict[str, str] = dict(env or {})
        self.migrated = False

    # -- paths and environment --------------------------------------------------------------------

    @property
    def db_path(self) -> Path:
        return self.home / DB_NAME

    @property
    def logs_folder(self) -> Path:
        return self.home / "logs"

    @property
    def sql_alchemy_conn(self) -> str:
        return f"sqlite:///{self.db_path}"

    def base_environ(self) -> dict[str, str]:
        """The Airflow settings of this sandbox (without the inherited environment)."""
        return {
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.sql_alchemy_conn,
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.logs_folder),
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            # unit_test_mode would load Airflow's own unit-test config (random fernet key per process)
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "PYTHONUNBUFFERED": "1",
        }

    def environ(self, extra_env: Mapping[str, str] | None = None) -> dict[str, str]:
        """The full environment of a child command: ours, minus any other Airflow installation's."""
        env = outside_airflow_environ()
        env.update(self.base_environ())
        env.update(self.env)
        env.update(extra_env or {})
        return env

    def set_env(self, name: str, value: str) -> None:
        self.env[name] = value

    def set_connection_env(self, conn_id: str, value: str | Mapping[str, Any]) -> None:
        """Define a connection as ``AIRFLOW_CONN_<CONN_ID>`` (a JSON string, a dict, or a URI)."""
        text = value if isinstance(value, str) else json.dumps(dict(value))
        self.env[f"AIRFLOW_CONN_{conn_id.upper()}"] = text

    def write_dag(self, name: str, source: str) -> Path:
        """Write a DAG file (``name`` without ``.py`` is fine) into the dags folder."""
        path = self.dags_folder / (name if name.endswith(".py") else f"{name}.py")
        path.write_text(source, encoding="utf-8")
        return path

    # -- commands ---------------------------------------------------------------------------------

    def run_cli(
        self,
        *args: str,
        timeout: float = DEFAULT_DAGS_TEST_TIMEOUT,
        extra_env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``airflow <args>`` in the sandbox; raises ``subprocess.TimeoutExpired`` after ``timeout``."""
        return subprocess.run(
            [*airflow_command(), *args],
            env=self.environ(extra_env),
            cwd=self.home,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )

    def migrate(self, template: Path | None = None, timeout: float = DEFAULT_MIGRATE_TIMEOUT) -> float:
        """Create the metadata DB (``airflow db migrate``) once; return the seconds it took.

        :param template: a migrated SQLite file to reuse. When it exists it is copied (milliseconds);
            otherwise the migration runs and its result is saved there for the next sandbox.
        """
        started = time.monotonic()
        if self.migrated:
            return 0.0
        if template is not None and Path(template).is_file():
            shutil.copyfile(template, self.db_path)
        else:
            done = self.run_cli("db", "migrate", timeout=timeout)
            if done.returncode != 0:
                output = (done.stdout + done.stderr)[-6000:]
                raise SandboxError(f"airflow db migrate failed ({done.returncode}):\n{output}")
            if template is not None:
                Path(template).parent.mkdir(parents=True, exist_ok=True)
                temp = Path(f"{template}.{os.getpid()}.tmp")
                shutil.copyfile(self.db_path, temp)
                os.replace(temp, template)
        self.migrated = True
        return time.monotonic() - started

    def dags_test(
        self,
        dag_id: str,
        conf: Mapping[str, Any] | None = None,
        logical_date: str | None = None,
        timeout: float = DEFAULT_DAGS_TEST_TIMEOUT,
        extra_env: Mapping[str, str] | None = None,
    ) -> DagTestResult:
        """Run ``airflow dags test <dag_id> [logical_date] [-c conf]`` and collect what it left.

        A run that outlives ``timeout`` is killed; the result then has ``timed_out=True``.
        """
        if not self.migrated and not self.db_path.exists():
            self.migrate()
        args = ["dags", "test", dag_id]
        if logical_date is not None:
            args.append(logical_date)
        if conf is not None:
            args += ["--conf", json.dumps(dict(conf))]
        command = [*airflow_command(), *args]
        started = time.monotonic()
        timed_out = False
        try:
            done = self.run_cli(*args, timeout=timeout, extra_env=extra_env)
            returncode, stdout, stderr = done.returncode, done.stdout, done.stderr
        except subprocess.TimeoutExpired as exc:
            timed_out, returncode = True, None
            stdout, stderr = _text(exc.stdout), _text(exc.stderr)
        result = DagTestResult(
            dag_id=dag_id,
            command=command,
            returncode=returncode,
            stdout=stdout,
            stderr=stderr,
            duration=time.monotonic() - started,
            timed_out=timed_out,
            sandbox=self,
        )
        result.run_id = _finished_run_id(result.output, dag_id) or self.latest_run_id(dag_id)
        if result.run_id is not None:
            result.state = self.dag_run_state(dag_id, result.run_id)
        return result

    # -- reading the metadata DB -----------------------------------------------------------------

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        """Run a read-only query on the metadata DB."""
        db = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=30)
        try:
            db.row_factory = sqlite3.Row
            return db.execute(sql, params).fetchall()
        finally:
            db.close()

    def dag_runs(self, dag_id: str) -> list[dict[str, Any]]:
        rows = self.query(
            "SELECT id, run_id, state, logical_date, conf FROM dag_run WHERE dag_id = ? ORDER BY id",
            (dag_id,),
        )
        return [dict(row) for row in rows]

    def latest_run_id(self, dag_id: str) -> str | None:
        rows = self.query("SELECT run_id FROM dag_run WHERE dag_id = ? ORDER BY id DESC LIMIT 1", (dag_id,))
        return rows[0]["run_id"] if rows else None

    def dag_run_state(self, dag_id: str, run_id: str) -> str | None:
        rows = self.query("SELECT state FROM dag_run WHERE dag_id = ? AND run_id = ?", (dag_id, run_id))
        return rows[0]["state"] if rows else None

    def _run_id(self, dag_id: str, run_id: str | None) -> str:
        run_id = run_id or self.latest_run_id(dag_id)
        if run_id is None:
            raise SandboxError(f"DAG {dag_id!r} has no run in {self.db_path}")
        return run_id

    def task_instances(self, dag_id: str, run_id: str | None = None) -> list[TaskInstanceInfo]:
        """Every task instance of the run (default: the DAG's newest run)."""
        rows = self.query(
            "SELECT task_id, map_index, state, try_number, max_tries FROM task_instance "
            "WHERE dag_id = ? AND run_id = ? ORDER BY task_id, map_index",
            (dag_id, self._run_id(dag_id, run_id)),
        )
        return [
            TaskInstanceInfo(r["task_id"], r["map_index"], r["state"], r["try_number"], r["max_tries"])
            for r in rows
        ]

    def task_states(self, dag_id: str, run_id: str | None = None) -> dict[str, str | None]:
        """``{task_id: state}``; mapped task instances appear as ``"task_id[map_index]"``."""
        return {
            ti.task_id if ti.map_index < 0 else f"{ti.task_id}[{ti.map_index}]": ti.state
            for ti in self.task_instances(dag_id, run_id)
        }

    def task_history(self, dag_id: str, run_id: str | None = None) -> list[dict[str, Any]]:
        """Earlier tries (``task_instance_history``): one row per retried or cleared try."""
        rows = self.query(
            "SELECT task_id, map_index, try_number, state FROM task_instance_history "
            "WHERE dag_id = ? AND run_id = ? ORDER BY task_id, map_index, try_number",
            (dag_id, self._run_id(dag_id, run_id)),
        )
        return [dict(row) for row in rows]

    def xcoms(self, dag_id: str, run_id: str | None = None) -> dict[tuple[str, int, str], Any]:
        """All XComs of the run: ``{(task_id, map_index, key): value}`` (values JSON-decoded)."""
        rows = self.query(
            "SELECT task_id, map_index, key, value FROM xcom WHERE dag_id = ? AND run_id = ?",
            (dag_id, self._run_id(dag_id, run_id)),
        )
        return {(r["task_id"], r["map_index"], r["key"]): decode_xcom(r["value"]) for r in rows}

    def xcom(
        self,
        dag_id: str,
        task_id: str,
        run_id: str | None = None,
        *,
        key: str = "return_value",
        map_index: int = -1,
    ) -> Any:
        """One XCom value (JSON-decoded; Airflow's serde envelopes such as tuples are left as stored).

        :raises KeyError: no such XCom.
        """
        rows = self.query(
            "SELECT value FROM xcom "
            "WHERE dag_id = ? AND run_id = ? AND task_id = ? AND map_index = ? AND key = ?",
            (dag_id, self._run_id(dag_id, run_id), task_id, map_index, key),
        )
        if not rows:
            raise KeyError(f"no XCom {key!r} for {dag_id}.{task_id}[{map_index}]")
        return decode_xcom(rows[0]["value"])

    # -- logs -------------------------------------------------------------------------------------

    def log_files(self, dag_id: str | None = None, task_id: str | None = None) -> list[Path]:
        """Task log files under ``$AIRFLOW_HOME/logs`` (``airflow dags test`` itself writes none)."""
        found = []
        for path in sorted(self.logs_folder.rglob("*.log")):
            text = path.as_posix()
            if dag_id is not None and f"dag_id={dag_id}/" not in text:
                continue
            if task_id is not None and f"task_id={task_id}/" not in text:
                continue
            found.append(path)
        return found

    def collected_text(self, *results: DagTestResult) -> str:
        """Everything a secret could leak into: the results' output and every file under ``logs/``."""
        parts = [r.output for r in results]
        parts += [p.read_text(errors="replace") for p in sorted(self.logs_folder.rglob("*")) if p.is_file()]
        return "\n".join(parts)


def _finished_run_id(output: str, dag_id: str) -> str | None:
    for match in _RUN_FINISHED.finditer(output):
        if match["dag_id"] == dag_id:
            return match["run_id"].strip()
    return None


def _text(data: str | bytes | None) -> str:
    if data is None:
        return ""
    return data.decode("utf-8", "replace") if isinstance(data, bytes) else data
