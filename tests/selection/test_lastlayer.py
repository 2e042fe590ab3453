import numpy as np
import torch
import torch.nn.functional as F

from fedtitan.models import build_model
from fedtitan.selection.lastlayer import full_gradients, head_stats


def test_closed_form_gradients_match_autograd_per_sample():
    torch.manual_seed(0)
    model = build_model("mlp", (1, 6, 6), 5, hidden=(16, 12)).double()
    x = torch.randn(7, 1, 6, 6, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 4, 0, 2])
    stats = head_stats(model, x, y)
    closed = full_gradients(stats)
    for i in range(len(y)):
        model.zero_grad()
        loss = F.cross_entropy(model(x[i : i + 1]), y[i : i + 1])
        loss.backward()
        w, b = model.head.weight.grad, model.head.bias.grad
        auto = torch.cat([w, b[:, None]], dim=1).reshape(-1).numpy()
        np.testing.assert_allclose(closed[i], auto, rtol=1e-10, atol=1e-12)
    # norms and inner products from the closed forms equal the explicit gradients'
    np.testing.assert_allclose(stats.grad_norms, np.linalg.norm(closed, axis=1), rtol=1e-10)
    np.testing.assert_allclose(stats.gram(), closed @ closed.T, rtol=1e-10, atol=1e-12)


def test_losses_and_entropy():
    torch.manual_seed(1)
    model = build_model("mlp", (4,), 3, hidden=(5,))
    x = torch.randn(4, 4)
    y = torch.tensor([0, 1, 2, 1])
    stats = head_stats(model, x, y)
    with torch.no_grad():
        ref = F.cross_entropy(model(x), y, reduction="none").double().numpy()
    np.testing.assert_allclose(stats.loss, ref, rtol=1e-5)
    assert np.all(stats.entropy() <= np.log(3) + 1e-9)
