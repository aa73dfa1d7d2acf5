"""Datasets: the contract every source implements and the tools built on it.

Public API for dataset plugins and for the stages that consume datasets.
"""

from mednns.data.base import ArrayDataset, MedicalDataset, SplitArrays, check_split
from mednns.data.info import SPLITS, DatasetInfo, Task

__all__ = [
    "SPLITS",
    "ArrayDataset",
    "DatasetInfo",
    "MedicalDataset",
    "SplitArrays",
    "Task",
    "check_split",
]
