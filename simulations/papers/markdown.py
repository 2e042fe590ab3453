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
