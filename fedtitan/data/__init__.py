"""Datasets, partitions and streams."""

from fedtitan.data.dataset import Dataset
from fedtitan.data.loaders import LOADERS, load_dataset, load_npz, stratified_holdout
from fedtitan.data.partition import PARTITIONERS, partition, summary
from fedtitan.data.stream import Chunk, DataStream, NoiseSpec

__all__ = [
    "LOADERS", "PARTITIONERS", "Chunk", "DataStream", "Dataset", "NoiseSpec", "load_dataset",
    "load_npz", "partition", "stratified_holdout", "summary",
]
