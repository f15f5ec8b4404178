"""The bad-input corpus table (case → outcome → message), shared by pytest and the soak command."""

from __future__ import annotations

import json
import os
from typing import Any

REPORT_ENV = "STABLECOG_RELIABILITY_REPORT"
MESSAGE_WIDTH = 110


def record(entry: dict[str, Any]) -> None:
    """Append one result to ``$STABLECOG_RELIABILITY_REPORT`` (when the soak command asked for it)."""
    path = os.environ.get(REPORT_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry) + "\n")


def format_table(rows: list[dict[str, Any]]) -> str:
    """``rows`` of ``{"case", "outcome", "message", "ok"}`` as a fixed-width table."""
    case_w = max([len("case")] + [len(r["case"]) for r in rows])
    out_w = max([len("outcome")] + [len(r["outcome"]) for r in rows])
    lines = [
        f"   {'case':<{case_w}}  {'outcome':<{out_w}}  message",
        "   " + "-" * (case_w + out_w + 4 + MESSAGE_WIDTH),
    ]
    for r in rows:
        message = " ".join(str(r["message"]).split())
        if len(message) > MESSAGE_WIDTH:
            message = message[: MESSAGE_WIDTH - 1] + "…"
        mark = "ok" if r["ok"] else "XX"
        lines.append(f"{mark} {r['case']:<{case_w}}  {r['outcome']:<{out_w}}  {message}")
    return "\n".join(lines)
