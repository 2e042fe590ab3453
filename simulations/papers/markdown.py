"""A DataFrame as a markdown table (the tables of docs/results.md), for every recipe here."""

from __future__ import annotations

import pandas as pd


def md_table(df: pd.DataFrame) -> str:
    """``df`` as a GitHub markdown table; floats to 4 significant digits."""
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        cells = [f"{v:.4g}" if isinstance(v, float) else str(v) for v in r.values]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def accuracy_pm(mean: float, ci: float) -> str:
    """An accuracy and its 95% CI: ``m ± h``, or ``m (lo–hi)`` where the interval leaves [0, 1]
    (clipped: an accuracy cannot)."""
    if pd.isna(ci):
        return f"{mean:.3f}"
    if mean - ci < 0 or mean + ci > 1:
        return f"{mean:.3f} ({max(mean - ci, 0.0):.3f}–{min(mean + ci, 1.0):.3f})"
    return f"{mean:.3f} ± {ci:.3f}"
