"""Run the emulator as a real subprocess, for tests, demos and benchmarks.

with run_emulator(latency=0.1, credits=50) as emulator:
    os.environ["AIRFLOW_CONN_STABLECOG_DEFAULT"] = emulator.connection_json()
    ...
    assert emulator.ledger()["net_charged"] == 3
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote, urlencode

import httpx

from airflow_provider_stablecog.emulator.config import format_faults

READY_RE = re.compile(r"^Stablecog emulator ready at (?P<url>\S+) \(API key: (?P<key>\S+)\)$")
PACKAGE_ROOT = Path(__file__).resolve().parents[2]


class EmulatorStartError(RuntimeError):
    """The emulator process did not print its ready line in time (``log_path``: its stderr)."""

    log_path: Path | None = None


@dataclass
class RunningEmulator:
    """A running emulator process and small HTTP helpers for its admin surface."""

    base_url: str
    api_key: str
    process: subprocess.Popen[str]
    log_path: Path
    _http: httpx.Client = field(repr=False, default_factory=lambda: httpx.Client(timeout=30.0))

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def port(self) -> int:
        return int(self.base_url.rsplit(":", 1)[1])

    # -- admin helpers --------------------------------------------------------------------------

    def _call(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        response = self._http.request(method, self.base_url + path, json=body)
        response.raise_for_status()
        return response.json()

    def add_credits(self, amount: int, api_key: str | None = None) -> int:
        """Add ``amount`` credits (to the default account, or ``api_key``'s); return the balance."""
        body = _drop_none({"amount": amount, "api_key": api_key})
        return int(self._call("POST", "/_emulator/credits", body)["balance"])

    def set_balance(self, balance: int, api_key: str | None = None) -> int:
        body = _drop_none({"balance": balance, "api_key": api_key})
        return int(self._call("POST", "/_emulator/credits", body)["balance"])

    def ledger(self) -> dict[str, Any]:
        return self._call("GET", "/_emulator/ledger")

    def configure(self, **changes: Any) -> dict[str, Any]:
        """Change run-time settings: latency, latency_jitter, rate_limit, read_rate_limit,
        upload_rate_limit, faults, fault_seed, slow_seconds, server_timeout, queue_limit."""
        return self._call("PATCH", "/_emulator/config", changes)

    def add_account(
        self,
        api_key: str | None = None,
        credits: int = 100,
        plan_concurrency: int | None = None,
        banned: bool = False,
        same_account_as: str | None = None,
    ) -> dict[str, Any]:
        """Add an account; the answer includes ``api_keys`` and the seeded ``outputs``."""
        from airflow_provider_stablecog.emulator.config import new_api_key

        body = {
            "api_key": api_key or new_api_key(),
            "credits": credits,
            "plan_concurrency": plan_concurrency,
            "banned": banned,
            "same_account_as": same_account_as,
        }
        return self._call("POST", "/_emulator/accounts", _drop_none(body))

    def account(self, api_key: str | None = None) -> dict[str, Any]:
        return self._call("GET", f"/_emulator/accounts/{quote(api_key or self.api_key, safe='')}")

    def output_ids(self, upscaled: bool | None = None, api_key: str | None = None) -> list[str]:
        """IDs of the account's generation outputs (optionally only (not) upscaled ones)."""
        outputs = self.account(api_key)["outputs"]
        return [o["id"] for o in outputs if upscaled is None or o["upscaled"] == upscaled]

    def reset(self) -> dict[str, Any]:
        return self._call("POST", "/_emulator/reset")

    def sample_url(self, name: str = "256x256.png", seed: int | None = None) -> str:
        """URL of a served sample image, e.g. ``"256x192.png"`` or ``"bad/truncated.jpg"``."""
        url = f"{self.base_url}/samples/{name}"
        return url if seed is None else f"{url}?seed={seed}"

    # -- Airflow connection -------------------------------------------------------------------

    def connection_json(self, **extra: Any) -> str:
        """A JSON value for ``AIRFLOW_CONN_STABLECOG_DEFAULT``."""
        conn = {"conn_type": "stablecog", "host": self.base_url, "password": self.api_key, "extra": extra}
        return json.dumps(conn)

    def connection_uri(self, **extra: Any) -> str:
        """The same connection as an Airflow URI (the host is the URL-encoded base URL)."""
        uri = f"stablecog://:{quote(self.api_key, safe='')}@{quote(self.base_url, safe='')}"
        return uri + ("?" + urlencode(extra) if extra else "")

    # -- process --------------------------------------------------------------------------------

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; return the exit code."""
        self._http.close()
        return _stop_process(self.process, timeout)


def _drop_none(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if v is not None}


def emulator_command(**options: Any) -> list[str]:
    """The command line for ``options`` (names as in the CLI, with underscores)."""
    command = [sys.executable, "-m", "airflow_provider_stablecog.emulator"]
    options.setdefault("port", 0)
    for name, value in options.items():
        if value is None or value is False:
            continue
        flag = "--" + name.replace("_", "-")
        if value is True:
            command.append(flag)
        elif isinstance(value, Mapping):
            command += [flag, format_faults(dict(value))]
        else:
            command += [flag, str(value)]
    return command


def _child_env(extra: Mapping[str, str] | None) -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(PACKAGE_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def _stop_process(process: subprocess.Popen[str], timeout: float) -> int | None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)
    if process.stdout is not None:
        process.stdout.close()
    return process.returncode


def _pump_lines(stream: IO[str], lines: queue.Queue[str | None]) -> None:
    for line in stream:
        lines.put(line.rstrip("\n"))
    lines.put(None)


def _wait_ready(process: subprocess.Popen[str], timeout: float) -> tuple[str, str]:
    lines: queue.Queue[str | None] = queue.Queue()
    assert process.stdout is not None
    threading.Thread(target=_pump_lines, args=(process.stdout, lines), daemon=True).start()
    deadline = time.monotonic() + timeout
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=remaining)
        except queue.Empty:
            break
        if line is None:
            raise EmulatorStartError(f"emulator exited with code {process.wait()} before it was ready")
        match = READY_RE.match(line.strip())
        if match:
            return match["url"], match["key"]
    raise EmulatorStartError(f"emulator not ready within {timeout} s")


@contextlib.contextmanager
def run_emulator(
    *,
    startup_timeout: float = 30.0,
    stop_timeout: float = 10.0,
    env: Mapping[str, str] | None = None,
    keep_log: bool = False,
    **options: Any,
) -> Iterator[RunningEmulator]:
    """Start ``python -m airflow_provider_stablecog.emulator --port 0 ...`` and yield it.

    ``options`` map to the CLI flags (``latency=0.1`` -> ``--latency 0.1``; ``faults`` may be
    a dict). The child's stderr goes to ``emulator.log_path``, kept when the block fails.
    """
    fd, log_name = tempfile.mkstemp(prefix="stablecog-emulator-", suffix=".log")
    log_path = Path(log_name)
    with open(fd, "wb") as log:
        process = subprocess.Popen(
            emulator_command(**options),
            stdout=subprocess.PIPE,
            stderr=log,
            stdin=subprocess.DEVNULL,
            text=True,
            env=_child_env(env),
        )
    emulator: RunningEmulator | None = None
    failed = True
    try:
        try:
            url, key = _wait_ready(process, startup_timeout)
        except EmulatorStartError as exc:
            error = EmulatorStartError(f"{exc}; log {log_path}:\n{_tail(log_path)}")
            error.log_path = log_path
            raise error from None
        emulator = RunningEmulator(base_url=url, api_key=key, process=process, log_path=log_path)
        yield emulator
        failed = False
    finally:
        if emulator is not None:
            emulator.stop(stop_timeout)
        else:
            _stop_process(process, stop_timeout)
        if failed:
            print(f"stablecog emulator log kept at {log_path}", file=sys.stderr)
        elif not keep_log:
            log_path.unlink(missing_ok=True)


def _tail(path: Path, limit: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-limit:]
    except OSError:
        return ""
