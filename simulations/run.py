"""Run one simulation: Flower's simulation engine on Ray, with a progress bar."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from fedtitan.config import Config
from fedtitan.errors import FedtitanError
from fedtitan.malloc import keep_heap, one_arena
from simulations.flower_lean import RAY_PROCESSES_ENV, defer_flower_sql, lean_flower

# torch and Flower are imported where they are needed, not here: `fedtitan run` starts Ray
# before it imports them (RayStart), so that their 3 to 4 s of imports overlap Ray's start.


def progress_bar(fields: str, quiet: bool) -> Any:
    """A rich progress bar: description, bar, n/total, ``fields`` (a format of task fields), ETA.
    A task whose field ``stopped`` is true (Ctrl-C / SIGTERM asked to stop) shows no ETA: it
    will not run to its total."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        Task,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class EtaColumn(TimeRemainingColumn):
        def render(self, task: Task) -> Text:
            if task.fields.get("stopped"):
                return Text("stopping" if not task.finished else "stopped", style="progress.remaining")
            return Text.assemble("ETA ", super().render(task))

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn(fields),
                    TimeElapsedColumn(), EtaColumn(), disable=quiet)


def _progress(cfg: Config, quiet: bool, done: int = 0, stop: threading.Event | None = None) -> tuple[Any, Any]:
    """The run's bar and the callback that advances it by a round. Once ``stop`` is set, the bar
    shows no ETA (the run ends after the current round)."""
    prog = progress_bar("acc {task.fields[acc]}  virtual {task.fields[vt]}", quiet)
    task = prog.add_task(cfg.run.name, total=cfg.run.rounds, completed=done, acc="-", vt="0 s", stopped=False)

    def update(row: dict[str, Any]) -> None:
        acc = row["accuracy"]
        prog.update(task, advance=1, acc="-" if math.isnan(acc) else f"{acc:.3f}", vt=f"{row['virtual_time_s']:.0f} s",
                    stopped=stop is not None and stop.is_set())

    return prog, update


def _install_stop_handlers(stop: threading.Event, quiet: bool, stopped_by: list[int]) -> dict[int, Any]:
    """First Ctrl-C / SIGTERM (what Slurm, Kubernetes and `timeout` send): finish the current
    round, write results, shut Ray down. A second one aborts at once. The signal that asked
    to stop is appended to ``stopped_by`` (the caller's: it comes back in the run's summary
    as ``stopped_by``, for the exit status 128 + n)."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def handler(signum: int, frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        stopped_by.append(signum)
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        print(f"\nfedtitan: {name}: stopping after the current round (press Ctrl-C again to abort)", file=sys.stderr)

    previous: dict[int, Any] = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.getsignal(sig)
        signal.signal(sig, handler)
    return previous


def client_resources(cfg: Config, attach: bool) -> dict[str, float]:
    """What Ray reserves per client process. ``simulation.num_gpus`` is the GPU share of one
    client process (0.25: four per GPU). Left at 0 while ``compute.device`` resolves to CUDA
    here, every client process gets an equal share of the visible GPUs, so the processes the
    CPUs allow spread over them instead of all landing on one GPU unaccounted."""
    sim = cfg.simulation
    gpus = sim.num_gpus
    if gpus == 0 and not attach:
        from fedtitan.compute import resolve_device

        if resolve_device(cfg.compute.device).type == "cuda":
            import torch

            processes = max(1, int((os.cpu_count() or 1) // sim.num_cpus))
            gpus = min(1.0, torch.cuda.device_count() / processes)
    # A client process that dies (the out-of-memory killer, a crash) is restarted by Ray, and the
    # server sends its message again until it is back (strategies.dispatch.Dispatch.send_surviving): a client round
    # is a pure function of its message (weights, state, round), so the retry gives what the
    # first try would have.
    return {"num_cpus": sim.num_cpus, "num_gpus": gpus, "max_restarts": -1}


def check_resources(cfg: Config, attach: bool, available: int | None = None) -> None:
    """Say what to change, before Ray starts, when the requested client resources cannot fit
    (or a name the config gives, the strategy, a plugin or the compute device is wrong).
    ``available``: the free memory to check against (default: what is free now; :func:`run`
    passes what was free before it started Ray beside this check)."""
    import psutil

    from fedtitan.preflight import check_config
    from strategies.registry import check_strategy

    check_config(cfg)
    check_strategy(cfg)
    cpus = os.cpu_count() or 1
    sim = cfg.simulation
    if not attach and sim.num_cpus > cpus:
        raise FedtitanError(f"simulation.num_cpus={sim.num_cpus:g} per client but this machine has {cpus} CPUs, so "
                            f"no client could ever be scheduled; set simulation.num_cpus <= {cpus} (1 is a good default)")
    if not attach:
        from fedtitan.compute import resolve_device, visible_devices

        resolve_device(cfg.compute.device)  # a one-line error if that device is not here
        gpus = sum(d.startswith("cuda") for d in visible_devices())
        if sim.num_gpus > 0 and gpus == 0:
            raise FedtitanError(f"simulation.num_gpus={sim.num_gpus:g} but no GPU is visible; set simulation.num_gpus=0")
    from fedtitan.training.setup import setup_for

    setup = setup_for(cfg)
    ds = setup.dataset
    per_actor = ds.x_train.nbytes + ds.x_test.nbytes + 4 * setup.model_bytes + 400 * 2**20  # + interpreter/torch
    actors = max(1, int(cpus // sim.num_cpus)) if not attach else 1
    avail = psutil.virtual_memory().available if available is None else available
    if per_actor * actors > avail:
        raise FedtitanError(
            f"{actors} client processes need about {per_actor * actors / 2**30:.1f} GiB but only {avail / 2**30:.1f} GiB "
            f"is free; raise simulation.num_cpus (fewer parallel clients) or use a smaller dataset/model")


def _ray_env() -> None:
    """The environment and loggers Ray is started with (set before ``ray.init``: its processes
    inherit the environment)."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    logging.getLogger("ray").setLevel(logging.WARNING)


class _NotMainThread(logging.Filter):
    """Drops Ray's warning that ``ray.init`` outside the main thread sets no SIGTERM handler:
    :class:`RayStart` runs it in a thread on purpose, and fedtitan installs its own handler
    (:func:`_install_stop_handlers`) once Ray is up."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "SIGTERM handler is not set" not in record.getMessage()


def _ray_init(cfg: Config, address: str | None, quiet: bool) -> None:
    """Start (or attach to) Ray here rather than inside Flower, so that fedtitan's signal
    handlers can be installed after Ray's (Ray's SIGTERM handler would otherwise abort the
    process with a page of tracebacks and no summary). Flower reuses an initialised Ray."""
    _ray_env()
    import ray

    if ray.is_initialized():
        return
    # what Flower's own init passes: the driver's sys.path, so workers import what it imports
    # (made absolute: a notebook's or `python -c`'s "" means the driver's folder, which a
    # worker's is not, and a model or selector module written there must import)
    pythonpath = os.pathsep.join(os.path.abspath(p) if p else os.getcwd() for p in sys.path)
    if os.environ.get("PYTHONPATH"):
        pythonpath = f"{pythonpath}{os.pathsep}{os.environ['PYTHONPATH']}"
    os.environ["PYTHONPATH"] = pythonpath
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": not quiet,
                              "logging_level": logging.WARNING}
    if address:  # the cluster's processes have their own environment: the path goes as the job's
        kwargs["address"] = address
        kwargs["runtime_env"] = {"env_vars": {"PYTHONPATH": pythonpath}}
    else:
        # a cluster started here inherits this environment, PYTHONPATH included, down to its
        # client processes. A job runtime_env would say the same again, and each client process
        # would then start through Ray's setup_worker.py, which imports Ray before it execs the
        # worker that imports it again (about 1.3 s of CPU a client process)
        # Ray starts one idle worker process per CPU for the first driver; Flower's client
        # actors never use them (each actor gets a process of its own), so on a small machine
        # they only take CPU from the start-up (two of them: about 1.3 s of CPU on 2 cores)
        kwargs["_system_config"] = {"prestart_worker_first_driver": False}
    worker_log = logging.getLogger("ray._private.worker")
    quiet_thread = _NotMainThread()
    worker_log.addFilter(quiet_thread)
    lean = _LeanHead(log_monitor=not quiet) if not address else None
    try:
        if lean is not None:
            lean.install()
        ray.init(**kwargs)
    finally:
        if lean is not None:
            lean.uninstall()
        worker_log.removeFilter(quiet_thread)


class _LeanHead:
    """The Ray cluster ``ray.init`` starts for a run, without the processes a simulation on
    one machine has no use for (set ``FEDTITAN_RAY_PROCESSES=full`` to keep Ray's own set):

    * the dashboard's head process. ``include_dashboard=False`` does not stop it: Ray starts it
      anyway with its usage-statistics module alone (usage statistics that ``ray.init`` turns
      off), and ``ray.init`` waits until it is up before it starts the raylet. It is the
      longest step of Ray's start: about 1.6 s of CPU for its imports, and ``ray.init`` took
      7.5 s with it against 3.9 s without on 2 busy cores (measured, Ray 2.55.1);
    * the autoscaler monitor (1.1 s of CPU at start; nothing to scale on one machine, and
      :func:`_end_ray_monitor` had to kill it at the end so that shutdown would not wait 1 s);
    * the log monitor, when the run is quiet (``log_to_driver=False``): it only sends the
      client processes' output to the driver, which then does not print it (1.0 s of CPU).

    The GCS, the raylet and its two agents (the runtime-env agent starts the client
    processes; the raylet stops when its dashboard agent does) stay. Without them, ``ray
    status`` and Ray's job and state APIs do not answer for this cluster: nothing in a run
    uses them. Only a cluster that ``ray.init`` starts here is changed (an ``address`` given
    leaves it as it is). Ray's internals (``ray._private.node.Node`` while ``ray.init`` runs,
    then put back): a Ray release without them starts its usual processes."""

    def __init__(self, log_monitor: bool) -> None:
        self.log_monitor = log_monitor
        self._module: Any = None
        self._original: Any = None

    def install(self) -> bool:
        if os.environ.get(RAY_PROCESSES_ENV, "lean") == "full":
            return False
        try:
            from ray._private import node as ray_node
            from ray._private.parameter import RayParams
        except ImportError:
            return False
        original = getattr(ray_node, "Node", None)
        probe = RayParams()
        if (original is None or not callable(getattr(original, "start_api_server", None))
                or not hasattr(probe, "no_monitor") or not hasattr(probe, "include_log_monitor")):
            return False
        log_monitor = self.log_monitor

        class LeanNode(original):  # type: ignore[misc, valid-type]
            def __init__(self, ray_params: Any, head: bool = False, *args: Any, **kwargs: Any) -> None:
                if head:
                    ray_params.no_monitor = True
                    if not log_monitor:
                        ray_params.include_log_monitor = False
                super().__init__(ray_params, head, *args, **kwargs)

            def start_api_server(self, *, include_dashboard: bool | None, raise_on_failure: bool) -> None:
                if include_dashboard:  # asked for: Ray's own
                    super().start_api_server(include_dashboard=include_dashboard, raise_on_failure=raise_on_failure)
                    return
                self._webui_url = ""  # what Ray sets without the dashboard's modules

        LeanNode.__name__ = LeanNode.__qualname__ = original.__name__
        self._module, self._original = ray_node, original
        ray_node.Node = LeanNode  # type: ignore[misc]
        return True

    def uninstall(self) -> None:
        if self._module is not None:
            self._module.Node = self._original
            self._module = None


def _end_ray_monitor() -> None:
    """End the autoscaler monitor of the Ray cluster this process started, once the run is
    over and before Ray shuts down. ``ray.shutdown`` stops the GCS first and then sends the
    monitor SIGTERM, whose handler tries to report to the stopped GCS: shutdown waits 1 s for
    it and then kills it (1.0 s of a 1.4 s shutdown, measured). The monitor has nothing to
    do on a single machine's cluster, so it is killed here instead (SIGKILL: its handler
    would report a "failed autoscaler" to this driver). Ray's internals: any change there
    leaves shutdown as it was."""
    try:
        from ray._private import ray_constants
        from ray._private import worker as ray_worker

        node = getattr(ray_worker, "_global_node", None)
        if node is None or not getattr(node, "head", False):
            return
        for info in node.all_processes.get(ray_constants.PROCESS_TYPE_MONITOR, []):
            if info.process.poll() is None:
                info.process.kill()
                info.process.wait(1)
    except Exception:  # an optimisation only: shutdown then takes its usual time
        pass


class RayStart:
    """``ray.init`` in a thread of its own, begun before the run's own set-up (the data, the
    partitions, the model, the server's imports) so that the two overlap: starting Ray is
    mostly waiting for its processes (the GCS, the raylet and its agents) to come up, about
    6 s on 2 cores, while the set-up is this process's own work. :func:`simulate` waits for it
    (:meth:`wait`); :meth:`close` ends it once the run is over (and shuts Ray down if the run
    failed before simulating).

    The caller waits until the thread has imported Ray (:attr:`imported`, about 0.9 s) before
    its own set-up: both hold the GIL while they import, so interleaved they took as long
    together as one after the other, but Ray's processes then started about 1.5 s later
    (``ray.init`` began 2.5 s into a run instead of 1.0-1.1 s) and could be up only after the
    set-up had ended, which then waited for them. Measured here (100,000-client small-model run, 4 runs each,
    alternating): wall time outside the rounds 6.8-8.1 s with the wait, 7.7-8.8 s without.

    The thread lives until :meth:`close`: Ray starts its processes with a parent-death signal
    (``PR_SET_PDEATHSIG``), which Linux sends when the *thread* that started them ends, so
    they would be killed with it."""

    def __init__(self, cfg: Config, address: str | None, quiet: bool) -> None:
        self.error: BaseException | None = None
        self.imported = threading.Event()
        self.up = threading.Event()
        self.release = threading.Event()
        self.thread = threading.Thread(target=self._start, args=(cfg, address, quiet), name="fedtitan-ray-start",
                                       daemon=True)
        self.thread.start()

    def _start(self, cfg: Config, address: str | None, quiet: bool) -> None:
        try:
            try:
                _ray_env()
                import ray  # noqa: F401
            finally:
                self.imported.set()
            _ray_init(cfg, address, quiet)
        except BaseException as exc:  # handed to the main thread by wait()
            self.error = exc
        finally:
            self.imported.set()
            self.up.set()
        self.release.wait()

    def wait(self) -> None:
        """Until Ray is up; its start's error, if it failed, is raised here."""
        self.up.wait()
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        """Once the run is over: Ray shut down (if it is still up) and the thread ended."""
        self.up.wait()
        import ray

        if ray.is_initialized():
            ray.shutdown()
        self.release.set()
        self.thread.join()


# How often the server looks for replies in simulation (Flower's default 0.1 s leaves a round's
# last reply waiting 50 ms on average; a look costs microseconds with a pool of workers).
PULL_INTERVAL_S = 0.01


class PromptDispatch:
    """Hand a round's messages to the client processes, and their replies to the server, as
    soon as they are there.

    Flower's simulation engine looks for new messages every 0.1 s (a thread running
    ``vce_api.add_messages_to_queue``), so every round started 50 ms late on average, with the
    client processes idle; and its in-memory grid looks for replies every ``pull_interval``.
    Within :func:`simulate`, the first thread runs the same loop, which also wakes when the
    server pushes messages (the grid's ``push_messages`` sets an event); the thread that stores
    replies (``vce_api.put_message_into_state``) also sets an event on each, and the grid's
    ``send_and_receive`` waits on it instead of sleeping. Flower releases that change these
    functions' signatures are left as they are (the grid then polls every ``PULL_INTERVAL_S``)."""

    PARAMS = ("state", "queue", "nodes_mapping", "f_stop")
    REPLY_PARAMS = ("state", "queue", "f_stop")
    # the longest wait for a reply between two looks (a safety net: each reply wakes it);
    # None: strategies.dispatch's REPLY_WAIT_S
    REPLY_WAIT_S: float | None = None
    # how often the engine's threads that wait on a queue look whether the run has ended
    # (Flower's: every second, which every run then waited for at its end)
    STOP_LOOK_S = 0.05

    def __init__(self) -> None:
        self.wake = threading.Event()
        self.replied = threading.Event()
        self._module: Any = None
        self._original: Any = None
        self._original_store: Any = None

    def loop(self, state: Any, queue: Any, nodes_mapping: Any, f_stop: threading.Event) -> None:
        # Flower's workers (vce_api.worker) take messages from this queue: they see the run's end
        # within STOP_LOOK_S instead of a second
        queue.get = _stoppable_get(queue.get, f_stop, self.STOP_LOOK_S)
        while not f_stop.is_set():
            self.wake.clear()
            for node_id in nodes_mapping.keys():
                for msg in state.get_message_ins(node_id=node_id, limit=1):
                    queue.put(msg)
            self.wake.wait(0.1)

    def store_loop(self, state: Any, queue: Any, f_stop: threading.Event) -> None:
        """Flower's ``put_message_into_state``, telling the server of each stored reply."""
        from queue import Empty

        while not f_stop.is_set():
            try:
                reply = queue.get(timeout=self.STOP_LOOK_S)
            except Empty:
                continue
            state.store_message_res(reply)
            self.replied.set()

    def install(self) -> bool:
        import inspect

        try:
            from flwr.server.superlink.fleet.vce import vce_api
        except ImportError:
            return False
        original = getattr(vce_api, "add_messages_to_queue", None)
        if original is None or tuple(inspect.signature(original).parameters) != self.PARAMS:
            return False
        self._module, self._original = vce_api, original
        vce_api.add_messages_to_queue = self.loop
        store = getattr(vce_api, "put_message_into_state", None)
        if store is not None and tuple(inspect.signature(store).parameters) == self.REPLY_PARAMS:
            self._original_store = store
            vce_api.put_message_into_state = self.store_loop
        return True

    def watch(self, grid: Any) -> None:
        """Wake the loop whenever ``grid`` pushes messages; wake ``grid``'s wait for replies
        whenever one is stored (when the store loop is ours)."""
        from strategies.dispatch import REPLIED_EVENT, REPLY_WAIT_S, wait_for_replies

        push = grid.push_messages

        def push_messages(messages: Any) -> Any:
            ids = push(messages)
            self.wake.set()
            return ids

        grid.push_messages = push_messages
        if self._original_store is None or not hasattr(grid, "pull_messages"):
            return
        setattr(grid, REPLIED_EVENT, self.replied)  # Dispatch.pull (asynchronous runs) waits on it too
        wait_s = REPLY_WAIT_S if self.REPLY_WAIT_S is None else self.REPLY_WAIT_S

        def send_and_receive(messages: Any, *, timeout: float | None = None) -> list[Any]:
            """Flower's ``send_and_receive``: push, then pull until every reply is in or
            ``timeout`` has passed, waking on each stored reply instead of sleeping."""
            return wait_for_replies(grid, grid.push_messages(messages), timeout, self.replied, wait_s=wait_s)

        grid.send_and_receive = send_and_receive

    def uninstall(self) -> None:
        if self._module is not None:
            self._module.add_messages_to_queue = self._original
            if self._original_store is not None:
                self._module.put_message_into_state = self._original_store
                self._original_store = None
            self._module = None


def _stoppable_get(get: Callable[..., Any], f_stop: threading.Event, look_s: float) -> Callable[..., Any]:
    """A queue's ``get`` that, given a timeout, also gives up (``queue.Empty``) within ``look_s``
    of ``f_stop`` being set. Flower's simulation workers wait for messages with
    ``get(timeout=1.0)`` and see that the run has ended only after it: up to a second at the end
    of every run."""
    from queue import Empty

    def get_or_stop(block: bool = True, timeout: float | None = None) -> Any:
        if not block or timeout is None:
            return get(block, timeout)
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            try:
                return get(True, max(0.0, min(look_s, left)))
            except Empty:
                if f_stop.is_set() or left <= look_s:
                    raise

    return get_or_stop


def pool_size(cfg: Config, population: int, cpus: float | None = None) -> int:
    """How many simulation workers (Flower SuperNodes) play a population's partitions: what
    can run at once, not the population. ``simulation.workers``, or (0, the default) two per
    client process the CPUs allow (``cpus`` / ``simulation.num_cpus``): a round's clients go
    out in one message per worker (``simulation.clients_per_message``), so each process gets
    two, and one that finishes early takes the other's next; with one message per client,
    eight per process (Flower's engine hands each node one message per wake, so spare nodes
    keep the processes fed with small clients). Never more than the population."""
    if cfg.simulation.workers:
        return max(1, min(cfg.simulation.workers, population))
    processes = max(1, int((cpus if cpus is not None else os.cpu_count() or 1) // cfg.simulation.num_cpus))
    return max(1, min(population, (8 if cfg.simulation.clients_per_message == 1 else 2) * processes))


def simulate(server_main: Callable[[Any], object], cfg: Config, population: int, ray_address: str | None = None,
             quiet: bool = False, stop: threading.Event | None = None, ray_start: RayStart | None = None) -> int | None:
    """Run ``server_main(grid)`` as the ServerApp of one Flower simulation whose SuperNodes are
    a pool of workers (:func:`pool_size`) that play any of ``population`` partitions (client
    resources from ``cfg``). Ctrl-C or SIGTERM asks the server to stop after the current round
    (a second one aborts); Ray is shut down in every case; a fedtitan error inside the server
    is re-raised here. Returns the signal that asked to stop (None when none did). ``ray_start``:
    Ray's start, begun earlier by the caller (:class:`RayStart`); without it Ray starts here."""
    # the ServerApp runs in a thread Flower starts: its central evaluation and aggregation
    # allocate from the main heap, kept as the clients' is (see one_arena)
    one_arena()
    keep_heap()
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    stop = stop if stop is not None else threading.Event()  # set by Ctrl-C / SIGTERM; server_main's server watches it
    if cfg.simulation.engine == "local":  # no Ray: imported below, so a machine without it runs this engine
        return _simulate_local(server_main, 1, quiet, stop)
    import ray

    defer_flower_sql()
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    from clients.client_app import app as client_app

    address = ray_address or cfg.simulation.ray_address
    errors: list[BaseException] = []
    server_app = ServerApp()
    dispatch = PromptDispatch()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        if hasattr(grid, "pull_interval"):  # Flower's in-memory grid looks for replies every 0.1 s
            grid.pull_interval = PULL_INTERVAL_S
        dispatch.watch(grid)
        try:
            server_main(grid)
        except FedtitanError as exc:  # re-raised below as the one-line error it is
            errors.append(exc)
        finally:
            _end_ray_monitor()  # the run is over: Flower shuts Ray down next

    init_args: dict[str, Any] = {"include_dashboard": False, "log_to_driver": not quiet}
    if address:
        init_args["address"] = address
    backend = {"client_resources": client_resources(cfg, attach=bool(address)), "init_args": init_args}
    # Flower warns that run_simulation is deprecated in favour of `flwr run` (which fedtitan
    # also supports); keep the console for errors and our own progress.
    logging.getLogger("flwr").setLevel(logging.ERROR)
    stop.clear()
    previous: dict[int, Any] = {}
    stopped_by: list[int] = []
    try:
        if ray_start is not None:
            ray_start.wait()
        else:
            _ray_init(cfg, address, quiet)
        previous = _install_stop_handlers(stop, quiet, stopped_by)
        workers = pool_size(cfg, population, float(ray.cluster_resources().get("CPU", 1)))
        dispatch.install()
        with _client_actor():
            run_simulation(server_app=server_app, client_app=client_app, num_supernodes=workers,
                           backend_name="ray", backend_config=backend)
    finally:
        dispatch.uninstall()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if ray.is_initialized():
            ray.shutdown()
    if errors:
        raise errors[0]
    return stopped_by[0] if stopped_by else None


@contextlib.contextmanager
def _client_actor() -> Iterator[None]:
    """While a simulation runs: Flower's Ray backend makes its client actors from
    :mod:`simulations.ray_actor`'s class (Flower's, imported without its SQL stores in each
    client process; that module says why). ``FEDTITAN_RAY_PROCESSES=full``, or a Flower whose
    SQL stores are not put off (:func:`~simulations.flower_lean.lean_flower`), keeps Flower's own."""
    from flwr.server.superlink.fleet.vce.backend import raybackend

    original = getattr(raybackend, "ClientAppActor", None)
    if original is None or not lean_flower():  # a Flower not read, or FEDTITAN_RAY_PROCESSES=full
        yield
        return
    from simulations.ray_actor import ClientAppActor

    setattr(raybackend, "ClientAppActor", ClientAppActor)  # noqa: B010  (a module's name, rebound)
    try:
        yield
    finally:
        setattr(raybackend, "ClientAppActor", original)  # noqa: B010


def _simulate_local(server_main: Callable[[Any], object], num_supernodes: int, quiet: bool,
                    stop: threading.Event) -> int | None:
    """``simulation.engine = "local"``: the clients run in this process (no Ray); Ctrl-C and
    SIGTERM behave as with Ray."""
    from clients.client_app import app as client_app
    from strategies.local_grid import LocalGrid

    stop.clear()
    stopped_by: list[int] = []
    previous = _install_stop_handlers(stop, quiet, stopped_by)
    try:
        server_main(LocalGrid(client_app, num_supernodes))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return stopped_by[0] if stopped_by else None


def run(cfg: Config, out: str | Path, ray_address: str | None = None, quiet: bool = False,
        resume_from: Any = None) -> dict[str, Any]:
    """Simulate ``cfg`` with ``data.num_clients`` virtual SuperNodes; results go to ``out``.
    ``resume_from``: a checkpoint of the run in ``out`` to go on from (see :func:`resume`)."""
    one_arena()  # before the progress display's thread (simulate says why)
    attach = bool(ray_address or cfg.simulation.ray_address)
    # Ray starts first, beside the checks and the set-up below, which import torch and Flower
    # (RayStart says why); a config, data or resource problem found there still ends the run
    # before any client runs (after Ray, started for nothing, has come up and shut down).
    ray_start = None
    available = None
    if cfg.simulation.engine != "local":
        import psutil

        defer_flower_sql()  # before anything imports Flower's object store

        available = psutil.virtual_memory().available  # checked as if Ray had not started yet
        ray_start = RayStart(cfg, ray_address or cfg.simulation.ray_address, quiet)
        ray_start.imported.wait()  # RayStart says why
    try:
        from fedtitan.preflight import check_config
        from fedtitan.results import prepare_dir

        # A misspelled name fails here, before the run folder exists (check_resources checks again).
        check_config(cfg)
        out_dir = prepare_dir(out)
        check_resources(cfg, attach=attach, available=available)
        from strategies.server_app import run_server
    except BaseException:
        if ray_start is not None:
            ray_start.close()
        raise

    stop = threading.Event()
    prog, update = _progress(cfg, quiet, done=resume_from.server_round if resume_from is not None else 0, stop=stop)
    t0 = time.perf_counter()
    try:
        with prog:
            stopped_by = simulate(lambda grid: run_server(grid, cfg, out_dir, update, resume_from, pool=True,
                                                          stop=stop), cfg, cfg.data.num_clients, ray_address, quiet,
                                  stop, ray_start)
            if stop.is_set() or stopped_by is not None:  # the last frame: no ETA for rounds that will not run
                for task in prog.tasks:
                    prog.update(task.id, stopped=True)
    finally:
        if ray_start is not None:  # after simulate has shut Ray down (or failed before it waited for it)
            ray_start.close()
    summary = read_summary(out_dir, time.perf_counter() - t0)
    summary["stopped_by"] = stopped_by  # the signal (SIGINT, SIGTERM) that stopped the run, else None
    return summary


def resume(run_dir: str | Path, overrides: list[str] | None = None, ray_address: str | None = None,
           quiet: bool = False) -> dict[str, Any]:
    """Continue the run in ``run_dir`` from its last valid checkpoint, with its own config
    (``overrides`` may raise ``run.rounds`` to extend a finished run, or change settings that do
    not affect results). A finished run is left as it is: its summary comes back with
    ``already_finished``."""
    from strategies.checkpoints import resume_config

    cfg, ckpt = resume_config(run_dir, overrides)
    if ckpt is None:
        summary = read_summary(Path(run_dir), 0.0)
        summary["already_finished"] = True
        return summary
    if not quiet:
        print(f"fedtitan resume: {run_dir} from round {ckpt.server_round} (to round {cfg.run.rounds})", flush=True)
    summary = run(cfg, run_dir, ray_address=ray_address, quiet=quiet, resume_from=ckpt)
    summary["resumed_from"] = ckpt.server_round
    return summary


def read_summary(out_dir: Path, wall_s: float) -> dict[str, Any]:
    """A finished run's summary.json, with the wall time of the call that made it."""
    import json

    summary_path = out_dir / "summary.json"
    if not summary_path.exists():
        raise FedtitanError(f"the simulation ended without finishing (see the log above); partial results in {out_dir}")
    summary: dict[str, Any] = json.loads(summary_path.read_text())
    summary["wall_s_total"] = wall_s
    return summary
