"""Streaming selectors: Titan, its C-IS ablation, and the paper's baselines.

Every selector sees each streamed chunk (``observe``) and then picks a batch (``select``).
Except Titan, all select from the latest chunk of ``v`` newly streamed samples.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from fedtitan.data.stream import Chunk
from fedtitan.errors import ConfigError
from fedtitan.models.base import BlockModel
from fedtitan.plugins import call_with_accepted, require_methods, resolve
from fedtitan.selection.base import Selection, take, uniform_weight_tensor
from fedtitan.selection.cis import cis_draw, is_draw
from fedtitan.selection.coarse import CoarseFilter
from fedtitan.selection.lastlayer import head_stats


class _ChunkSelector:
    """Keeps the latest chunk as the candidate set.

    Two class attributes tell the cost model what a selector runs (plugins may set them
    too): ``coarse_filter`` (Titan's first-block pass over the stream) and
    ``forward_candidates`` (a full forward over the candidates at each selection)."""

    name = "base"
    coarse_filter = False
    forward_candidates = True

    def __init__(self) -> None:
        self.chunk: Chunk | None = None

    def observe(self, chunk: Chunk, model: BlockModel) -> None:
        self.chunk = chunk

    def _candidates(self) -> Chunk:
        if self.chunk is None or len(self.chunk) == 0:
            raise RuntimeError(f"{self.name}: select() called before any data was observed")
        return self.chunk

    def state_dict(self) -> dict[str, object]:
        return {}

    def load_state_dict(self, state: dict[str, object]) -> None:
        pass

    def select(self, batch_size: int, model: BlockModel, rng: np.random.Generator) -> Selection:
        raise NotImplementedError


class RandomSelector(_ChunkSelector):
    """``rs``: B samples uniformly at random, without replacement."""

    name = "rs"
    forward_candidates = False

    def select(self, batch_size: int, model: BlockModel, rng: np.random.Generator) -> Selection:
        c = self._candidates()
        rows = rng.choice(len(c), size=min(batch_size, len(c)), replace=False)
        return take(c, rows, uniform_weight_tensor(len(rows)), {"candidates": float(len(c))})


class ImportanceSelector(_ChunkSelector):
    """``is``: last-layer gradient-norm importance sampling with unbiased weights."""

    name = "is"

    def __init__(self, weighting: bool = True) -> None:
        super().__init__()
        self.weighting = weighting

    def select(self, batch_size: int, model: BlockModel, rng: np.random.Generator) -> Selection:
        c = self._candidates()
        stats = head_stats(model, c.x, c.y)
        rows, w = is_draw(stats.grad_norms, batch_size, rng, self.weighting)
        return take(c, rows, w, {"candidates": float(len(c)), "mean_grad_norm": float(stats.grad_norms.mean())})


class ScoreSelector(_ChunkSelector):
    """Top-B by a per-sample score: ``hl`` (high loss), ``ll`` (low loss), ``ce`` (entropy)."""

    def __init__(self, name: str, score: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> None:
        super().__init__()
        self.name = name
        self.score = score

    def select(self, batch_size: int, model: BlockModel, rng: np.random.Generator) -> Selection:
        c = self._candidates()
        stats = head_stats(model, c.x, c.y)
        s = self.score(stats.loss, stats.entropy())
        rows = np.lexsort((np.arange(len(s)), -s))[: min(batch_size, len(c))]
        return take(c, rows, uniform_weight_tensor(len(rows)), {"candidates": float(len(c)), "mean_score": float(s[rows].mean())})


class OCSSelector(_ChunkSelector):
    """``ocs``: Online Coreset Selection (Yoon et al., ICLR 2022), minibatch similarity +
    sample diversity on last-layer gradients; top-B of ``rep + div``.

    ``rep_i = cos(g_i, mean g)``; ``div_i = -mean_{j != i} cos(g_i, g_j)``.
    """

    name = "ocs"

    def select(self, batch_size: int, model: BlockModel, rng: np.random.Generator) -> Selection:
        c = self._candidates()
        stats = head_stats(model, c.x, c.y)
        gram = stats.gram()
        norms = np.sqrt(np.maximum(np.diag(gram), 1e-24))
        cos = gram / np.outer(norms, norms)
        n = len(c)
        mean_dot = gram.mean(axis=1)  # <g_i, mean g>
        mean_norm = np.sqrt(max(gram.mean(), 1e-24))  # ||mean g||
        rep = mean_dot / (norms * mean_norm)
        div = -(cos.sum(axis=1) - 1.0) / max(n - 1, 1)
        s = rep + div
        rows = np.lexsort((np.arange(n), -s))[: min(batch_size, n)]
        return take(c, rows, uniform_weight_tensor(len(rows)), {"candidates": float(n)})


def camel_flops(batch_size: int, candidates: int, dim: int) -> float:
    """Arithmetic of one Camel selection (charged by the cost model; it runs no model forward):
    the mean (n*D), then k+1 distance passes over the candidates (3*n*D each: subtract,
    square, sum)."""
    k = min(batch_size, candidates)
    return float(candidates * dim + 3 * candidates * dim * (k + 1))


class CamelSelector(_ChunkSelector):
    """``camel``: greedy coreset in input space (Camel, Li et al., 2022 style).

    Start from the sample nearest the chunk mean, then repeatedly add the sample farthest from
    the current selection (greedy k-center), which minimises the largest input distance
    between any streamed sample and the selected batch.
    """

    name = "camel"
    forward_candidates = False  # input-space arithmetic only (charged by camel_flops)

    def select(self, batch_size: int, model: BlockModel, rng: np.random.Generator) -> Selection:
        c = self._candidates()
        x = c.x.flatten(1).cpu().double().numpy()
        n = len(x)
        k = min(batch_size, n)
        first = int(np.argmin(((x - x.mean(axis=0)) ** 2).sum(axis=1)))
        rows = [first]
        d = ((x - x[first]) ** 2).sum(axis=1)
        while len(rows) < k:
            nxt = int(np.argmax(d))
            rows.append(nxt)
            d = np.minimum(d, ((x - x[nxt]) ** 2).sum(axis=1))
        return take(c, np.asarray(rows), uniform_weight_tensor(k), {"candidates": float(n), "coverage_radius": float(np.sqrt(d.max()))})


def _cis_selection(c: Chunk, model: BlockModel, batch_size: int, rng: np.random.Generator, weighting: bool) -> Selection:
    stats = head_stats(model, c.x, c.y)
    labels = c.y.cpu().numpy()
    draw = cis_draw(labels, stats.grad_norms, stats.gram(), batch_size, rng, weighting)
    info = {
        "candidates": float(len(c)),
        "classes": float(len(draw.sizes)),
        "cis_biased": float(draw.biased),
        "weight_sum": float(draw.weights.sum()),
        "max_class_share": float(max(draw.sizes.values()) / batch_size),
    }
    return take(c, draw.rows, draw.weights, info)


class CISSelector(_ChunkSelector):
    """``cis``: C-IS over every newly streamed sample, no coarse filter (the paper's ablation)."""

    name = "cis"

    def __init__(self, weighting: bool = True) -> None:
        super().__init__()
        self.weighting = weighting

    def select(self, batch_size: int, model: BlockModel, rng: np.random.Generator) -> Selection:
        return _cis_selection(self._candidates(), model, batch_size, rng, self.weighting)


class TitanSelector:
    """``titan``: coarse filter on block features -> candidate buffer -> C-IS with unbiased weights.

    Samples drawn into a batch are consumed (removed from the buffer); the rest stay and
    compete with the next chunk.
    """

    name = "titan"
    coarse_filter = True
    forward_candidates = True
    info_keys = ("buffer", "coarse_forwards")  # Selection.info that clients.csv shows (info_*)

    def __init__(self, buffer_size: int = 30, n_blocks: int = 1, pool: int = 4, weighting: bool = True,
                 consume: bool = True, carry_over: bool = True, refresh: bool = True,
                 metric: str = "euclidean", coarse: str = "repdiv", seed: int = 0, stratify: bool = True) -> None:
        self.filter = CoarseFilter(buffer_size, n_blocks, pool, carry_over, refresh, metric, coarse, seed, stratify)
        self.weighting = weighting
        self.consume = consume

    def observe(self, chunk: Chunk, model: BlockModel) -> None:
        self.filter.observe(chunk, model)

    def select(self, batch_size: int, model: BlockModel, rng: np.random.Generator) -> Selection:
        if len(self.filter) == 0:
            raise RuntimeError("titan: select() called with an empty candidate buffer")
        sel = _cis_selection(self.filter.as_chunk(), model, batch_size, rng, self.weighting)
        if self.consume:
            self.filter.remove(np.unique(sel.ids))
        sel.info["buffer"] = float(len(self.filter))
        sel.info["coarse_forwards"] = float(self.filter.last_forwards)
        return sel

    def state_dict(self) -> dict[str, object]:
        return self.filter.state_dict()

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.filter.load_state_dict(state)


SELECTORS: dict[str, Callable[..., object]] = {
    "titan": TitanSelector,
    "cis": CISSelector,
    "rs": RandomSelector,
    "is": ImportanceSelector,
    "hl": lambda: ScoreSelector("hl", lambda loss, ent: loss),
    "ll": lambda: ScoreSelector("ll", lambda loss, ent: -loss),
    "ce": lambda: ScoreSelector("ce", lambda loss, ent: ent),
    "ocs": OCSSelector,
    "camel": CamelSelector,
}


SELECTOR_METHODS = ("observe", "select", "state_dict", "load_state_dict")


def selector_factory(name: str) -> Callable[..., StreamingSelectorT]:
    """The class (or factory) behind ``selection.method``: a built-in short name, an installed
    ``fedtitan.selectors`` entry point, or ``package.module:ClassName``; a plugin must
    implement :class:`~fedtitan.selection.base.StreamingSelector`."""
    factory = resolve(name, key="selection.method", group="fedtitan.selectors", builtins=SELECTORS)
    if name not in SELECTORS:
        if not callable(factory):
            raise ConfigError(f"selection.method: {name!r} is not a class or factory")
        require_methods(factory, SELECTOR_METHODS, "selection.method", name, "StreamingSelector")
    return factory


def info_keys(name: str) -> tuple[str, ...]:
    """The ``Selection.info`` names a selector reports to clients.csv (as ``info_NAME``): its
    class attribute ``info_keys``, the same for every client so Flower's aggregation sees one
    key set; numbers only."""
    keys = getattr(selector_factory(name), "info_keys", ())
    if isinstance(keys, str) or not all(isinstance(k, str) for k in keys):
        raise ConfigError(f"selection.method: {name!r}'s info_keys must be a tuple of names, got {keys!r}")
    return tuple(keys)


def build_selector(name: str, offered: dict[str, Any] | None = None, **options: Any) -> StreamingSelectorT:
    """Build a streaming selector by name. ``options`` go to its constructor as given; of the
    ``offered`` ones (the run's selection settings), those it accepts."""
    factory = selector_factory(name)
    try:
        selector = call_with_accepted(factory, offered or {}, options)
    except TypeError as exc:
        raise ConfigError(f"bad options for selector {name!r}: {exc}") from None
    if name not in SELECTORS:
        require_methods(selector, SELECTOR_METHODS, "selection.method", name, "StreamingSelector")
    return selector


StreamingSelectorT = TitanSelector | CISSelector | _ChunkSelector
