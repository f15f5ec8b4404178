"""The one-command demo: the scheduled-batch example DAG end to end, in a throwaway Airflow.

``./dev demo`` (or ``python -m airflow_provider_stablecog.demo``):

1. writes sample input images (made with Pillow) into ``<out>/incoming``;
2. starts the embedded Stablecog emulator on a free loopback port — unless
   ``AIRFLOW_CONN_STABLECOG_DEFAULT`` is set, in which case that connection (e.g. the real API)
   is used as is;
3. runs ``airflow dags test example_stablecog_scheduled_batch`` in a throwaway ``AIRFLOW_HOME``
   (SQLite) whose dags folder holds a copy of the example DAG;
4. stops the emulator and leaves the upscaled images, ``manifest.jsonl`` and a before/after
   ``contact_sheet.png`` in ``<out>`` (default ``./demo-output``), checking every output is 4×.

``--dag example_stablecog_generate_upscale`` runs the generation example instead: prompts from
its catalogue → credits sensor → generate → upscale by output ID → contact sheet of each
generated image beside its upscale, in ``<out>/results`` (it checks every upscale is 4× its
generated image).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from airflow_provider_stablecog.hooks import DEFAULT_CONN_ID

DAG_ID = "example_stablecog_scheduled_batch"
DAG_FILE = f"{DAG_ID}.py"
GENERATE_DAG_ID = "example_stablecog_generate_upscale"
DEMO_DAGS = (DAG_ID, GENERATE_DAG_ID)
SAMPLE_SIZES = ("256x192.png", "192x256.jpg", "320x240.webp", "200x200.png", "512x384.jpg", "160x120.png")


def find_example_dags() -> Path:
    """``example_dags/`` of the checkout this package is installed from (editable install)."""
    candidates = [Path(__file__).resolve().parents[1] / "example_dags", Path.cwd() / "example_dags"]
    for folder in candidates:
        if (folder / DAG_FILE).is_file():
            return folder
    raise SystemExit(f"example_dags/{DAG_FILE} not found; run the demo from a clone of the repository")


@contextlib.contextmanager
def _backend(credits: int) -> Iterator[tuple[str, Any]]:
    """The connection to use: the user's own (real API), or a fresh emulator's."""
    own = os.environ.get("AIRFLOW_CONN_STABLECOG_DEFAULT")
    if own:
        print("Using the connection in AIRFLOW_CONN_STABLECOG_DEFAULT (no emulator)")
        yield own, None
        return
    from airflow_provider_stablecog.emulator.testing import run_emulator

    with run_emulator(latency=0.5, credits=credits, plan_concurrency=4) as emulator:
        print(f"Started the Stablecog emulator at {emulator.base_url}")
        yield emulator.connection_json(plan_concurrency=4), emulator
    print("Stopped the emulator")


def run_demo(out: Path, *, credits: int = 100, timeout: float = 600, dag_id: str = DAG_ID) -> int:
    if dag_id == GENERATE_DAG_ID:
        return run_generate_demo(out, credits=credits, timeout=timeout)
    if dag_id != DAG_ID:
        raise SystemExit(f"unknown demo DAG {dag_id!r}; choose one of {', '.join(DEMO_DAGS)}")
    from airflow_provider_stablecog.emulator.imaging import write_sample_images
    from airflow_provider_stablecog.testing.airflow_sandbox import AirflowSandbox

    out = out.resolve()
    if out.exists():
        shutil.rmtree(out)
    incoming, upscaled = out / "incoming", out / "upscaled"
    inputs = write_sample_images(incoming, sizes=SAMPLE_SIZES, seed=7)
    print(f"Wrote {len(inputs)} sample images into {incoming}")

    with (
        tempfile.TemporaryDirectory(prefix="stablecog-demo-airflow-") as home,
        _backend(credits) as (conn, emulator),
    ):
        sandbox = AirflowSandbox(Path(home), Path(home) / "dags")
        shutil.copy(find_example_dags() / DAG_FILE, sandbox.dags_folder / DAG_FILE)
        sandbox.set_connection_env(DEFAULT_CONN_ID, conn)
        print("Migrating a throwaway Airflow metadata DB (SQLite)...")
        sandbox.migrate()
        print(f"Running: airflow dags test {DAG_ID}")
        result = sandbox.dags_test(
            DAG_ID, conf={"source": str(incoming), "destination": str(upscaled)}, timeout=timeout
        )
        (out / "airflow-dags-test.log").write_text(result.output)
        states = sandbox.task_states(DAG_ID, result.run_id) if result.run_id else {}
        ledger = emulator.ledger() if emulator is not None else None
    print(f"DAG run {result.run_id}: {result.state}; tasks: {json.dumps(states)}")
    if not result.ok:
        print(result.tail(4000), file=sys.stderr)
        print(f"The demo DAG failed; full log: {out / 'airflow-dags-test.log'}", file=sys.stderr)
        return 1
    return _report(out, upscaled, ledger)


def run_generate_demo(out: Path, *, credits: int = 100, timeout: float = 600) -> int:
    """The generation example end to end: its prompts, generated and upscaled images, contact sheet."""
    from airflow_provider_stablecog.testing.airflow_sandbox import AirflowSandbox

    out = out.resolve()
    if out.exists():
        shutil.rmtree(out)
    results = out / "results"
    results.mkdir(parents=True)
    with (
        tempfile.TemporaryDirectory(prefix="stablecog-demo-airflow-") as home,
        _backend(credits) as (conn, emulator),
    ):
        sandbox = AirflowSandbox(Path(home), Path(home) / "dags")
        examples = find_example_dags()
        shutil.copy(examples / f"{GENERATE_DAG_ID}.py", sandbox.dags_folder / f"{GENERATE_DAG_ID}.py")
        shutil.copytree(examples / "data", sandbox.dags_folder / "data")
        sandbox.set_connection_env(DEFAULT_CONN_ID, conn)
        print("Migrating a throwaway Airflow metadata DB (SQLite)...")
        sandbox.migrate()
        print(f"Running: airflow dags test {GENERATE_DAG_ID}")
        result = sandbox.dags_test(GENERATE_DAG_ID, conf={"destination": str(results)}, timeout=timeout)
        (out / "airflow-dags-test.log").write_text(result.output)
        states = sandbox.task_states(GENERATE_DAG_ID, result.run_id) if result.run_id else {}
        ledger = emulator.ledger() if emulator is not None else None
    print(f"DAG run {result.run_id}: {result.state}; tasks: {json.dumps(states)}")
    if not result.ok:
        print(result.tail(4000), file=sys.stderr)
        print(f"The demo DAG failed; full log: {out / 'airflow-dags-test.log'}", file=sys.stderr)
        return 1
    return _report_generated(results, ledger)


def _report_generated(results: Path, ledger: dict | None) -> int:
    from PIL import Image

    from airflow_provider_stablecog.utils.storage import read_manifest

    generated = [r for r in read_manifest(str(results / "generated")).values() if r.get("paths")]
    upscaled = {
        r["input"]: r["path"] for r in read_manifest(str(results / "upscaled")).values() if r.get("path")
    }
    pairs = [
        (path, upscaled.get(output_id))
        for r in generated
        for output_id, path in zip(r["output_ids"], r["paths"], strict=False)
    ]
    bad = []
    for source, target in pairs:
        if target is None:
            bad.append(f"{source}: not upscaled")
            continue
        with Image.open(source) as a, Image.open(target) as b:
            if b.size != (4 * a.width, 4 * a.height):
                bad.append(f"{source}: {a.size} -> {b.size}")
    print(f"\n{len(generated)} prompts generated {len(pairs)} images; {len(upscaled)} upscaled by output ID")
    for r in generated:
        print(f"  {r['input']}: {len(r['paths'])} image(s)")
    if ledger is not None:
        print(f"Emulator ledger: {ledger['net_charged']} credits charged, {ledger['balance']} left")
    sheet = results / "contact_sheet.png"
    print(f"Contact sheet: {sheet}")
    if bad or not pairs or not sheet.is_file():
        print("Not every generated image has a 4x upscale:\n  " + "\n  ".join(bad), file=sys.stderr)
        return 1
    print(f"Every upscale is exactly 4x its generated image. Results are in {results}")
    return 0


def _report(out: Path, upscaled: Path, ledger: dict | None) -> int:
    from PIL import Image

    from airflow_provider_stablecog.utils.contact_sheet import make_contact_sheet
    from airflow_provider_stablecog.utils.storage import read_manifest

    records = [r for r in read_manifest(str(upscaled)).values() if r.get("status") == "upscaled"]
    pairs, bad = [], []
    for r in sorted(records, key=lambda r: r["input"]):
        with Image.open(r["input"]) as a, Image.open(r["path"]) as b:
            if b.size != (4 * a.width, 4 * a.height):
                bad.append(f"{r['input']}: {a.size} -> {b.size}")
        pairs.append((r["input"], r["path"]))
    sheet = make_contact_sheet(
        pairs, out / "contact_sheet.png", title=f"Stablecog 4x upscale: {len(pairs)} images"
    )
    print(f"\n{len(records)} images upscaled into {upscaled}")
    for src, dst in pairs:
        print(f"  {Path(src).name:>14} -> {Path(dst).name}")
    if ledger is not None:
        print(f"Emulator ledger: {ledger['net_charged']} credits charged, {ledger['balance']} left")
    print(f"Manifest:      {upscaled / 'manifest.jsonl'}")
    print(f"Contact sheet: {sheet}")
    if bad or not records:
        print("Not every output is 4x its input:\n  " + "\n  ".join(bad), file=sys.stderr)
        return 1
    print(f"Every output is exactly 4x its input. Results are in {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stablecog-demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="demo-output", help="folder for the results (default ./demo-output)")
    parser.add_argument("--credits", type=int, default=100, help="the emulator account's starting credits")
    parser.add_argument("--timeout", type=float, default=600, help="seconds allowed for the DAG run")
    parser.add_argument(
        "--dag", default=DAG_ID, choices=DEMO_DAGS, help=f"the example DAG to run (default {DAG_ID})"
    )
    args = parser.parse_args(argv)
    return run_demo(Path(args.out), credits=args.credits, timeout=args.timeout, dag_id=args.dag)


if __name__ == "__main__":
    raise SystemExit(main())
