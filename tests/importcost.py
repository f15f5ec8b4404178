"""What importing our modules pulls in, seen from a fresh interpreter (DAG files import them at every parse)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence


def loaded_after_import(imports: Sequence[str], watched: Sequence[str]) -> list[str]:
    """The modules of ``watched`` that a fresh interpreter has loaded once it imported ``imports``."""
    code = (
        "import sys\n"
        f"import {', '.join(imports)}\n"
        f"print(','.join(m for m in {tuple(watched)!r} if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    return [m for m in done.stdout.strip().split(",") if m]
