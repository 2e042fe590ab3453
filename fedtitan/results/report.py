"""A self-contained HTML report of a sweep (or one run): tables, figures, configs, versions."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

from fedtitan.errors import FedtitanError
from fedtitan.fileio import find_tables
from fedtitan.results import analysis, plots
from fedtitan.results.store import atomic_write_text

# Why a report has no time-to-accuracy table when given no target (one line, in the report and
# after the command line's summary).
NO_TTA = ("No time-to-accuracy table: its default target is random selection's mean final accuracy, and this "
          "sweep has no random-selection arm (selection.method=rs swept beside other methods); give a target "
          "accuracy with --target ACC")

# Under the staleness figure of an asynchronous run (server.mode = async).
STALENESS_CAPTION = ("Staleness of every update that reached the server: the server steps between the model its "
                     "client started from and its arrival (0 = trained on the current model), a box per device type. "
                     "Each label counts the device type's updates, those lost (the device went offline before its "
                     "update arrived) and those stale (beyond server.async.max_staleness, left out).")


def server_mode(rounds: pd.DataFrame) -> str:
    """``async`` when every row of ``rounds`` is a server step of an asynchronous run
    (``server.mode = "async"``: its rounds.csv has ``updates_included``), ``mixed`` when some
    are, else ``sync``."""
    if "updates_included" not in rounds.columns:
        return "sync"
    steps = rounds["updates_included"].notna()
    return "async" if steps.all() else "mixed" if steps.any() else "sync"


# What a row of clients.csv is, by :func:`server_mode`.
PER = {"sync": "client round", "async": "update", "mixed": "client round or update"}


def has_staleness(clients: pd.DataFrame) -> bool:
    """Whether ``clients`` has updates of an asynchronous run (a ``staleness`` per update)."""
    return "staleness" in clients.columns and bool(clients["staleness"].notna().any())


def staleness_figure(clients: pd.DataFrame, varying: list[str]) -> Figure:
    """:func:`~fedtitan.results.plots.staleness_by_device` of the updates in ``clients``, a box
    per configuration (of the ``varying`` settings) where the asynchronous runs differ in more
    than their seed."""
    updates = clients.dropna(subset=["staleness"])
    boxes = None
    if varying:
        updates = updates.assign(group=updates[varying].astype(str).agg(" ".join, axis=1))
        boxes = "group" if updates["group"].nunique() > 1 else None
    return plots.staleness_by_device(updates, boxes)


def _img(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return f'<img src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}"/>'


def _table(df: pd.DataFrame) -> str:
    return df.to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep="–", border=0, classes="t")


def pruning_gap(final: pd.DataFrame, method: str = "pruning.method", ratio: str = "pruning.ratio",
                better: str = "warmup-loss", worse: str = "random", by: list[str] | None = None) -> pd.DataFrame:
    """``better`` minus ``worse`` final accuracy per ratio (and per combination of ``by``)."""
    keys = [*(by or []), ratio]
    a = final[final[method] == better].set_index(keys)["final_acc_mean"]
    b = final[final[method] == worse].set_index(keys)["final_acc_mean"]
    gap = (a - b).dropna()
    return gap.rename("gap").reset_index()


def first_partition(root: Path) -> tuple[str, pd.DataFrame] | None:
    """The label histogram per client of the first run under ``root`` that recorded one."""
    found = sorted(root.rglob("partition.csv"))
    if not found:
        return None
    return str(found[0].parent.relative_to(root)) or ".", pd.read_csv(found[0], index_col=0)


def build_report(path: str | Path, target: float | None = None, out: str | Path | None = None) -> tuple[Path, pd.DataFrame]:
    """Write ``report.html`` into the sweep/run folder; returns its path and the TTA table
    (with ``attrs["verdict"]``: one sentence reading it, and its caveats) or, without one, the
    final-accuracy table (with ``attrs["note"]``: why there is no TTA table)."""
    root = Path(path)
    rounds, clients, params = analysis.load_sweep(root)
    varying = [p for p in params if rounds[p].nunique(dropna=False) > 1]
    hue = None
    if varying:
        rounds = rounds.assign(group=rounds[varying].astype(str).agg(" ".join, axis=1))
        hue = "group"
    by = varying
    mode = server_mode(rounds)
    sections: list[str] = []
    if mode != "sync":
        which = ("Some runs are" if mode == "mixed" else "This run is" if rounds.run_id.nunique() == 1
                 else "The runs are")
        sections.append(f"<p>{which} asynchronous (server.mode = async): {'for them, ' if mode == 'mixed' else ''}"
                        "a row of rounds.csv, and a point of the accuracy figure, is a server step (an aggregation "
                        "of server.async.buffer_size updates), not a round; a row of clients.csv is an update.</p>")
    final = analysis.final_accuracy(rounds, by) if by else analysis.final_accuracy(rounds.assign(_all="all"), ["_all"])
    sections.append("<h2>Final accuracy (mean, sd and 95% CI over seeds)</h2>" + _table(final))
    tta = pd.DataFrame()
    used_target = target
    note = ""
    has_rs = "selection.method" in by and (rounds["selection.method"].astype(str) == "rs").any()
    if has_rs or target is not None:
        try:
            tta, used_target = analysis.tta_table(rounds, by, target)
            sentence = analysis.verdict(tta, by, used_target)
            sections.append(f"<h2>Time to accuracy (target {used_target:.4f}"
                            f"{' = random selection final accuracy' if target is None else ''}) on the virtual clock</h2>"
                            + _table(tta) + f"<p><b>{html.escape(sentence)}</b></p>")
        except FedtitanError as exc:
            note = f"No time-to-accuracy table: {exc}."
    elif (root / "index.csv").exists():  # a sweep; one run has nothing to compare
        note = NO_TTA
    if note:
        sections.append(f"<p><b>{html.escape(note)}</b></p>")
    sections.append("<h2>Accuracy vs virtual time</h2>" + _img(plots.accuracy_vs_time(rounds, hue, target=used_target)))
    if "fleet.name" in by:  # a sweep across named fleets: each fleet on its own clock and energy
        others = [c for c in by if c != "fleet.name"]
        within = rounds.assign(within=rounds[others].astype(str).agg(" ".join, axis=1)) if others else rounds
        sections.append("<h2>Per fleet: accuracy vs virtual time and vs energy</h2>"
                        + _img(plots.per_fleet(within, "within" if others else None)))
    if analysis.RATIO in rounds.columns and rounds[analysis.RATIO].nunique() > 1:
        cols = analysis.ratio_series(by)
        others = cols[1:]
        fr = analysis.ratio_final(rounds, by)
        sections.append("<h2>Accuracy vs pruning ratio</h2>" + _table(fr.drop(columns="series"))
                        + _img(plots.accuracy_vs_ratio(fr, hue="series")))
        gap = pruning_gap(fr, by=others)
        if len(gap):
            shown = gap.assign(**{analysis.RATIO: analysis.label(gap, [*others, analysis.RATIO])}) if others else gap
            sections.append("<h2>Accuracy gap: warm-up-loss minus random pruning</h2>" + _table(gap)
                            + _img(plots.gap_vs_ratio(shown)))
        fits = analysis.cost_vs_ratio(clients, by=others)
        if len(fits):
            per_run = analysis.cost_per_run(clients, by=others)
            sections.append("<h2>Training time and energy vs rho (linear fit)</h2>" + _table(fits)
                            + _img(plots.cost_vs_ratio(per_run.assign(series=analysis.label(per_run, cols)),
                                                       fits.assign(series=analysis.label(fits, cols)), hue="series")))
        elif not clients.empty:
            sections.append("<p>No training time and energy vs rho: no pruning method has runs at two or more "
                            "ratios.</p>")
    elif analysis.METHOD in rounds.columns and (rounds[analysis.METHOD].astype(str) != "none").any():
        sections.append("<p>No accuracy or cost vs pruning ratio: they need runs at two or more pruning.ratio "
                        "values (e.g. --grid pruning.ratio=0.1,0.5).</p>")
    per = ["fleet.name"] if "fleet.name" in by and "fleet.name" in clients.columns else []  # tiers within each fleet
    tiers = analysis.tier_costs(clients, per)
    if len(tiers):
        unit = PER[mode]
        shown = tiers.rename(columns={"client_rounds": "updates"}) if mode == "async" else tiers
        sections.append(f"<h2>Per device tier{'' if mode == 'sync' else f' (per {unit})'}</h2>" + _table(shown)
                        + _img(plots.tier_costs(tiers, hue=per[0] if per else None, unit=unit)))
    if has_staleness(clients):
        sections.append("<h2>Staleness per device type</h2>" + _img(staleness_figure(clients, varying))
                        + f"<p>{html.escape(STALENESS_CAPTION)}</p>")
    fleet = find_tables(root, "fleet.csv")  # archived runs: fleet.csv.gz
    if fleet:
        sections.append(f"<h2>Devices over time ({html.escape(str(fleet[0].parent.relative_to(root)) or '.')}): "
                        "availability, speed, participation</h2>"
                        + _img(plots.device_timeline(pd.read_csv(fleet[0])))
                        + _img(plots.device_timeline(pd.read_csv(fleet[0]), value="select_share")))
    part = first_partition(root)
    if part is not None:
        from fedtitan.data.partition import heatmap

        sections.append(f"<h2>Partition: labels per client ({html.escape(part[0])})</h2>" + _img(heatmap(part[1])))
    configs = []
    for cfg_path in sorted(root.rglob("config.json"))[:50]:
        meta = cfg_path.parent / "meta.json"
        configs.append(f"<details><summary>{html.escape(str(cfg_path.parent.relative_to(root)) or '.')}</summary>"
                       f"<pre>{html.escape(cfg_path.read_text())}</pre>"
                       f"<pre>{html.escape(meta.read_text()) if meta.exists() else ''}</pre></details>")
    body = "\n".join(sections) + "<h2>Configs and versions</h2>" + "\n".join(configs)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>fedtitan report: {html.escape(root.name)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;}} table.t{{border-collapse:collapse;font-size:13px}}
table.t td,table.t th{{padding:3px 8px;border-bottom:1px solid #ddd;text-align:right}} img{{max-width:100%}}</style>
</head><body><h1>fedtitan report: {html.escape(root.name)}</h1>
<p>{len(rounds.run_id.unique())} runs; swept: {html.escape(', '.join(varying) or 'nothing')}.</p>{body}</body></html>"""
    target_path = Path(out) if out else root / "report.html"
    atomic_write_text(target_path, page)
    atomic_write_text(root / "report-tables.json", json.dumps({"final": final.to_dict("records"),
                                                         "tta": tta.to_dict("records")}, default=str, indent=1))
    table = tta if len(tta) else final
    table.attrs["verdict"] = analysis.verdict(tta, by, used_target) if len(tta) and used_target is not None else ""
    table.attrs["note"] = note
    return target_path, table
