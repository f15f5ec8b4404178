"""Command line: ``stablecog-emulator`` / ``python -m airflow_provider_stablecog.emulator``."""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from typing import Any

from airflow_provider_stablecog.emulator.config import EmulatorConfig, new_api_key, parse_faults

READY_TEMPLATE = "Stablecog emulator ready at {url} (API key: {api_key})"
GRACEFUL_SHUTDOWN_SECONDS = 2


def build_parser() -> argparse.ArgumentParser:
    defaults = EmulatorConfig(api_key="unused")
    parser = argparse.ArgumentParser(
        prog="stablecog-emulator",
        description="Run a local, faithful emulator of the Stablecog image API.",
    )
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    add("--port", type=int, default=8765, help="port to bind; 0 picks a free one (default 8765)")
    add("--api-key", default=None, help="API key of the default account (default: random sc-...)")
    add("--credits", type=int, default=defaults.credits, help="starting credits (default %(default)s)")
    add(
        "--plan-concurrency",
        type=int,
        default=defaults.plan_concurrency,
        help="plan's parallel upscales; the server runs one more (default %(default)s)",
    )
    add(
        "--latency",
        type=float,
        default=defaults.latency,
        help="seconds an upscale holds its run slot, the emulator's image work included (default %(default)s)",
    )
    add(
        "--latency-jitter",
        type=float,
        default=defaults.latency_jitter,
        help="extra random 0..N s per upscale answer (seeded by --fault-seed), so answers arrive out of "
        "charge order (default %(default)s)",
    )
    add(
        "--rate-limit",
        type=float,
        default=defaults.rate_limit,
        help="create requests per second per IP; 0 disables every limit (default %(default)s)",
    )
    add(
        "--read-rate-limit",
        type=float,
        default=None,
        help="GET requests per second per IP, on the create counter (default: twice --rate-limit)",
    )
    add(
        "--upload-rate-limit",
        type=float,
        default=None,
        help="uploads per second per IP, own window (default: 0.4 x --rate-limit, i.e. 4 for 10)",
    )
    add("--queue-limit", type=int, default=defaults.queue_limit, help="max waiting requests per account")
    add("--server-timeout", type=float, default=defaults.server_timeout, help="seconds before 500 TIMEOUT")
    add("--fault-seed", type=int, default=defaults.fault_seed, help="seed of the fault draws")
    add(
        "--faults",
        default="",
        help="e.g. timeout=0.05,worker_failure=0.05,bad_gateway=0.02,reset_after_charge=0.2 "
        "(also spurious_429, slow, drop_after_charge)",
    )
    add("--slow-seconds", type=float, default=defaults.slow_seconds, help="answer delay of the 'slow' fault")
    add("--data-dir", default=None, help="where output images are stored (default: a temp dir)")
    add("--seed-outputs", type=int, default=defaults.seed_outputs, help="generation outputs per account")
    add("--seed", type=int, default=defaults.seed, help="seed of the seeded outputs")
    add("--public-base-url", default=None, help="base of output URLs (default: the URL requested)")
    add("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug", "trace"])
    add("--access-log", action="store_true", help="log every request to stderr")
    return parser


def config_from_args(args: argparse.Namespace) -> EmulatorConfig:
    return EmulatorConfig(
        api_key=args.api_key or new_api_key(),
        credits=args.credits,
        plan_concurrency=args.plan_concurrency,
        latency=args.latency,
        latency_jitter=args.latency_jitter,
        rate_limit=args.rate_limit,
        read_rate_limit=args.read_rate_limit,
        upload_rate_limit=args.upload_rate_limit,
        queue_limit=args.queue_limit,
        server_timeout=args.server_timeout,
        faults=parse_faults(args.faults),
        fault_seed=args.fault_seed,
        slow_seconds=args.slow_seconds,
        data_dir=args.data_dir,
        seed_outputs=args.seed_outputs,
        seed=args.seed,
        public_base_url=args.public_base_url,
    )


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind (and listen on) the socket ourselves, so port 0 works and the port is known."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def server_url(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}"


def _ready_server_class() -> type:
    import uvicorn

    class ReadyServer(uvicorn.Server):
        """A uvicorn server that calls ``on_ready`` once it is accepting connections."""

        def __init__(self, config: uvicorn.Config, on_ready: Callable[[], None]) -> None:
            super().__init__(config)
            self.on_ready = on_ready

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            if self.started and not self.should_exit:
                self.on_ready()

    return ReadyServer


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        sock = bind_socket(args.host, args.port)
    except OSError as exc:
        print(f"stablecog-emulator: cannot bind {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 2
    return serve(config, sock, args.host, args.log_level, args.access_log)


def serve(config: EmulatorConfig, sock: socket.socket, host: str, log_level: str, access_log: bool) -> int:
    """Run the emulator on ``sock`` until SIGTERM/SIGINT."""
    import uvicorn

    from airflow_provider_stablecog.emulator.app import create_app
    from airflow_provider_stablecog.emulator.responses import TransportExposingApp

    app = create_app(config)
    url = server_url(host, sock.getsockname()[1])
    uv_config = uvicorn.Config(
        TransportExposingApp(app),  # lets the reset_after_charge fault reset the connection
        log_level=log_level,
        access_log=access_log,
        lifespan="on",
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
    )
    if access_log:  # uvicorn sets its access logger to log_level (warning by default): show requests
        access = logging.getLogger("uvicorn.access")
        access.setLevel(logging.INFO)
        for handler in access.handlers:  # to stderr as --help says; stdout has only the ready line
            if isinstance(handler, logging.StreamHandler):
                handler.setStream(sys.stderr)
    server = _ready_server_class()(uv_config, lambda: _announce(url, config.api_key, config.plan_concurrency))
    _quiet_after_shutdown(server)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        app.state.emulator.close()
    return 0


def connection_lines(url: str, api_key: str, plan_concurrency: int) -> list[str]:
    """How to point Airflow's ``stablecog_default`` at this emulator: env var and CLI forms."""
    extra = {"plan_concurrency": plan_concurrency} if plan_concurrency >= 1 else {}
    conn: dict[str, object] = {"conn_type": "stablecog", "host": url, "password": api_key}
    if extra:
        conn["extra"] = extra
    env = "AIRFLOW_CONN_STABLECOG_DEFAULT=" + shlex.quote(json.dumps(conn))
    add = [
        "airflow",
        "connections",
        "add",
        "stablecog_default",
        "--conn-type",
        "stablecog",
        "--conn-host",
        url,
        "--conn-password",
        api_key,
    ]
    if extra:
        add += ["--conn-extra", json.dumps(extra)]
    return [
        "Point Airflow at it with either:",
        f"  export {env}",
        "  " + shlex.join(add),
    ]


def _announce(url: str, api_key: str, plan_concurrency: int = 0) -> None:
    print(READY_TEMPLATE.format(url=url, api_key=api_key), flush=True)  # stdout: one line, parsed
    for line in connection_lines(url, api_key, plan_concurrency):  # stderr: for the person reading
        print(line, file=sys.stderr, flush=True)


def _quiet_after_shutdown(server: Any) -> None:
    """uvicorn re-raises the stop signal after shutdown; make that a clean exit."""

    def handler(signum: int, frame: object) -> None:
        server.should_exit = True

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, handler)


if __name__ == "__main__":
    raise SystemExit(main())
