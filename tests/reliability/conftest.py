"""Reliability tests: the bad-input corpus table and the secret-grep count go to the terminal."""

from __future__ import annotations

from typing import Any

import pytest

from tests.reliability import corpus_table

CORPUS: list[dict[str, Any]] = []
SECRET_GREPS: list[dict[str, Any]] = []


@pytest.fixture
def corpus_row():
    """Record a corpus case's row; it is marked red unless the test reaches ``row.done()``."""

    class Row:
        def __init__(self) -> None:
            self.entry: dict[str, Any] | None = None

        def __call__(self, case: str, outcome: str, message: str) -> None:
            self.entry = {"kind": "corpus", "case": case, "outcome": outcome, "message": message, "ok": False}

        def done(self) -> None:
            assert self.entry is not None
            self.entry["ok"] = True

    row = Row()
    yield row
    if row.entry is not None:
        CORPUS.append(row.entry)
        corpus_table.record(row.entry)


def record_secret_grep(hits: int, sources: str, size: int) -> None:
    entry = {"kind": "secrets", "hits": hits, "sources": sources, "bytes": size}
    SECRET_GREPS.append(entry)
    corpus_table.record(entry)


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if CORPUS:
        terminalreporter.section("bad-input corpus")
        terminalreporter.write_line(corpus_table.format_table(CORPUS))
        red = sum(1 for e in CORPUS if not e["ok"])
        terminalreporter.write_line(f"corpus: {len(CORPUS)} cases, {len(CORPUS) - red} green, {red} red")
    for e in SECRET_GREPS:
        terminalreporter.section("secret grep")
        terminalreporter.write_line(
            f"secret grep: {e['hits']} hits of the API key in {e['sources']} ({e['bytes']:,} bytes searched)"
        )


@pytest.fixture(scope="session")
def migrated_db_template(tmp_path_factory):
    """The first sandbox saves its migrated SQLite DB here; later ones copy it."""
    return tmp_path_factory.mktemp("airflow-db-template") / "airflow.db"
