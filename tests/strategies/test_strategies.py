"""Flower strategies behind fedtitan's fleet policy: registry, equivalence, state, FedProx,
robust aggregation. Client updates are real (``client_round`` in-process); replies are the
Messages the ClientApp would send."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fedtitan.config import load_config
from fedtitan.errors import ConfigError
from fedtitan.training.client import client_round
from fedtitan.training.setup import setup_for
from strategies.aggregate import FedtitanFedAvg, FlowerAggregator, to_arrays
from strategies.messages import parse_reply
from strategies.registry import build_strategy, check_strategy

BASE = ["data.num_clients=5", "selection.local_steps=3", "fleet.variation=0"]


@pytest.fixture(autouse=True)
def _task_identity():
    """Flower stamps messages with the running task's identity; outside a run, give it one."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


def _global(cfg):
    return {k: v.detach().cpu().clone() for k, v in setup_for(cfg).model.state_dict().items()}


def _replies(cfg, global_state, pids, rnd=1, strategy_config=None, scaled=()):
    """The reply Messages of ``pids`` to one train message, as the ClientApp builds them."""
    out = []
    for pid in pids:
        c = load_config("quickstart", [*BASE, "faults.scale=1.0"]) if pid in scaled else cfg
        r = client_round(c, pid, {k: v.clone() for k, v in global_state.items()}, {}, rnd,
                         strategy_config=strategy_config)
        instruction = Message(RecordDict({"config": ConfigRecord({"server-round": rnd})}), dst_node_id=100 + pid,
                              message_type="train")
        content = RecordDict({"arrays": ArrayRecord(r.state_dict), "metrics": MetricRecord(r.metrics)})
        out.append(parse_reply(Message(content, reply_to=instruction), 100 + pid))
    return out


def _np(state):
    return {k: np.asarray(v.numpy() if isinstance(v, torch.Tensor) else v) for k, v in state.items()}


def _flat(state):
    return np.concatenate([np.asarray(v, dtype=np.float64).ravel() for k, v in state.items()
                           if np.issubdtype(np.asarray(v).dtype, np.floating)])


# ------------------------------------------------------------------------------ replies
@pytest.mark.parametrize("drop", ["steps", "num-examples", "metrics"])
def test_a_malformed_report_fails_its_client_not_the_run(drop):
    """A board on another version or a mod that drops a metric: that client failed, with the
    reason; the round goes on."""
    from fedtitan import wire
    from fedtitan.status import Status
    from fedtitan.wire import ClientReport

    numbers, strings = ClientReport(partition_id=3, device="rpi4").to_wire()
    instruction = Message(RecordDict({wire.CONFIG_RECORD: ConfigRecord({wire.SERVER_ROUND_KEY: 1})}),
                          dst_node_id=103, message_type="train")
    records = {wire.ARRAYS_RECORD: ArrayRecord({"w": torch.zeros(2)}),
               wire.METRICS_RECORD: MetricRecord({k: v for k, v in numbers.items() if k != drop}),
               wire.REPORT_RECORD: ConfigRecord(strings)}
    if drop == "metrics":
        del records[wire.METRICS_RECORD]
    result = parse_reply(Message(RecordDict(records), reply_to=instruction), 103)
    assert result.status == Status.FAILED and result.node_id == 103 and result.arrays is None
    assert result.error.startswith("malformed report: ") and (drop == "metrics" or drop in result.error)
    assert "\n" not in result.error
    # a report with every key is read as before
    records[wire.METRICS_RECORD] = MetricRecord(numbers)
    assert parse_reply(Message(RecordDict(records), reply_to=instruction), 103).status == Status.OK


# ------------------------------------------------------------------------------ registry


@pytest.mark.parametrize(("overrides", "message"), [
    (["server.strategy=fedprx"], "did you mean 'fedprox'"),
    (["server.strategy=fedprox", "server.strategy_options.proximal_muu=0.1"], "did you mean 'proximal_mu'"),
    (["server.strategy=fedadam", "server.strategy_options.fraction_train=0.5"], "sampling is fedtitan's"),
    (["server.strategy=dp-server-fixed", "server.strategy_options.clipping_norm=1.0"], "needs option 'noise_multiplier'"),
    (["server.strategy_options.eta=0.1"], "takes no options"),
    (["server.strategy=no_such_module_xyz:Strategy"], "cannot import module 'no_such_module_xyz'"),
    (["server.strategy=strategies.registry:NoSuchClass"], "has no 'NoSuchClass'"),
    (["server.strategy=fedtitan.selection.selectors:RandomSelector"], "does not implement the Flower Message-API"),
    (["server.strategy=dp-server-fixed", "server.strategy_options.noise_multiplier=0.1",
      "server.strategy_options.clipping_norm=-1"], "refused its options"),
])
def test_bad_strategy_settings_are_one_line_errors(overrides, message):
    with pytest.raises(ConfigError) as exc:
        check_strategy(load_config("quickstart", overrides))
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_strategies_build_with_fedtitans_sampling_and_wrapped_options():
    fedprox = build_strategy(load_config("quickstart", ["server.strategy=fedprox",
                                                        "server.strategy_options.proximal_mu=0.3"]), num_sampled=4)
    assert fedprox.proximal_mu == 0.3 and fedprox.fraction_train == 1.0 and fedprox.min_available_nodes == 1
    dp = build_strategy(load_config("quickstart", [
        "server.strategy=dp-server-fixed", "server.strategy_options.noise_multiplier=0.0",
        "server.strategy_options.clipping_norm=2.0", "server.strategy_options.strategy=fedadam",
        "server.strategy_options.eta=0.05"]), num_sampled=6)
    assert dp.num_sampled_clients == 6 and dp.clipping_norm == 2.0
    assert type(dp.strategy).__name__ == "FedAdam" and dp.strategy.eta == 0.05
    q = build_strategy(load_config("quickstart", ["server.strategy=qfedavg"]), num_sampled=2)
    assert q.client_learning_rate == pytest.approx(0.1)  # the clients' own learning rate
    assert build_strategy(load_config("quickstart", []), num_sampled=2) is None  # fedtitan's FedAvg


# ------------------------------------------------------------------------------ aggregation


def test_flower_fedavg_equals_fedtitans_on_the_same_included_replies():
    cfg = load_config("quickstart", BASE)
    g = _global(cfg)
    results = _replies(cfg, g, [0, 1, 2, 3])
    ours = FedtitanFedAvg().aggregate(1, results, _np(g))
    agg = FlowerAggregator(build_strategy(load_config("quickstart", ["server.strategy=flwr-fedavg"]), 4), "flwr-fedavg")
    agg.configure(1, to_arrays(_np(g)), ConfigRecord({}), None, [100, 101, 102, 103])
    theirs = agg.aggregate(1, results, _np(g))
    assert set(ours) == set(theirs)
    for k in ours:
        assert theirs[k].dtype == ours[k].dtype
        np.testing.assert_allclose(theirs[k], ours[k], rtol=1e-5, atol=1e-6)  # Flower sums in float32


def test_flower_strategy_only_messages_the_sampled_nodes_in_fedtitans_order():
    cfg = load_config("quickstart", ["server.strategy=fedprox", "server.strategy_options.proximal_mu=0.5"])
    agg = FlowerAggregator(build_strategy(cfg, 3), "fedprox")
    msgs = agg.configure(4, to_arrays(_np(_global(cfg))), ConfigRecord({"config": "{}"}), None, [7, 3, 9])
    assert [m.metadata.dst_node_id for m in msgs] == [7, 3, 9]
    rec = msgs[0].content["config"]
    assert rec["proximal-mu"] == 0.5 and rec["server-round"] == 4 and rec["config"] == "{}"


def test_fedadam_keeps_and_uses_its_moments_across_rounds():
    cfg = load_config("quickstart", [*BASE, "server.strategy=fedadam"])
    agg = FlowerAggregator(build_strategy(cfg, 3), "fedadam")
    state = _np(_global(cfg))
    nodes = [100, 101, 102]
    agg.configure(1, to_arrays(state), ConfigRecord({}), None, nodes)
    state1 = agg.aggregate(1, _replies(cfg, {k: torch.from_numpy(v) for k, v in state.items()}, [0, 1, 2]), state)
    m1 = {k: v.copy() for k, v in agg.strategy.m_t.items()}
    v1 = {k: v.copy() for k, v in agg.strategy.v_t.items()}
    assert any(np.abs(v).sum() > 0 for v in m1.values())
    g1 = {k: torch.from_numpy(np.array(v)) for k, v in state1.items()}
    replies2 = _replies(cfg, g1, [0, 1, 2], rnd=2)
    agg.configure(2, to_arrays(state1), ConfigRecord({}), None, nodes)
    state2 = agg.aggregate(2, replies2, state1)
    # the moments moved on from round 1 (beta_1 = 0.9: m2 = 0.9 m1 + 0.1 delta2) ...
    k = next(k for k in m1 if np.abs(m1[k]).sum() > 0)
    delta2 = FedtitanFedAvg().aggregate(2, replies2, state1)[k].astype(np.float64) - state1[k]
    np.testing.assert_allclose(agg.strategy.m_t[k], 0.9 * m1[k] + 0.1 * delta2, rtol=1e-4, atol=1e-7)
    assert not np.allclose(agg.strategy.v_t[k], v1[k])
    # ... and round 2 differs from a FedAdam that starts fresh at round 2 (no memory)
    fresh = FlowerAggregator(build_strategy(cfg, 3), "fedadam")
    fresh.configure(2, to_arrays(state1), ConfigRecord({}), None, nodes)
    alone = fresh.aggregate(2, replies2, state1)
    assert not np.allclose(_flat(alone), _flat(state2))


@pytest.mark.parametrize("regime", [[], ["pruning.method=warmup-loss", "pruning.ratio=0.5"]])
def test_fedprox_mu_pulls_the_client_update_towards_the_global_model(regime):
    cfg = load_config("quickstart", [*BASE, *regime, "model.name=cnn", "model.width=8"])
    g = _global(cfg)

    def update(mu):
        r = client_round(cfg, 1, {k: v.clone() for k, v in g.items()}, {}, 1,
                         strategy_config=None if mu is None else {"proximal-mu": mu})
        return _flat(_np(r.state_dict)) - _flat(_np(g)), r.metrics

    plain, _ = update(None)
    zero, m0 = update(0.0)
    assert np.array_equal(plain, zero) and m0["proximal_mu"] == 0.0  # mu = 0 is FedAvg, bit for bit
    strong, m = update(5.0)
    assert m["proximal_mu"] == 5.0
    assert np.linalg.norm(strong) < 0.9 * np.linalg.norm(plain)


@pytest.mark.parametrize(("name", "options"), [("krum", {"num_malicious_nodes": 1}),
                                               ("multikrum", {"num_malicious_nodes": 1, "num_nodes_to_select": 3})])
def test_krum_and_multikrum_exclude_an_update_scaled_by_100(name, options):
    cfg = load_config("quickstart", [*BASE, f"server.strategy={name}",
                                     *(f"server.strategy_options.{k}={v}" for k, v in options.items())])
    g = _global(cfg)
    results = _replies(cfg, g, [0, 1, 2, 3, 4], scaled={2})
    assert [r.metrics["fault_scaled"] for r in results] == [0, 0, 1, 0, 0]
    poisoned = _flat(results[2].arrays) - _flat(_np(g))
    honest = [r for r in results if r.metrics["fault_scaled"] == 0]
    assert np.linalg.norm(poisoned) > 50 * max(np.linalg.norm(_flat(r.arrays) - _flat(_np(g))) for r in honest)
    agg = FlowerAggregator(build_strategy(cfg, 5), name)
    agg.configure(1, to_arrays(_np(g)), ConfigRecord({}), None, [r.node_id for r in results])
    out = _flat(agg.aggregate(1, results, _np(g)))
    plain = _flat(FedtitanFedAvg().aggregate(1, results, _np(g)))
    dist_honest = min(np.linalg.norm(out - _flat(r.arrays)) for r in honest)
    assert np.linalg.norm(out - plain) > 10 * max(dist_honest, 1e-6)  # far from the poisoned average
    if name == "krum":  # Krum returns one honest client's weights
        assert dist_honest < 1e-5
    else:  # MultiKrum averages 3 of the 4 honest ones
        assert np.linalg.norm(out - _flat(results[2].arrays)) > 10 * np.linalg.norm(out - _flat(honest[0].arrays))
