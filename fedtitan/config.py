"""The run configuration: one validated object, built in one place from a TOML preset plus
``key=value`` overrides. Every error is one line naming the key, the value and what is allowed.

This module sits at the bottom of the library: it imports nothing of fedtitan but
:mod:`fedtitan.errors` (and, when a config names a fleet or is read from a file, the leaf
:mod:`fedtitan.devices.fleets`). :func:`validate` checks the settings' types, ranges and
their consistency; the names a config gives (dataset, model, selector and its options,
devices, dynamics and trace, tracker) are checked against their registries by
:func:`fedtitan.preflight.check_config`, which the launcher calls before a run starts.
The presets are TOML files in ``fedtitan/presets/``.
"""

from __future__ import annotations

import json
import logging
import math
import re
import tomllib
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from fedtitan.errors import ConfigError, did_you_mean

log = logging.getLogger(__name__)

# the syntax of compute.device (fedtitan.compute resolves it)
DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RunSection(_Section):
    seed: int = Field(0, ge=0)
    rounds: int = Field(10, ge=1)
    pipeline: bool = False
    name: str = "run"
    deterministic: bool = False
    save_model: bool = False  # write the final global weights to model.npz
    checkpoint_every: int = Field(1, ge=0)  # rounds between checkpoints (0: none; the last round always)


# data.partition's methods (fedtitan.data.partition reads them from here), and the prefix
# naming a flwr-datasets partitioner instead.
PARTITIONERS = ("iid", "dirichlet", "shards", "natural", "quantity")
FLWR_PREFIX = "flwr:"


class DataSection(_Section):
    dataset: str = "digits"
    path: str | None = None
    data_dir: str | None = None
    max_train: int | None = Field(None, ge=10)
    partition: str = "dirichlet"  # iid, dirichlet, shards, natural, quantity, or flwr:NAME (flwr-datasets)
    alpha: float = Field(0.5, gt=0)
    self_balancing: bool = False  # dirichlet: no share of a class for a client already above the average size
    quantity_sigma: float = Field(1.0, ge=0)  # quantity: client sizes ~ LogNormal(0, sigma)
    partition_options: dict[str, Any] = Field(default_factory=dict)  # a flwr:NAME partitioner's keywords
    classes_per_client: int = Field(2, ge=1)
    num_clients: int = Field(15, ge=1)
    min_samples: int = Field(10, ge=1)
    feature_noise: float = Field(0.0, ge=0, le=1)
    feature_sigma: float = Field(1.0, ge=0)
    label_noise: float = Field(0.0, ge=0, le=1)
    # reading a folder, table or LEAF set (fedtitan/data/formats.py; docs/datasets.md "Bring your own data")
    image_size: int | None = Field(None, ge=1)  # folder: resize every image to this square
    image_mode: Literal["RGB", "L"] | None = None  # folder: convert every image (default: as they are)
    label_column: str = "label"  # table
    feature_columns: list[str] | None = None  # table: default, the numeric columns but label and group
    group_column: str | None = None  # table: the natural client (user, subject)
    window: int | None = Field(None, ge=1)  # table: consecutive rows per sample
    window_step: int | None = Field(None, ge=1)  # table: rows between windows (default: window)
    sample_shape: list[int] | None = None  # leaf: reshape each flat sample
    bad_rows: Literal["error", "drop"] = "error"  # table: unreadable rows stop the run, or are left out (counted)
    holdout: Literal["auto", "stratified", "group"] = "auto"  # a test split when the data has none
    test_fraction: float = Field(0.2, gt=0, lt=1)

    @field_validator("partition")
    @classmethod
    def _partition(cls, v: str) -> str:
        if v in PARTITIONERS or (v.startswith(FLWR_PREFIX) and len(v) > len(FLWR_PREFIX)):
            return v
        raise ValueError(f"unknown partition {v!r}{did_you_mean(v, PARTITIONERS)} Choose one of "
                         f"{', '.join(PARTITIONERS)}, or flwr:NAME for a flwr-datasets partitioner")


class ModelSection(_Section):
    name: str = "cnn"  # a zoo name, a "fedtitan.models" entry point, or package.module:factory
    width: int | None = Field(None, ge=1)
    stem: Literal["auto", "cifar", "imagenet"] = "auto"  # alexnet, squeezenet, resnet18/34/50
    options: dict[str, Any] = Field(default_factory=dict)  # extra keyword options for the model's factory
    head_module: str | None = None  # dotted submodule names of a plugin model's parts (found when unset)
    embedding_module: str | None = None
    first_block_module: str | None = None


class SelectionSection(_Section):
    method: str = "titan"
    batch_size: int = Field(10, ge=1)
    velocity: int = Field(100, ge=1)
    local_steps: int = Field(3, ge=1)
    buffer_size: int | Literal["auto"] = 30  # "auto": what the selecting unit can score in one training step
    buffer_max: int = Field(100, ge=1)
    n_blocks: int = Field(1, ge=1)
    pool: int = Field(4, ge=0)
    weighting: bool = True
    coarse: Literal["repdiv", "random"] = "repdiv"
    metric: Literal["euclidean", "sqeuclidean"] = "euclidean"
    carry_over: bool = True
    stratify: bool = True
    lr: float = Field(0.1, gt=0)
    lr_decay: float = Field(0.95, gt=0, le=1)
    lr_decay_every: int = Field(100, ge=1)
    options: dict[str, Any] = Field(default_factory=dict)  # extra keyword options for a plugin selector

    @model_validator(mode="after")
    def _sizes(self) -> SelectionSection:
        if self.velocity < self.batch_size:
            raise ValueError(f"selection.velocity ({self.velocity}) must be >= selection.batch_size ({self.batch_size})")
        if isinstance(self.buffer_size, int) and self.buffer_size < 1:
            raise ValueError(f"selection.buffer_size must be >= 1 or \"auto\", got {self.buffer_size}")
        if self.method == "titan" and isinstance(self.buffer_size, int) and self.buffer_size < self.batch_size:
            raise ValueError(
                f"selection.buffer_size ({self.buffer_size}) must be >= selection.batch_size ({self.batch_size})"
            )
        if self.buffer_size == "auto" and self.buffer_max < self.batch_size:
            raise ValueError(f"selection.buffer_max ({self.buffer_max}) must be >= selection.batch_size ({self.batch_size})")
        return self


class PruningSection(_Section):
    method: Literal["none", "warmup-loss", "warmup-loss-stratified", "random", "random-warmup", "full"] = "none"
    ratio: float = 1.0
    adaptive: bool = False
    warmup_epochs: float = Field(1.0, gt=0)
    epochs: int = Field(1, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-3, gt=0)
    optimizer: Literal["sgd", "adam"] = "adam"
    schedule: Literal["constant", "cosine", "step"] = "cosine"
    unseen: Literal["mean", "keep", "drop"] = "mean"

    @field_validator("ratio")
    @classmethod
    def _ratio(cls, v: float) -> float:
        if not (math.isfinite(v) and 0 < v <= 1):
            raise ValueError("must be in (0, 1] (the fraction of data kept)")
        return v


class AsyncSection(_Section):
    """``server.async``: the event-driven loop of ``server.mode = "async"`` (docs/running.md,
    "Asynchronous aggregation"; strategies/async_loop.py)."""

    concurrency: int | None = Field(None, ge=1)  # clients in flight (None: as many as a synchronous round samples)
    buffer_size: int | None = Field(None, ge=1)  # updates a server step aggregates, K (1: FedAsync; None: half the concurrency)
    dispatch_threshold: int = Field(1, ge=1)  # free slots before new clients are sent (the concurrency: synchronous)
    staleness: Literal["constant", "polynomial", "hinge", "cutoff"] = "polynomial"
    staleness_a: float = Field(0.5, ge=0)  # polynomial: (1 + s)^-a (0.5: FedBuff); hinge: the slope after b
    staleness_b: int = Field(4, ge=0)  # hinge / cutoff: the staleness up to which an update counts fully
    max_staleness: int | None = Field(None, ge=0)  # older updates are dropped (and counted)
    server_lr: float = Field(1.0, gt=0)  # the server step's learning rate on the buffered updates


class ServerSection(_Section):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    mode: Literal["sync", "async"] = "sync"  # rounds, or server steps as updates arrive on the virtual clock
    async_: AsyncSection = Field(default_factory=AsyncSection, alias="async")
    strategy: str = "fedavg"  # fedtitan's FedAvg, a Flower strategy's short name, or package.module:Class
    strategy_options: dict[str, Any] = Field(default_factory=dict)
    fraction: float = Field(0.2, gt=0, le=1)
    clients_per_round: int | None = Field(None, ge=1)  # sampled each round, in place of fraction
    min_clients: int = Field(1, ge=1)
    policy: Literal["wait-all", "deadline", "first-k"] = "wait-all"
    deadline_s: float | None = Field(None, gt=0)
    over_commit: float = Field(0.0, ge=0, le=2)
    eval_every: int = Field(1, ge=1)
    eval_samples: int = Field(2000, ge=1)
    client_eval: bool = False
    target_accuracy: float | None = Field(None, gt=0, le=1)
    timeout_s: float = Field(600.0, gt=0)

    @model_validator(mode="after")
    def _deadline(self) -> ServerSection:
        if self.policy == "deadline" and self.deadline_s is None:
            raise ValueError("server.policy='deadline' needs server.deadline_s")
        return self


class FleetSection(_Section):
    name: str | None = None  # a named fleet (fedtitan.devices.fleets): its settings replace this section's
    file: str | None = None  # a TOML file of [fleets.NAME] tables
    mix: dict[str, float] = Field(default_factory=lambda: {"jetson-nano-10w": 0.4, "orin-nano": 0.3, "rpi4": 0.3})
    devices: list[str] = Field(default_factory=list)
    variation: float = Field(0.05, ge=0, lt=1)
    profiles: str | None = None
    meter: Literal["simulated", "measured"] = "simulated"
    dynamics: Literal["static", "diurnal", "random-walk"] = "static"
    dynamics_options: dict[str, Any] = Field(default_factory=dict)
    trace: str | None = None  # CSV of availability / speed / idle share / bandwidth over virtual time
    # fleet.csv's rows each round (living fleets): every device, or the sampled ones only; auto:
    # every device up to TIMELINE_ALL_MAX devices, the sampled ones beyond
    timeline: Literal["auto", "all", "sampled"] = "auto"


# What a named fleet (fedtitan.devices.fleets) may set: the fleet section's keys but its own name and file.
FLEET_SETTINGS: tuple[str, ...] = tuple(k for k in FleetSection.model_fields if k not in ("name", "file"))


class SimulationSection(_Section):
    engine: Literal["ray", "local"] = "ray"  # local: every client in the server's process, one after another
    workers: int = Field(0, ge=0)  # Flower nodes that play the partitions (0: two per client process)
    # clients one message to a worker carries (bundles of a round's clients that share the
    # weights and the strategy's config); 0: a round's clients dealt evenly, one message per
    # worker; 1: one message per client. The same results either way.
    clients_per_message: int = Field(0, ge=0)
    num_cpus: float = Field(1.0, gt=0)
    num_gpus: float = Field(0.0, ge=0)
    ray_address: str | None = None
    # how model weights travel under Ray: once a round through its object store, or inside
    # every message (as they travel to real SuperNodes); auto: the object store for models of
    # 1 MiB and more. The same results either way.
    arrays: Literal["auto", "object-store", "messages"] = "auto"


class ComputeSection(_Section):
    """Where tensors live: ``auto`` (CUDA, else MPS, else CPU), ``cpu``, ``cuda``, ``cuda:N``, ``mps``."""

    device: str = "auto"

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        v = v.strip().lower()
        if not DEVICE_PATTERN.match(v):
            raise ValueError("must be one of auto, cpu, cuda, cuda:N, mps")
        return v


class TrackingSection(_Section):
    """An experiment tracker fed as rounds land (``fedtitan.results.tracking``)."""

    backend: Literal["none", "mlflow", "tensorboard", "wandb"] = "none"
    uri: str | None = None  # MLflow tracking URI; TensorBoard log root; W&B files folder
    project: str = "fedtitan"  # MLflow experiment; W&B project
    mode: Literal["offline", "online"] = "offline"  # W&B only
    report: bool = True  # write the run's report.html at the end and log it


class FaultSection(_Section):
    """Injected faults for testing robustness (fractions of client calls, seeded)."""

    exception: float = Field(0.0, ge=0, le=1)
    drop: float = Field(0.0, ge=0, le=1)
    nan: float = Field(0.0, ge=0, le=1)
    slow: float = Field(0.0, ge=0, le=1)
    slow_factor: float = Field(5.0, ge=1)
    scale: float = Field(0.0, ge=0, le=1)  # a client sends global + scale_factor x its update (a poisoned update)
    scale_factor: float = Field(100.0)


class Config(_Section):
    run: RunSection = RunSection()
    data: DataSection = DataSection()
    model: ModelSection = ModelSection()
    selection: SelectionSection = SelectionSection()
    pruning: PruningSection = PruningSection()
    server: ServerSection = ServerSection()
    fleet: FleetSection = FleetSection()
    simulation: SimulationSection = SimulationSection()
    compute: ComputeSection = ComputeSection()
    faults: FaultSection = FaultSection()
    tracking: TrackingSection = TrackingSection()
    # the keys the user typed (overrides, their own file), set by validate(): checks that need
    # a registry (fedtitan.preflight) flag only what was typed, not a preset's bulk settings
    _explicit: frozenset[str] = PrivateAttr(default_factory=frozenset)
    _json: str | None = PrivateAttr(default=None)

    @property
    def explicit(self) -> frozenset[str]:
        return self._explicit

    @property
    def regime(self) -> str:
        """``streaming`` (a selector each step) or ``static`` (a one-shot pruner then epochs)."""
        return "streaming" if self.pruning.method == "none" else "static"

    def to_json(self) -> str:
        """The settings as JSON, made once (the config is frozen): per-process caches key on it,
        once per client call."""
        if self._json is None:
            self._json = self.model_dump_json(by_alias=True)
        return self._json

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Config:
        out = super().model_copy(update=update, deep=deep)
        out._json = None  # a copy with other settings: its own JSON
        return out

    @classmethod
    def from_json(cls, text: str) -> Config:
        return cls.model_validate(json.loads(text))


# ---------------------------------------------------------------------------- building

PRESET_DIR = "presets"


def preset_names() -> list[str]:
    root = resources.files("fedtitan") / PRESET_DIR
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".toml"))


def read_preset(name_or_path: str) -> dict[str, Any]:
    path = Path(name_or_path)
    if name_or_path.endswith(".toml") or path.exists():
        if not path.exists():
            raise ConfigError(f"config file not found: {path}")
        return _resolve_file_paths(_parse_toml(path.read_text(), name_or_path), path.resolve().parent)
    else:
        res = resources.files("fedtitan") / PRESET_DIR / f"{name_or_path}.toml"
        if not res.is_file():
            raise ConfigError(f"unknown preset {name_or_path!r}{did_you_mean(name_or_path, preset_names())} Presets: {', '.join(preset_names())}")
        return _parse_toml(res.read_text(), name_or_path)


def _parse_toml(text: str, name: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{name} is not valid TOML: {exc}") from None


# The settings that name a file or folder: in a config file, a relative one is read from the
# file's folder (not the working folder); ``key=value`` overrides stay relative to the latter.
PATH_KEYS = {"data": ("path", "data_dir"), "fleet": ("file", "profiles", "trace")}


def _resolve_file_paths(doc: dict[str, Any], base: Path) -> dict[str, Any]:
    """A config file's document with its relative paths (:data:`PATH_KEYS`, and the paths of
    its ``[fleets.NAME]`` tables) made absolute against ``base``, the file's folder."""
    from fedtitan.devices.fleets import resolve_path, resolve_paths

    for section, keys in PATH_KEYS.items():
        table = doc.get(section)
        if isinstance(table, dict):
            doc[section] = {k: resolve_path(v, base) if k in keys else v for k, v in table.items()}
    fleets = doc.get("fleets")
    if isinstance(fleets, dict):
        doc["fleets"] = {n: resolve_paths(t, base) if isinstance(t, dict) else t for n, t in fleets.items()}
    return doc


def _parse_value(key: str, raw: str) -> Any:
    """``key=value`` values: TOML scalars/arrays/tables, ``a:0.4,b:0.6`` for mixes, bare strings."""
    if key.endswith(".mix") and ":" in raw and not raw.lstrip().startswith("{"):
        out = {}
        for part in raw.split(","):
            name, _, frac = part.partition(":")
            try:
                out[name.strip()] = float(frac)
            except ValueError:
                raise ConfigError(f"{key}: bad mix entry {part!r}; write name:fraction,name:fraction") from None
        return out
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        if key.endswith(".devices"):  # a,b,c or one bare name
            return [s.strip() for s in raw.split(",") if s.strip()]
        return raw


def _fields(model: type[BaseModel]) -> dict[str, Any]:
    """A section's fields by the name a config gives them (its alias: ``async`` for ``async_``)."""
    return {f.alias or name: f for name, f in model.model_fields.items()}


def _nested(section: str, name: str) -> type[BaseModel] | None:
    """The sub-section ``section.name`` is (``server.async``), else None."""
    field = _fields(Config.model_fields[section].annotation).get(name)  # type: ignore[arg-type]
    sub = field.annotation if field is not None else None
    return sub if isinstance(sub, type) and issubclass(sub, BaseModel) else None


def _known_keys() -> list[str]:
    keys = []
    for section, field in Config.model_fields.items():
        for name in _fields(field.annotation):  # type: ignore[arg-type]
            sub = _nested(section, name)
            keys += [f"{section}.{name}.{k}" for k in _fields(sub)] if sub is not None else [f"{section}.{name}"]
    return keys


# Keys holding a table of free-form options: ``--set server.strategy_options.proximal_mu=0.1``.
TABLE_KEYS = ("server.strategy_options", "selection.options", "fleet.dynamics_options", "model.options",
              "data.partition_options")


def is_known_key(key: str) -> bool:
    """A section.name key, or an entry of one of the option tables (``TABLE_KEYS``)."""
    if key in _known_keys():
        return True
    return any(key.startswith(t + ".") and len(key) > len(t) + 1 for t in TABLE_KEYS if t in _known_keys())


# What the papers call some settings (Titan: v, B, the buffer; the pruning paper: rho, T0):
# suggested for an unknown key, never accepted in its place.
PAPER_WORDS = {"rho": "ratio", "pruning_ratio": "ratio", "keep": "ratio", "v": "velocity", "buffer": "buffer_size",
               "b": "batch_size", "batch": "batch_size", "t0": "warmup_epochs", "warmup": "warmup_epochs",
               "alpha_dirichlet": "alpha", "clients": "num_clients", "k": "classes_per_client"}


# What Flower (pyproject's run config, flwr's strategies, simulation options) and pfl-research
# call some settings, wherever they are typed: suggested, never accepted (docs/glossary.md).
FOREIGN_WORDS = {
    "num_partitions": "data.num_clients", "num_clients": "data.num_clients", "num_devices": "data.num_clients",
    "num_users": "data.num_clients", "population": "data.num_clients",
    "num_supernodes": "simulation.workers", "num_workers": "simulation.workers",
    "num_rounds": "run.rounds", "num_server_rounds": "run.rounds", "central_num_iterations": "run.rounds",
    "fraction_train": "server.fraction", "fraction_fit": "server.fraction", "sample_fraction": "server.fraction",
    "cohort_size": "server.clients_per_round", "clients_per_round": "server.clients_per_round",
    "num_clients_per_round": "server.clients_per_round",
    "min_fit_clients": "server.min_clients", "min_train_nodes": "server.min_clients",
    "min_available_clients": "server.min_clients", "min_available_nodes": "server.min_clients",
    "fraction_evaluate": "server.client_eval", "evaluation_frequency": "server.eval_every",
    "round_timeout": "server.timeout_s",
}


def key_hint(key: str) -> str:
    """``; did you mean 'x'?`` for an unknown key: fedtitan's name for a word of Flower or
    pfl-research (``server.cohort_size`` -> ``server.clients_per_round``) or of a paper
    (``pruning.rho`` -> ``pruning.ratio``), else the closest known key; empty when nothing is close."""
    known = _known_keys()
    section, _, name = key.partition(".")
    foreign = FOREIGN_WORDS.get(name.lower().replace("-", "_"))
    if foreign in known and foreign != key:
        return f"; did you mean {foreign!r}? (fedtitan's word; see docs/glossary.md)"
    word = PAPER_WORDS.get(name.lower())
    candidates = [f"{s}.{word}" for s in ([section] + [k.split(".")[0] for k in known]) if f"{s}.{word}" in known]
    return f"; did you mean {candidates[0]!r}?" if candidates else did_you_mean(key, known)


# Pairs of settings a config gives one of: the one given replaces the other (``clients_per_round``
# replaces a preset's ``fraction``); both given in one place (a file, or the overrides) is refused.
EXCLUSIVE = (("server", "fraction", "clients_per_round"),)


def _one_of_each_pair(doc: dict[str, Any], where: str) -> None:
    """One line when ``doc`` (a config file's, or the overrides') gives both settings of a pair."""
    for section, a, b in EXCLUSIVE:
        table = doc.get(section)
        if isinstance(table, dict) and table.get(a) is not None and table.get(b) is not None:
            raise ConfigError(f"config {section}: {where} gives both {section}.{a} ({table[a]!r}) and "
                              f"{section}.{b} ({table[b]!r}); give one")


def apply_overrides(doc: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    given = {item.partition("=")[0].strip() for item in overrides}
    for section, a, b in EXCLUSIVE:
        if f"{section}.{a}" in given and f"{section}.{b}" in given:
            raise ConfigError(f"config {section}: the overrides give both {section}.{a} and {section}.{b}; give one")
        for one, other in ((a, b), (b, a)):  # an override of one replaces the other, wherever it was given
            if f"{section}.{one}" in given and isinstance(doc.get(section), dict):
                doc[section].pop(other, None)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value (e.g. run.rounds=5)")
        key, _, raw = item.partition("=")
        key = key.strip()
        if not is_known_key(key):
            raise ConfigError(f"unknown config key {key!r}{key_hint(key)}")
        section, name = key.split(".", 1)
        head, _, rest = name.partition(".")
        if key in _known_keys() and _nested(section, head) is not None:  # server.async.concurrency
            target = doc.setdefault(section, {}).setdefault(head, {})
            if not isinstance(target, dict):
                raise ConfigError(f"config {section}.{head} is a table; cannot set {key}")
            target[rest] = _parse_value(key, raw.strip())
        elif name in _fields(Config.model_fields[section].annotation):  # type: ignore[arg-type]
            doc.setdefault(section, {})[name] = _parse_value(key, raw.strip())
        else:  # an entry of an option table
            table, _, entry = name.partition(".")
            target = doc.setdefault(section, {}).setdefault(table, {})
            if not isinstance(target, dict):
                raise ConfigError(f"config {section}.{table} is not a table; cannot set {key}")
            target[entry] = _parse_value(key, raw.strip())
    return doc


def _format_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"] if not isinstance(p, int))
    msg = err["msg"].removeprefix("Value error, ")
    value = err.get("input")
    if err["type"] == "extra_forbidden":
        return f"unknown config key {loc!r}{key_hint(loc)}"
    shown = "" if isinstance(value, dict) else f" (got {value!r})"
    return f"config {loc or 'value'}: {msg}{shown}"


def validate(doc: dict[str, Any], explicit: Iterable[str] = (), given: Iterable[str] = ()) -> Config:
    """The config ``doc`` describes, checked. ``explicit``: the keys the user typed (overrides,
    their own config file); ``given``: those and a built-in preset's. A setting that has no
    effect is refused when typed without the setting that would give it one, else flagged in
    one warning (presets and sweeps set keys in bulk): :func:`inert_settings`."""
    try:
        cfg = Config.model_validate(doc)
    except ValidationError as exc:
        raise ConfigError(_format_error(exc)) from None
    _check_consistency(cfg)
    _flag_inert(cfg, set(explicit), set(given))
    cfg._explicit = frozenset(explicit)
    return cfg


_told: set[str] = set()


def warn_once(note: str) -> None:
    """Log ``note`` as a warning the first time this process sees it (a sweep validates the
    same settings once per run)."""
    if note not in _told:
        _told.add(note)
        log.warning(note)


def inert_settings(cfg: Config) -> list[tuple[str, str, str]]:
    """(key, the key that would give it an effect, why it has none) for every setting of ``cfg``
    away from its default that the run never reads (read where it is consumed: the static
    regime's ``_static``/``_prune`` in fedtitan.training.client, ``FleetPolicy``, the faults)."""
    out: list[tuple[str, str, str]] = []
    p, s, f, t = cfg.pruning, cfg.server, cfg.faults, cfg.tracking
    if p.method == "none":
        default = PruningSection()
        out += [(f"pruning.{n}", "pruning.method", f"{getattr(p, n)!r} has no effect without a pruning method "
                 "(pruning.method = 'none', the streaming regime); set pruning.method (e.g. warmup-loss)")
                for n in PruningSection.model_fields if n != "method" and getattr(p, n) != getattr(default, n)]
    elif p.method == "full" and p.ratio != 1:
        out.append(("pruning.ratio", "pruning.method", f"{p.ratio!r} has no effect with pruning.method = 'full' "
                    "(every sample is kept); choose a pruning method such as warmup-loss"))
    if s.deadline_s is not None and s.policy != "deadline":
        out.append(("server.deadline_s", "server.policy", f"{s.deadline_s!r} has no effect with server.policy = "
                    f"{s.policy!r}; set server.policy=deadline"))
    if s.over_commit and s.policy != "first-k":
        out.append(("server.over_commit", "server.policy", f"{s.over_commit!r} has no effect with server.policy = "
                    f"{s.policy!r}; set server.policy=first-k"))
    if s.mode == "sync":
        ad = AsyncSection()
        out += [(f"server.async.{n}", "server.mode", f"{getattr(s.async_, n)!r} has no effect with server.mode = "
                 "'sync'; set server.mode=async") for n in AsyncSection.model_fields
                if getattr(s.async_, n) != getattr(ad, n)]
    else:
        a = s.async_
        if a.staleness not in ("polynomial", "hinge") and a.staleness_a != AsyncSection().staleness_a:
            out.append(("server.async.staleness_a", "server.async.staleness", f"{a.staleness_a!r} has no effect with "
                        f"server.async.staleness = {a.staleness!r}; it applies to polynomial and hinge"))
        if a.staleness not in ("hinge", "cutoff") and a.staleness_b != AsyncSection().staleness_b:
            out.append(("server.async.staleness_b", "server.async.staleness", f"{a.staleness_b!r} has no effect with "
                        f"server.async.staleness = {a.staleness!r}; it applies to hinge and cutoff"))
        if s.policy != "wait-all":
            out.append(("server.policy", "server.mode", f"{s.policy!r} has no effect with server.mode = 'async' "
                        "(updates count as they arrive); leave server.policy = wait-all"))
    fd = FaultSection()
    if f.slow_factor != fd.slow_factor and not f.slow:
        out.append(("faults.slow_factor", "faults.slow", f"{f.slow_factor!r} has no effect with faults.slow = 0"))
    if f.scale_factor != fd.scale_factor and not f.scale:
        out.append(("faults.scale_factor", "faults.scale", f"{f.scale_factor!r} has no effect with faults.scale = 0"))
    sel = cfg.selection
    if p.method != "none":  # the pruning regime trains on the kept set: nothing of [selection] is read
        sd = SelectionSection()
        out += [(f"selection.{n}", "pruning.method", f"{getattr(sel, n)!r} has no effect with pruning.method = "
                 f"{p.method!r} (the pruning regime reads [pruning] only); set pruning.method = 'none' for "
                 "streaming selection") for n in SelectionSection.model_fields if getattr(sel, n) != getattr(sd, n)]
    elif sel.buffer_max != SelectionSection().buffer_max and sel.buffer_size != "auto":
        out.append(("selection.buffer_max", "selection.buffer_size", f"{sel.buffer_max!r} has no effect unless "
                    "selection.buffer_size = \"auto\""))
    d, dd = cfg.data, DataSection()
    readers = {"image_size": ("folder", "hf"), "image_mode": ("folder", "hf"), "label_column": ("table", "hf"),
               "feature_columns": ("table", "hf"), "group_column": ("table", "hf"), "window": ("table", "hf"),
               "window_step": ("table", "hf"), "bad_rows": ("table", "hf"), "sample_shape": ("leaf",),
               "holdout": ("folder", "table", "leaf", "hf"), "test_fraction": ("folder", "table", "leaf", "hf")}
    out += [(f"data.{n}", "data.dataset", f"{getattr(d, n)!r} has no effect with data.dataset = {d.dataset!r}; it "
             f"reads data.dataset = {' or '.join(repr(k) for k in kinds)}")
            for n, kinds in readers.items() if d.dataset not in kinds and getattr(d, n) != getattr(dd, n)]
    if d.window_step is not None and d.window is None and d.dataset in ("table", "hf"):
        out.append(("data.window_step", "data.window", f"{d.window_step!r} has no effect without data.window"))
    if d.self_balancing and d.partition != "dirichlet":
        out.append(("data.self_balancing", "data.partition", f"has no effect with data.partition = {d.partition!r}; "
                    "it applies to dirichlet"))
    if d.quantity_sigma != dd.quantity_sigma and d.partition != "quantity":
        out.append(("data.quantity_sigma", "data.partition", f"{d.quantity_sigma!r} has no effect with "
                    f"data.partition = {d.partition!r}; set data.partition = quantity"))
    if d.partition_options and not d.partition.startswith(FLWR_PREFIX):
        out.append(("data.partition_options", "data.partition", f"has no effect with data.partition = {d.partition!r}; "
                    "it applies to flwr:NAME partitioners"))
    if t.backend == "none":
        td = TrackingSection()
        out += [(f"tracking.{n}", "tracking.backend", f"{getattr(t, n)!r} has no effect with tracking.backend = "
                 "'none'; set tracking.backend") for n in ("uri", "project", "mode") if getattr(t, n) != getattr(td, n)]
    elif t.mode != "offline" and t.backend != "wandb":
        out.append(("tracking.mode", "tracking.backend", f"{t.mode!r} applies to wandb only"))
    return out


def _flag_inert(cfg: Config, explicit: set[str], given: set[str]) -> None:
    """Refuse a setting without effect typed without its enabler; warn once for the others."""
    for key, enabler, why in inert_settings(cfg):
        if key in explicit and enabler not in given:
            raise ConfigError(f"config {key}: {why}")
        if key.startswith("selection.") and key not in explicit:
            continue  # a preset's selection settings under a pruning method: flagged only when typed
        warn_once(f"config {key}: {why}")


def _check_consistency(cfg: Config) -> None:
    """What the sections' own validators cannot see; no registry needed (names are checked by
    :func:`fedtitan.preflight.check_config`)."""
    if cfg.data.dataset == "npz" and not cfg.data.path:
        raise ConfigError("config data.path: dataset 'npz' needs data.path pointing at your .npz file")
    for name, frac in cfg.fleet.mix.items():
        if not frac > 0:
            raise ConfigError(f"config fleet.mix: fraction for {name!r} must be > 0, got {frac}")
    if not cfg.fleet.mix and not cfg.fleet.devices:
        raise ConfigError("config fleet: give fleet.mix (name:fraction,...) or fleet.devices")


def _settings(doc: dict[str, Any]) -> dict[str, Any]:
    """``{"run": {"seed": 0}}`` -> ``{"run.seed": 0}`` (a table such as fleet.mix stays one value;
    a sub-section's keys are its own: ``server.async.buffer_size``)."""
    out: dict[str, Any] = {}
    for section, table in doc.items():
        if not isinstance(table, dict):
            continue
        sub = Config.model_fields[section].annotation if section in Config.model_fields else None
        fields: dict[str, Any] = sub.model_fields if isinstance(sub, type) and issubclass(sub, BaseModel) else {}
        for key, value in table.items():
            alias = getattr(fields.get(key), "alias", None)
            key = alias or key  # a dump by field name (async_) reads as the config's own (async)
            if isinstance(value, dict) and section in Config.model_fields and _nested(section, key) is not None:
                out.update({f"{section}.{key}.{k}": v for k, v in value.items()})
            else:
                out[f"{section}.{key}"] = value
    return out


# Settings that do not change what a run computes: a finished run is reused, and a cut-off
# run resumed, with any of these changed (``section.`` covers a whole section).
RESULT_NEUTRAL = ("data.data_dir", "tracking.", "simulation.", "run.checkpoint_every", "server.timeout_s")


def changed_settings(stored: str | dict[str, Any], cfg: Config, may_change: Iterable[str] = ()) -> list[str]:
    """``key: old -> new`` for every setting of ``cfg`` that differs from the stored config
    (a run's config.json), except keys in ``may_change`` (``section.`` prefixes allowed). A
    setting the stored config lacks (made by an older fedtitan) counts as its default, which
    is the old behaviour."""
    old = _settings(json.loads(stored) if isinstance(stored, str) else stored)
    old = {**_settings(json.loads(Config().to_json())), **old}
    now = _settings(json.loads(cfg.to_json()))
    allowed = tuple(may_change)
    return [f"{k}: {old.get(k)!r} -> {now.get(k)!r}" for k in sorted(set(old) | set(now))
            if old.get(k) != now.get(k) and not any(k == a or (a.endswith(".") and k.startswith(a)) for a in allowed)]


def _overridden(overrides: list[str], key: str, default: Any) -> Any:
    """The value the last ``key=value`` override gives ``key`` (else ``default``)."""
    for item in overrides:
        k, sep, raw = item.partition("=")
        if sep and k.strip() == key:
            default = _parse_value(key, raw.strip())
    return default


def load_config(preset: str | None = "quickstart", overrides: list[str] | None = None) -> Config:
    """Preset name or TOML path, then ``key=value`` overrides; validated. A named fleet
    (``fleet.name``, from the preset or an override) replaces the preset's fleet settings
    before the overrides are applied, so ``--set fleet.KEY`` still wins over it."""
    overrides = list(overrides or [])
    doc = read_preset(preset) if preset else {}
    from_file = set(_settings(doc))  # what the preset or the user's file gives
    explicit = {item.partition("=")[0].strip() for item in overrides}
    if preset and (preset.endswith(".toml") or Path(preset).exists()):
        explicit |= from_file  # the user's own file: typed, not a built-in preset's bulk
    preset_fleets = doc.pop("fleets", {})
    fleet = doc.get("fleet", {}) if isinstance(doc.get("fleet"), dict) else {}
    name = _overridden(overrides, "fleet.name", fleet.get("name"))
    if name:
        from fedtitan.devices.fleets import named_fleet

        named = named_fleet(str(name), preset_fleets, _overridden(overrides, "fleet.file", fleet.get("file")),
                            FLEET_SETTINGS)
        doc["fleet"] = {**{k: v for k, v in fleet.items() if k in ("file",)}, **named, "name": str(name)}
    _one_of_each_pair(doc, preset or "the config")
    return validate(apply_overrides(doc, overrides), explicit, explicit | from_file)
