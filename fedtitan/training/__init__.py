"""Local training regimes: streaming selection and static (pruned) epochs."""

from fedtitan.training.common import Proximal, evaluate, lr_at, make_optimizer, weighted_step
from fedtitan.training.static import StaticConfig, StaticResult, train_static, warmup_scores
from fedtitan.training.streaming import StepRecord, StreamingConfig, train_streaming

__all__ = [
    "Proximal", "StaticConfig", "StaticResult", "StepRecord", "StreamingConfig", "evaluate", "lr_at", "make_optimizer",
    "train_static", "train_streaming", "warmup_scores", "weighted_step",
]
