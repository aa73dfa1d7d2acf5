"""The model zoo: evaluated subnets of trained supernets, in a SQLite store.

``plan`` decides which architectures (deterministic, deduplicated, shardable), ``evaluator``
measures them fast, ``store`` keeps the rows, ``build`` ties the three together and is resumable,
``report`` reads a store back (statistics, CSV / JSON-lines export).
"""

from mednns.zoo.build import BuildSettings, build_zoo
from mednns.zoo.evaluator import EvaluationData, SubnetEvaluator, ZooProtocol
from mednns.zoo.plan import Planned, Shard, plan_architectures, shard_plan
from mednns.zoo.report import export_zoo, zoo_stats
from mednns.zoo.store import SCHEMA_VERSION, MergeReport, ModelRow, ZooStore, merge_stores

__all__ = ["BuildSettings", "EvaluationData", "MergeReport", "ModelRow", "Planned", "SCHEMA_VERSION", "Shard",
           "SubnetEvaluator", "ZooProtocol", "ZooStore", "build_zoo", "export_zoo",
           "merge_stores", "plan_architectures", "shard_plan", "zoo_stats"]
