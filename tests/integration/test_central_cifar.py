import numpy as np
import pytest
import torch

from fedtitan.data import load_dataset
from fedtitan.models import build_model
from fedtitan.training import StaticConfig, evaluate, train_static


@pytest.mark.slow
def test_small_cnn_learns_cifar10(shared_data):
    """Central training of the small CNN on 10k shared CIFAR-10 images for 2 epochs must be
    clearly above chance (10%) on 2,000 test images."""
    torch.manual_seed(0)
    ds = load_dataset("cifar10", data_dir=shared_data)
    model = build_model("cnn", ds.input_shape, 10)
    rng = np.random.default_rng(0)
    idx = rng.choice(len(ds.y_train), 10_000, replace=False)
    train_static(model, ds, idx, StaticConfig(epochs=2, batch_size=64, lr=2e-3, optimizer="adam"), rng)
    _, acc = evaluate(model, ds.tensor("test", np.arange(2000)), ds.labels("test", np.arange(2000)))
    assert acc > 0.30, f"accuracy {acc:.3f}"
