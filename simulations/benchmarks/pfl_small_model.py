"""The small-model benchmark's workload run by pfl-research, for :mod:`simulations.benchmarks.small_model`.

Not part of fedtitan and not imported by it: pfl-research (Apple's simulator, ``pip install
"pfl[pytorch]"``, 0.6.0 measured) is no dependency of ours. Run by ``small_model --pfl-python
PY``, where ``PY`` is an interpreter that has pfl and torch (a venv of its own: pfl pins
packages fedtitan's do not); this file imports only numpy, torch and pfl, so it runs there
without fedtitan installed::

    python3 -m venv /tmp/pfl && /tmp/pfl/bin/pip install torch==2.13.0 "pfl[pytorch]==0.6.0"
    python -m simulations.benchmarks.small_model --pfl-python /tmp/pfl/bin/python

The workload as fedtitan's run has it: the benchmark's npz (``make_data``), each client
``samples`` consecutive training samples after one seeded shuffle (IID, as ``data.partition =
iid`` with equal shares), the zoo's ``mlp`` or ``cnn`` written again in plain torch (the same
layers), 20 clients a round sampled at random, SGD at the benchmark's learning rate for 10
local steps of batch 10, FedAvg (pfl's central SGD at learning rate 1 on the averaged update),
and one central evaluation of 1,000 test samples after the last round. pfl ends a client's
local training at the end of an epoch (``local_num_steps`` stops there), so the 10 steps are
``10 * batch / samples`` epochs (10 epochs of the 10 samples a client holds). Inputs are
scaled to [0, 1] floats once, when loaded: pfl's datasets hold what the model takes.

Prints one JSON line: ``walls`` (each round's wall seconds, timed from pfl's callbacks) and
``setup_s`` (from the process's start to training's start); the parent measures the process's
wall time and memory from outside, as for the other runs.
"""

from __future__ import annotations

import argparse
import json
import time

T0 = time.perf_counter()

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402


def model(name: str, shape: tuple[int, ...], classes: int) -> nn.Module:
    """The zoo's ``mlp`` / ``cnn`` (:mod:`fedtitan.models.zoo`), as one torch module with pfl's
    ``loss`` and ``metrics`` (made without pfl: pfl is imported when metrics are asked for)."""
    if name == "mlp":
        layers: list[nn.Module] = [nn.Flatten(), nn.Linear(int(np.prod(shape)), 256), nn.ReLU(inplace=True),
                                   nn.Linear(256, 128), nn.ReLU(inplace=True), nn.Linear(128, classes)]
    else:
        w = 32
        layers = [nn.Conv2d(shape[0], w, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
                  nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
                  nn.Conv2d(2 * w, 4 * w, 3, padding=1), nn.ReLU(inplace=True),
                  nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * w, classes)]

    class Net(nn.Sequential):
        def loss(self, x: torch.Tensor, y: torch.Tensor, eval: bool = False) -> torch.Tensor:
            self.eval() if eval else self.train()
            return nn.functional.cross_entropy(self(x), y)

        @torch.no_grad()
        def metrics(self, x: torch.Tensor, y: torch.Tensor, eval: bool = True) -> dict:
            from pfl.metrics import Weighted

            self.eval() if eval else self.train()
            out = self(x)
            n = len(y)
            return {"loss": Weighted(float(nn.functional.cross_entropy(out, y, reduction="sum")), n),
                    "accuracy": Weighted(float((out.argmax(1) == y).sum()), n)}

    return Net(*layers)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="the benchmark's npz")
    ap.add_argument("--model", choices=["mlp", "cnn"], default="mlp")
    ap.add_argument("--clients", type=int, required=True)
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--cohort", type=int, default=20)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=10)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from pfl.aggregate.simulate import SimulatedBackend
    from pfl.algorithm import FederatedAveraging, NNAlgorithmParams
    from pfl.callback.base import TrainingProcessCallback
    from pfl.callback.central_evaluation import CentralEvaluationCallback
    from pfl.data.dataset import Dataset
    from pfl.data.federated_dataset import FederatedDataset
    from pfl.data.sampling import get_user_sampler
    from pfl.hyperparam import NNEvalHyperParams, NNTrainHyperParams
    from pfl.metrics import Metrics
    from pfl.model.pytorch import PyTorchModel

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    with np.load(args.data) as z:
        x = torch.from_numpy(z["x"].astype(np.float32) / 255.0)
        y = torch.from_numpy(z["y"].astype(np.int64))
        x_test = torch.from_numpy(z["x_test"][:1000].astype(np.float32) / 255.0)
        y_test = torch.from_numpy(z["y_test"][:1000].astype(np.int64))
        classes = int(z["num_classes"])
    samples = len(y) // args.clients
    order = torch.from_numpy(np.random.default_rng(args.seed).permutation(len(y))[: samples * args.clients])

    def user(uid: int) -> Dataset:
        idx = order[uid * samples:(uid + 1) * samples]
        return Dataset(raw_data=[x[idx], y[idx]], user_id=uid)

    train = FederatedDataset(user, get_user_sampler("random", list(range(args.clients))))
    net = model(args.model, tuple(x.shape[1:]), classes)
    pfl_model = PyTorchModel(net, local_optimizer_create=torch.optim.SGD,
                             central_optimizer=torch.optim.SGD(net.parameters(), lr=1.0))
    epochs = max(1, args.steps * args.batch // samples)  # pfl stops local training at an epoch's end

    walls: list[float] = []

    class Clock(TrainingProcessCallback):
        def on_train_begin(self, *, model):
            self.t = time.perf_counter()
            walls.clear()
            return super().on_train_begin(model=model)

        def after_central_iteration(self, aggregate_metrics, model, *, central_iteration):
            now = time.perf_counter()
            walls.append(now - self.t)
            self.t = now
            return False, Metrics()

    accuracy: list[float] = []

    class LastRoundEvaluation(CentralEvaluationCallback):  # pfl's evaluates at iterations divisible by its frequency
        def after_central_iteration(self, aggregate_metrics, model, *, central_iteration):
            if central_iteration != args.rounds - 1:
                return False, Metrics()
            stop, got = super().after_central_iteration(aggregate_metrics, model, central_iteration=central_iteration)
            accuracy.extend(float(v.overall_value) for k, v in got if "accuracy" in str(k))
            return stop, got

    evaluation = LastRoundEvaluation(Dataset(raw_data=[x_test, y_test]), NNEvalHyperParams(local_batch_size=1000))
    setup_s = time.perf_counter() - T0
    FederatedAveraging().run(
        algorithm_params=NNAlgorithmParams(central_num_iterations=args.rounds, evaluation_frequency=args.rounds,
                                           train_cohort_size=args.cohort, val_cohort_size=None),
        backend=SimulatedBackend(training_data=train, val_data=None),
        model=pfl_model,
        model_train_params=NNTrainHyperParams(local_num_epochs=epochs, local_learning_rate=args.lr,
                                              local_batch_size=args.batch),
        model_eval_params=NNEvalHyperParams(local_batch_size=1000),
        callbacks=[evaluation, Clock()])  # the clock last: the evaluation falls in the last round's wall
    print(json.dumps({"walls": walls, "setup_s": setup_s, "epochs": epochs, "samples_per_client": samples,
                      "final_accuracy": accuracy[-1] if accuracy else None}))


if __name__ == "__main__":
    main()
