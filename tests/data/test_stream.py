import numpy as np
import pytest
import torch

from fedtitan.data.dataset import Dataset
from fedtitan.data.stream import DataStream, NoiseSpec
from fedtitan.errors import ConfigError


def _ds(n=20, k=4):
    x = np.arange(n * 3, dtype=np.float32).reshape(n, 3)
    y = np.arange(n) % k
    return Dataset("toy", x, y, x[:4], y[:4], num_classes=k)


def test_stream_order_passes_and_resume():
    ds = _ds()
    idx = np.arange(2, 12)
    s = DataStream(ds, idx, v=4, seed=0, client=1)
    first = np.concatenate([s.next_ids() for _ in range(5)])  # 20 ids = two passes
    assert sorted(first[:10].tolist()) == list(range(2, 12))
    assert sorted(first[10:].tolist()) == list(range(2, 12))
    assert not np.array_equal(first[:10], first[10:])  # reshuffled per pass
    s2 = DataStream(ds, idx, v=4, seed=0, client=1)
    assert np.array_equal(np.concatenate([s2.next_ids() for _ in range(5)]), first)
    s3 = DataStream(ds, idx, v=4, seed=0, client=2)
    assert not np.array_equal(np.concatenate([s3.next_ids() for _ in range(5)]), first)
    # save / restore mid-pass
    s4 = DataStream(ds, idx, v=3, seed=0, client=1)
    s4.next_ids()
    state = s4.state()
    after = s4.next_ids()
    s5 = DataStream(ds, idx, v=3, seed=0, client=1)
    s5.restore(state)
    assert np.array_equal(s5.next_ids(), after)


def test_noise_fractions_and_determinism():
    ds = _ds(n=200, k=5)
    idx = np.arange(200)
    s = DataStream(ds, idx, v=200, seed=3, client=0,
                   noise=NoiseSpec(feature_fraction=0.4, feature_sigma=1.0, label_fraction=0.25))
    chunk = s.next()
    clean_x = ds.tensor("train", chunk.ids)
    changed_x = (chunk.x != clean_x).any(dim=1).numpy()
    assert changed_x.sum() == 80  # 40% of 200
    changed_y = chunk.y.numpy() != ds.y_train[chunk.ids]
    assert changed_y.sum() == 50  # 25%, always to a different class
    again = DataStream(ds, idx, v=200, seed=3, client=0,
                       noise=NoiseSpec(feature_fraction=0.4, feature_sigma=1.0, label_fraction=0.25)).next()
    assert np.array_equal(again.ids, chunk.ids) and bool((again.x == chunk.x).all())


def test_stream_errors():
    ds = _ds()
    with pytest.raises(ConfigError, match="v must be >= 1"):
        DataStream(ds, np.arange(3), v=0, seed=0, client=0)
    with pytest.raises(ConfigError, match="empty partition"):
        DataStream(ds, np.arange(0), v=2, seed=0, client=0)
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        NoiseSpec(label_fraction=1.5)


@pytest.mark.parametrize("ahead_bytes", [1, 3 * 4 * 3 * 2, 1 << 20])  # one chunk, two, all at once
def test_a_planned_stream_hands_out_what_an_unplanned_one_does(monkeypatch, ahead_bytes):
    """``plan`` reads chunks ahead in blocks: the same ids, inputs and (noisy) labels, in the
    same order, and the state says what was handed out, not what was read."""
    monkeypatch.setattr(DataStream, "AHEAD_BYTES", ahead_bytes)
    ds = _ds(n=40, k=5)
    idx = np.arange(3, 14)  # 11 samples, v=3: chunks cross passes
    noise = NoiseSpec(feature_fraction=0.3, feature_sigma=2.0, label_fraction=0.3)
    plain = DataStream(ds, idx, v=3, seed=4, client=2, noise=noise)
    planned = DataStream(ds, idx, v=3, seed=4, client=2, noise=noise)
    planned.plan(7)
    for step in range(7):
        a, b = plain.next(), planned.next()
        assert np.array_equal(a.ids, b.ids) and torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
        assert planned.state() == plain.state(), step
    for _ in range(2):  # past the plan: chunk by chunk, still the same stream
        a, b = plain.next(), planned.next()
        assert np.array_equal(a.ids, b.ids) and torch.equal(a.x, b.x)


def test_a_plan_left_half_read_resumes_where_the_handed_out_chunks_end():
    ds = _ds()
    idx = np.arange(2, 12)
    planned = DataStream(ds, idx, v=4, seed=0, client=1)
    planned.plan(5)
    handed = [planned.next().ids for _ in range(2)]
    state = planned.state()
    other_size = planned.next(3)  # another size drops the plan: the stream goes on from the handed-out chunks
    plain = DataStream(ds, idx, v=4, seed=0, client=1)
    assert all(np.array_equal(plain.next_ids(), h) for h in handed)
    assert plain.state() == state
    assert np.array_equal(plain.next_ids(3), other_size.ids)
    resumed = DataStream(ds, idx, v=4, seed=0, client=1)
    resumed.restore(state)
    assert np.array_equal(resumed.next_ids(3), other_size.ids)
