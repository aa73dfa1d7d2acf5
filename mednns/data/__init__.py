"""Datasets: the contract every source implements and the tools built on it.

Public API for dataset plugins and for the stages that consume datasets.
Importing this package does not import torch or scipy; the functions that
need them import them when called.
"""

from mednns.data.base import ArrayDataset, MedicalDataset, SplitArrays, check_split
from mednns.data.info import SPLITS, DatasetInfo, Task
from mednns.data.metrics import balanced_accuracy, compute_metrics, logits_to_scores, majority_rate, roc_auc
from mednns.data.npz import NpzDataset, read_npz_headers
from mednns.data.resolve import resolve_dataset
from mednns.data.tensors import (
    LUMINANCE,
    channel_stats,
    dataset_stats,
    dataset_tensors,
    labels_to_tensor,
    make_loader,
    tensor_digest,
    to_tensor,
)

__all__ = [
    "LUMINANCE",
    "SPLITS",
    "ArrayDataset",
    "DatasetInfo",
    "MedicalDataset",
    "NpzDataset",
    "SplitArrays",
    "Task",
    "channel_stats",
    "check_split",
    "balanced_accuracy",
    "compute_metrics",
    "majority_rate",
    "dataset_stats",
    "dataset_tensors",
    "labels_to_tensor",
    "logits_to_scores",
    "make_loader",
    "read_npz_headers",
    "resolve_dataset",
    "roc_auc",
    "tensor_digest",
    "to_tensor",
]
