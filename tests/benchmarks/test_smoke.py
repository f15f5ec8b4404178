"""Smoke test of the benchmark harness: ``benchmarks/run.py --quick`` runs every figure end to end.

No timing is asserted (the machine is shared and noisy): only that each figure produced
a row with numbers in the summary table.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUNNER = ROOT / "benchmarks" / "run.py"

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def _summary_rows(markdown: str) -> dict[int, list[str]]:
    section = markdown.split("## Summary", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0].isdigit():
            rows[int(cells[0])] = cells
    return rows


def test_quick_run_produces_every_figure(tmp_path):
    output = tmp_path / "RESULTS.md"
    done = subprocess.run(
        [sys.executable, str(RUNNER), "--quick", "--output", str(output)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    text = output.read_text(encoding="utf-8")
    assert "## Machine" in text and "apache-airflow" in text and "Python" in text

    rows = _summary_rows(text)
    assert sorted(rows) == [1, 2, 3, 4, 5, 6, 7, 8, 9], rows
    assert rows.pop(9)[4] == "not run"  # the CeleryExecutor figure runs apart (./dev bench --celery)
    for number, cells in rows.items():
        _, _title, result, _goal, status = cells
        assert status in ("met", "MISSED", "n/a"), (number, cells)
        assert re.search(r"\d+(\.\d+)?", result), (number, result)
    # the same table is printed on stdout
    assert re.search(r"^\| 7 \| Durable ledger", done.stdout, re.M), done.stdout[-2000:]
    assert re.search(r"^\| 8 \| Generation throughput", done.stdout, re.M), done.stdout[-2000:]


def test_figure_selection_by_name(tmp_path):
    output = tmp_path / "RESULTS.md"
    done = subprocess.run(
        [sys.executable, str(RUNNER), "--quick", "--figures", "import", "--output", str(output)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    rows = _summary_rows(output.read_text(encoding="utf-8"))
    assert rows[5][4] in ("met", "MISSED")
    assert all(rows[n][4] in ("not run", "earlier") for n in (1, 2, 3, 4, 6, 7, 8, 9))


def test_figures_not_run_keep_their_section_of_the_earlier_report(tmp_path):
    output = tmp_path / "RESULTS.md"
    earlier = "## 9. CeleryExecutor: the fan-out on 2 workers\n\n**10000 images: 9.5 images/s** (from its own run)\n"
    output.write_text("# Benchmark results\n\n## Summary\n\n" + earlier + "\n## Findings\n\ntext\n")
    done = subprocess.run(
        [sys.executable, str(RUNNER), "--quick", "--figures", "import", "--output", str(output)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    text = output.read_text(encoding="utf-8")
    assert earlier.strip() in text  # kept as it was
    rows = _summary_rows(text)
    assert rows[9][4] == "earlier" and rows[5][4] in ("met", "MISSED")
