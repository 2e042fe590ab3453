"""What a run has recorded so far, and the verdict on it.

:class:`History` holds the rows of rounds.csv and clients.csv a run has written (a resumed run:
the rows before its checkpoint too, read back by its sinks); :func:`failures` is the summary's
verdict on them: how many client rounds failed, and whether the run measured nothing at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class History:
    """A run's rows so far (resumed runs: the rows recorded before their checkpoint too)."""

    rounds: list[dict[str, Any]] = field(default_factory=list)
    clients: list[dict[str, Any]] = field(default_factory=list)


def _text(value: Any) -> str:
    """A text cell of a row: rows read back from CSV on resume hold NaN where the text was empty."""
    return value if isinstance(value, str) else ""


def failures(history: History, stopped: bool) -> dict[str, Any]:
    """How many client rounds failed, and ``failed`` (the reason) when no round updated the
    global model at all and the run was not stopped: such a run measured nothing, and a sweep
    redoes it."""
    rounds = history.rounds
    out: dict[str, Any] = {"client_rounds_failed": sum(int(r["clients_failed"]) for r in rounds)}
    errors = [_text(c.get("error")) for c in history.clients if _text(c.get("error"))]
    if errors:
        out["first_client_error"] = errors[0]
    if rounds and not any(r["updated"] for r in rounds) and not stopped:
        why = next((_text(r["aggregation_error"]) for r in rounds if _text(r["aggregation_error"])), "")
        out["failed"] = f"no round updated the global model ({why})" + (
            f"; first client error: {out['first_client_error']}" if errors else "")
    return out
