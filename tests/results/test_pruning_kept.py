import json

import numpy as np
import pandas as pd
import pytest

from fedtitan.errors import FedtitanError
from simulations.papers import pruning_kept, results_tables


def test_label_shift_by_hand():
    labels = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 2])  # p = (0.6, 0.3, 0.1, 0)
    got = pruning_kept.label_shift(labels, np.array([6, 7, 9]), num_classes=4, rare=0.15)  # q = (0, 2/3, 1/3, 0)
    assert got["tv"] == pytest.approx(0.5 * (0.6 + (2 / 3 - 0.3) + (1 / 3 - 0.1)))
    assert (got["classes"], got["classes_kept"]) == (3, 2)
    assert got["rare_share"] == pytest.approx(0.1) and got["rare_share_kept"] == pytest.approx(1 / 3)
    assert got["top_share"] == pytest.approx(0.6) and got["top_share_kept"] == 0.0
    assert pruning_kept.label_shift(labels, np.arange(10), 4)["tv"] == 0.0  # keeping all changes nothing
    with pytest.raises(FedtitanError, match="non-empty"):
        pruning_kept.label_shift(labels, np.array([], dtype=int), 4)


def test_summary_rank_correlation_sign():
    clients = pd.DataFrame([{"seed": 0, "client": 0, "rho": 0.1, "method": m, "tv": t, "classes": 3, "classes_kept": 2,
                             "rare_share": 0.1, "rare_share_kept": r, "top_share": 0.6, "top_share_kept": 0.2}
                            for m, t, r in (("warmup-loss", 0.5, 0.4), ("random", 0.1, 0.1))])
    classes = pd.DataFrame({"seed": 0, "client": [0, 0, 0, 1, 1], "label": [0, 1, 2, 0, 1],
                            "share": [0.6, 0.3, 0.1, 0.5, 0.5], "mean_score": [1.0, 2.0, 3.0, 1.0, 2.0]})
    fleet = pd.DataFrame({"seed": 0, "rho": 0.1, "method": ["warmup-loss", "random"],
                          "tv_pooled_vs_training_set": [0.3, 0.01]})
    s = pruning_kept.summarise(clients, classes, fleet)
    # client 0: rarer class, higher loss -> rank correlation -1; client 1 has equal shares and is left out
    assert s["spearman_share_vs_loss"] == {"median": -1.0, "negative_share": 1.0, "clients": 1}
    rows = {r["method"]: r for r in s["per_rho_method"]}
    assert rows["warmup-loss"]["tv_pooled_vs_training_set"] == 0.3 and rows["random"]["tv"] == 0.1


def test_pruning_kept_end_to_end_on_cifar10(shared_data, tmp_path, capsys):
    out = tmp_path / "pruning-kept"
    rc = pruning_kept.main(["--data-dir", str(shared_data), "--seeds", "1", "--max-train", "600", "--ratios", "0.5",
                            "--out", str(out)])
    assert rc == 0
    clients = pd.read_csv(out / "clients.csv")
    assert len(clients) == 15 * 2 and set(clients.method) == {"warmup-loss", "random"}
    assert (clients.classes_kept <= clients.classes).all() and clients.tv.between(0, 1).all()
    assert json.loads((out / "summary.json").read_text())["spearman_share_vs_loss"]["clients"] > 0
    capsys.readouterr()
    results_tables.pruning_kept(tmp_path)  # docs' table comes from the saved CSVs
    table = capsys.readouterr().out
    assert "### pruning-kept" in table and "over 1 seed(s) x 15 clients" in table
    assert "| 0.5 | random |" in table and "| 0.5 | warmup-loss |" in table and "negative on" in table


def test_pruning_kept_bad_data_dir_is_one_line(tmp_path, capsys):
    assert pruning_kept.main(["--data-dir", str(tmp_path), "--seeds", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: dataset 'cifar10' not found") and "\n" not in err
