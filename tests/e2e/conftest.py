"""Fixtures for end-to-end tests: a throwaway Airflow (``airflow dags test``) per test."""

from __future__ import annotations

import pytest

from airflow_provider_stablecog.testing import AirflowSandbox


@pytest.fixture(scope="session")
def migrated_db_template(tmp_path_factory):
    """Where the first sandbox saves its migrated SQLite DB; later ones copy it (ms instead of ~4 s)."""
    return tmp_path_factory.mktemp("airflow-db-template") / "airflow.db"


@pytest.fixture
def sandbox(tmp_path, migrated_db_template) -> AirflowSandbox:
    box = AirflowSandbox(tmp_path / "airflow-home", tmp_path / "dags")
    box.migrate(template=migrated_db_template)
    return box
