from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedtitan.config import _known_keys, load_config, preset_names
from fedtitan.errors import ConfigError
from fedtitan.preflight import check_config


def test_presets_validate():
    assert {"quickstart", "titan-fl-cifar10", "pruning-cifar10", "har"} <= set(preset_names())
    for name in preset_names():
        check_config(load_config(name))
    cfg = load_config("titan-fl-cifar10")
    assert (cfg.data.num_clients, cfg.data.classes_per_client, cfg.server.fraction) == (50, 5, 0.2)
    assert (cfg.selection.local_steps, cfg.selection.batch_size, cfg.selection.velocity) == (3, 10, 100)
    assert cfg.selection.buffer_size == 30 and cfg.selection.n_blocks == 1


def test_required_override_keys_exist():
    need = ["run.seed", "run.rounds", "data.dataset", "data.path", "data.partition", "data.alpha",
            "data.num_clients", "model.name", "selection.method", "pruning.method", "pruning.ratio",
            "server.fraction", "fleet.mix"]
    assert set(need) <= set(_known_keys())
    cfg = load_config("quickstart", ["run.seed=4", "pruning.method=random", "pruning.ratio=0.3",
                                     "fleet.mix=rpi4:1", "data.partition=iid"])
    assert cfg.run.seed == 4 and cfg.regime == "static" and cfg.fleet.mix == {"rpi4": 1.0}


@pytest.mark.parametrize("override,message", [
    ("run.roundz=3", "did you mean 'run.rounds'"),
    ("pruning.ratio=0", r"pruning.ratio: must be in \(0, 1\]"),
    ("data.alpha=-1", "data.alpha"),
    ("selection.velocity=5", "velocity"),
    ("fleet.mix=nano:1", "fleet.mix"),
    ("model.name=vgg", "model.name"),
    ("server.policy=deadline", "deadline_s"),
    ("norunkey", "key=value"),
    ("data.dataset=npz", "data.path"),
    ("model.stem=imagenet", "model.stem: mlp has one stem; model.stem applies to resnet18, resnet34"),
    ("model.stem=big", "model.stem"),
])
def test_bad_overrides_give_one_line(override, message):
    with pytest.raises(ConfigError, match=message) as info:
        check_config(load_config("quickstart", [override]))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("override", ["fleet.mix=nano:1", "model.name=vgg", "model.stem=imagenet",
                                      "selection.method=titna", "data.dataset=cifar11"])
def test_names_are_checked_by_preflight_not_by_validation(override):
    """The config knows no registry (it sits below them): a name is checked by
    fedtitan.preflight.check_config, which the launcher calls before a run starts."""
    cfg = load_config("quickstart", [override])
    with pytest.raises(ConfigError, match="unknown value|has one stem"):
        check_config(cfg)


def test_the_config_module_imports_nothing_of_the_library_above_it():
    import ast

    import fedtitan.config as config_module

    tree = ast.parse(Path(config_module.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    ours = sorted(m for m in imported if m.startswith("fedtitan"))
    # errors: the bottom; devices.fleets: a leaf (imports only errors)
    assert ours == ["fedtitan.devices.fleets", "fedtitan.errors"]


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(_known_keys()), st.one_of(st.integers(-5, 10**6), st.floats(allow_nan=True),
                                                 st.text(max_size=12), st.booleans()))
def test_validation_never_crashes(key, value):
    raw = str(value).lower() if isinstance(value, bool) else str(value)
    try:
        load_config("quickstart", [f"{key}={raw}"])
    except ConfigError:
        pass


def test_the_papers_words_for_settings_are_suggested_not_accepted():
    from simulations.sweep import parse_grid

    for key, meant in (("pruning.rho", "pruning.ratio"), ("selection.v", "selection.velocity"),
                       ("selection.buffer", "selection.buffer_size"), ("pruning.T0", "pruning.warmup_epochs"),
                       ("selection.rho", "pruning.ratio")):
        with pytest.raises(ConfigError, match=f"unknown config key '{key}'; did you mean '{meant}'"):
            load_config("quickstart", [f"{key}=0.2"])
    with pytest.raises(ConfigError, match="did you mean 'pruning.ratio'"):
        parse_grid(["pruning.rho=0.1,0.2"])
    with pytest.raises(ConfigError, match="did you mean 'run.rounds'"):  # ordinary typos as before
        load_config("quickstart", ["run.roundz=3"])


def test_model_stem_reaches_the_built_model():
    from fedtitan.training.setup import model_options

    cfg = load_config("quickstart", ["model.name=resnet18", "model.stem=imagenet"])
    assert model_options(cfg) == {"stem": "imagenet"}
    assert model_options(load_config("quickstart", ["model.name=resnet18"])) == {}


@pytest.mark.parametrize("key, hint", [
    ("data.num_partitions", "data.num_clients"), ("server.num_clients", "data.num_clients"),
    ("fleet.num_devices", "data.num_clients"), ("simulation.num_supernodes", "simulation.workers"),
    ("server.cohort_size", "server.clients_per_round"), ("data.clients_per_round", "server.clients_per_round"),
    ("server.num_rounds", "run.rounds"), ("run.num-server-rounds", "run.rounds"),
    ("server.fraction_train", "server.fraction"), ("server.fraction_fit", "server.fraction"),
    ("server.min_fit_clients", "server.min_clients"),
])
def test_flower_and_pfl_words_suggest_fedtitans_key(key, hint):
    with pytest.raises(ConfigError, match=rf"unknown config key '{key}'; did you mean '{hint}'\? \(fedtitan's word"):
        load_config("quickstart", [f"{key}=3"])


def test_clients_per_round_replaces_the_presets_fraction_and_both_at_once_are_refused(tmp_path):
    cfg = load_config("quickstart", ["server.clients_per_round=3"])  # quickstart gives fraction = 0.4
    assert cfg.server.clients_per_round == 3
    assert load_config("quickstart", []).server.clients_per_round is None
    with pytest.raises(ConfigError, match="give both server.fraction and server.clients_per_round; give one"):
        load_config("quickstart", ["server.clients_per_round=3", "server.fraction=0.5"])
    f = tmp_path / "c.toml"
    f.write_text("[server]\nfraction = 0.5\nclients_per_round = 3\n")
    with pytest.raises(ConfigError, match=r"gives both server.fraction \(0.5\) and server.clients_per_round \(3\)"):
        load_config(str(f), [])
    f.write_text("[server]\nclients_per_round = 3\n")
    assert load_config(str(f), ["server.fraction=0.5"]).server.clients_per_round is None  # the override wins
    with pytest.raises(ConfigError, match="server.clients_per_round"):
        load_config("quickstart", ["server.clients_per_round=0"])


def test_a_setting_without_effect_is_refused_where_typed_and_flagged_where_set_in_bulk(tmp_path, caplog):
    from fedtitan import config as config_module

    # typed without the setting that gives it an effect: one line saying what to set
    with pytest.raises(ConfigError, match=r"^config pruning.ratio: 0.2 has no effect without a pruning method .*"
                                          r"set pruning.method \(e.g. warmup-loss\)$"):
        load_config("quickstart", ["pruning.ratio=0.2"])
    with pytest.raises(ConfigError, match="server.deadline_s: 5.0 has no effect .* set server.policy=deadline"):
        load_config("quickstart", ["server.deadline_s=5"])
    with pytest.raises(ConfigError, match="server.over_commit: .* set server.policy=first-k"):
        load_config("quickstart", ["server.over_commit=0.3"])
    with pytest.raises(ConfigError, match="faults.slow_factor"):
        load_config("quickstart", ["faults.slow_factor=3"])
    f = tmp_path / "mine.toml"
    f.write_text("[pruning]\nratio = 0.3\n")  # the user's own file counts as typed
    with pytest.raises(ConfigError, match="pruning.ratio: 0.3 has no effect"):
        load_config(str(f), [])
    # set in bulk (a preset, a grid crossing the method with the ratio): one warning, once
    config_module._told.clear()
    with caplog.at_level("WARNING", logger="fedtitan.config"):
        assert load_config("pruning-cifar10", ["pruning.method=none"]).pruning.ratio == 0.5
        load_config("pruning-cifar10", ["pruning.method=none"])
        load_config("quickstart", ["pruning.method=none", "pruning.ratio=0.2"])
        load_config("quickstart", ["server.policy=wait-all", "server.deadline_s=2"])
    notes = [r.getMessage() for r in caplog.records]
    assert notes == ["config pruning.ratio: 0.5 has no effect without a pruning method (pruning.method = 'none', "
                     "the streaming regime); set pruning.method (e.g. warmup-loss)",
                     "config pruning.ratio: 0.2 has no effect without a pruning method (pruning.method = 'none', "
                     "the streaming regime); set pruning.method (e.g. warmup-loss)",
                     "config server.deadline_s: 2.0 has no effect with server.policy = 'wait-all'; "
                     "set server.policy=deadline"]
    # settings that do have an effect pass silently
    caplog.clear()
    with caplog.at_level("WARNING", logger="fedtitan.config"):
        for preset in preset_names():
            load_config(preset, [])
        load_config("quickstart", ["pruning.method=warmup-loss", "pruning.ratio=0.2", "server.policy=deadline",
                                   "server.deadline_s=2"])
    assert not caplog.records


def test_selection_settings_nothing_reads_are_flagged_where_typed(caplog):
    """A selection setting typed for a run that never reads it: under a pruning method (no
    selector runs), or one the chosen selector does not take (Titan's coarse filter with
    random selection). A sweep over it would run identical runs; a preset's bulk settings
    are not flagged (the main job's random arm keeps the quickstart's buffer quietly)."""
    from fedtitan import config as config_module

    config_module._told.clear()
    with caplog.at_level("WARNING"):
        load_config("pruning-cifar10", ["selection.method=rs"])
        check_config(load_config("quickstart", ["selection.method=rs", "selection.coarse=random"]))
        check_config(load_config("titan-fl-cifar10", ["selection.method=cis", "selection.stratify=false"]))
    assert [r.getMessage() for r in caplog.records] == [
        "config selection.method: 'rs' has no effect with pruning.method = 'warmup-loss' (the pruning regime reads "
        "[pruning] only); set pruning.method = 'none' for streaming selection",
        "config selection.coarse: 'random' has no effect with selection.method = 'rs' (its selector does not take "
        "coarse)",
        "config selection.stratify: False has no effect with selection.method = 'cis' (its selector does not take "
        "stratify)"]
    caplog.clear()
    with caplog.at_level("WARNING"):
        check_config(load_config("quickstart", ["selection.method=rs"]))  # the preset's buffer_size: quiet
        check_config(load_config("quickstart", ["selection.coarse=random", "selection.stratify=false"]))  # Titan reads them
        check_config(load_config("pruning-cifar10", []))
    assert not caplog.records
