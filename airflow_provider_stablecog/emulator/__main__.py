"""``python -m airflow_provider_stablecog.emulator``."""

from __future__ import annotations

from airflow_provider_stablecog.emulator.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
