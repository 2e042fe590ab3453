"""Model weights through Ray's object store (clients/object_store.py), on a real local Ray."""

import threading

import numpy as np
import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


def test_without_ray_running_there_is_no_transport():
    import ray

    from clients.object_store import ServerArrays

    if ray.is_initialized():
        pytest.skip("Ray is running in this process")
    assert ServerArrays.start() is None


def test_weights_go_out_once_and_come_back_by_name(ray_local):
    from clients import object_store
    from clients.object_store import ServerArrays

    server = ServerArrays.start()
    assert server is not None
    weights = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "n": np.array(7, dtype=np.int64)}
    key = server.publish("tok/3", weights)
    assert key == "tok/3/global"

    @ray_local.remote(num_cpus=0)
    def client(key: str) -> tuple[str, bool]:
        got = object_store.global_weights(key)
        again = object_store.global_weights(key)  # the process's copy: read once a round
        same = all(got[k] is again[k] for k in got)
        got["w"] += 1  # a private copy, writable, the store's stays as published
        return object_store.put_weights("tok/3", {k: v * 2 for k, v in got.items()}), same

    reply_key, cached = ray_local.get(client.remote(key))
    assert cached and reply_key.startswith("tok/3/")
    [back] = server.fetch([reply_key])
    assert back is not None
    np.testing.assert_array_equal(back["w"], (weights["w"] + 1) * 2)
    assert back["n"].dtype == np.int64 and int(back["n"]) == 14
    assert server.fetch([reply_key]) == [None]  # taken once
    server.drop("tok/3/")
    with pytest.raises(ray_local.exceptions.RayTaskError, match="no longer in Ray's object store"):
        ray_local.get(client.remote("tok/4/global"))  # a round's name once the round is over


def test_prompt_dispatch_wakes_flowers_loop_when_the_server_pushes():
    """The replaced loop hands messages over as soon as the grid pushes them (Flower's looks
    every 0.1 s), and the original is put back afterwards."""
    from flwr.server.superlink.fleet.vce import vce_api

    from simulations.run import PromptDispatch

    original = vce_api.add_messages_to_queue
    dispatch = PromptDispatch()
    assert dispatch.install() and vce_api.add_messages_to_queue == dispatch.loop

    class State:
        def __init__(self):
            self.pending = []

        def get_message_ins(self, node_id, limit):
            out, self.pending = self.pending[:limit], self.pending[limit:]
            return out

    class Grid:
        def __init__(self, state):
            self.state = state

        def push_messages(self, messages):
            self.state.pending.extend(messages)
            return [str(m) for m in messages]

    import queue
    import time

    state, q, stop = State(), queue.Queue(), threading.Event()
    grid = Grid(state)
    dispatch.watch(grid)
    t = threading.Thread(target=vce_api.add_messages_to_queue, args=(state, q, {1: 0}, stop), daemon=True)
    t.start()
    time.sleep(0.25)  # the loop now sleeps in its 0.1 s wait
    t0 = time.perf_counter()
    assert grid.push_messages(["m1"]) == ["m1"]
    assert q.get(timeout=1.0) == "m1"
    assert time.perf_counter() - t0 < 0.05
    stop.set()
    t.join(timeout=1.0)
    dispatch.uninstall()
    assert vce_api.add_messages_to_queue is original


def test_prompt_dispatch_wakes_the_servers_wait_for_replies():
    """With the reply loop installed, the grid's send_and_receive returns as soon as the last
    reply is stored (Flower's sleeps ``pull_interval`` between looks), keeps the timeout, and
    Flower's loop is put back afterwards."""
    import queue
    import time
    from types import SimpleNamespace

    from flwr.server.superlink.fleet.vce import vce_api

    from simulations.run import PromptDispatch

    original = vce_api.put_message_into_state
    dispatch = PromptDispatch()
    dispatch.REPLY_WAIT_S = 5.0  # its safety-net look, made long: only the wake-up is quick
    assert dispatch.install() and vce_api.put_message_into_state == dispatch.store_loop

    class State:
        def __init__(self):
            self.replies = []

        def store_message_res(self, reply):
            self.replies.append(reply)

    class Grid:
        pull_interval = 10.0  # Flower's own loop would sleep this long

        def __init__(self, state):
            self.state = state

        def push_messages(self, messages):
            return [f"id-{m}" for m in messages]

        def pull_messages(self, ids):
            out = [r for r in self.state.replies if r.metadata.reply_to_message_id in ids]
            self.state.replies = [r for r in self.state.replies if r not in out]
            return out

        def send_and_receive(self, messages, *, timeout=None):
            raise AssertionError("replaced by watch()")

    def reply(to):
        return SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=to))

    state, q, stop = State(), queue.Queue(), threading.Event()
    grid = Grid(state)
    dispatch.watch(grid)
    t = threading.Thread(target=vce_api.put_message_into_state, args=(state, q, stop), daemon=True)
    t.start()

    def answer_later():
        time.sleep(0.2)
        q.put(reply("id-a"))
        time.sleep(0.2)
        t_last[0] = time.perf_counter()
        q.put(reply("id-b"))

    t_last = [0.0]
    threading.Thread(target=answer_later, daemon=True).start()
    got = grid.send_and_receive(["a", "b"], timeout=30.0)
    assert sorted(r.metadata.reply_to_message_id for r in got) == ["id-a", "id-b"]
    assert time.perf_counter() - t_last[0] < 1.0  # woken by the reply, not by a 5 s look

    t0 = time.perf_counter()
    assert grid.send_and_receive(["c"], timeout=0.3) == []  # never answered: the timeout holds
    assert 0.3 <= time.perf_counter() - t0 < 1.0
    stop.set()
    t.join(timeout=2.0)
    dispatch.uninstall()
    assert vce_api.put_message_into_state is original
