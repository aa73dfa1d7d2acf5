"""Ranking quality of one fold: fine-tune a seeded random sample of transfer candidates, then correlate
every ranking of them (each meta-space variant's order, each transfer score on the fine-tuning subset,
both combined, the source's own validation ACC) with their fine-tuned test ACC
(:mod:`mednns.evaluation.ranking` does the statistics)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from mednns.evaluation import ranking
from mednns.evaluation.leave_one_out import slug

if TYPE_CHECKING:
    from mednns.evaluation.leave_one_out import Fold
    from mednns.evaluation.settings import Condition


def ranking_quality(fold: Fold, condition: Condition) -> dict[str, Any]:
    """Fine-tune a seeded random sample of transfer candidates under ``condition`` and correlate
    every ranking with their test ACC (:mod:`mednns.evaluation.ranking`)."""
    from mednns.export import adapt_network
    from mednns.metaspace.retrieval import RankBy, predict_all, rank_key
    from mednns.transfer.reranking import TargetSample, candidate_outputs

    chosen = fold.settings.ranking_settings()
    seeds = ranking.sample_seeds(condition.seeds, chosen.seeds)  # equal-epochs conditions have every seed
    seed = seeds[0]
    sample = ranking.draw_sample(fold.transfer_rows("val_acc"), chosen.candidates, fold.target, chosen.draw)
    candidates = []
    for row in sample:
        candidate = fold.from_row(row, f"{row['space']} subnet of {row['dataset']} (zoo id {row['id']})")
        accs = [fold.train(candidate, s, condition, f"{fold.target} ranking sample {row['id']} seed {s}")
                ["history"][-1]["test_acc"] for s in seeds]
        candidates.append({"zoo_id": row["id"], "dataset": row["dataset"], "arch": row["arch"],
                           "source_val_acc": row["val_acc"], "test_acc": float(sum(accs) / len(accs)),
                           **({"test_accs": accs} if len(accs) > 1 else {})})
    values: dict[str, list[float]] = {}
    seen: set[str] = set()
    for variant in fold.settings.variant_list():
        identity = slug([variant.meta_space, variant.by])
        if identity in seen:
            continue
        seen.add(identity)
        predictions = predict_all(fold.meta_space(variant.meta_space), fold.dataset, manager=fold.run.manager,
                                  device=fold.run.device)
        key = rank_key(predictions.predicted, predictions.score, cast(RankBy, variant.by))
        position = {int(i): k for k, i in enumerate(predictions.table.ids)}
        values[variant.method(ranking.META)] = [float(key[position[c["zoo_id"]]]) for c in candidates]
    data, batch = fold.finetune_data(seed, condition), condition.batch_size
    size = min(batch, len(data.train_x))
    target_sample = TargetSample([data.train_x[i: i + size] for i in range(0, len(data.train_x) - size + 1, size)],
                                 data.train_x[: chosen.images], data.train_y[: chosen.images].numpy(),
                                 str(fold.dataset.info.task))
    scorers = {spec["name"]: fold.run.manager.create("transfer-scores", spec["name"], **spec["args"])
               for spec in chosen.score_specs()}
    for name in scorers:
        values[name] = []
    for row in sample:
        space, _ = fold.supernets(row["supernet"])
        network = space.extract(space.arch_from_json(row["arch"])).cpu()
        adapt_network(network, in_channels=fold.dataset.info.n_channels)  # the source head stays: LEEP reads it
        features, probabilities = candidate_outputs(network, target_sample, device=fold.run.device)
        for name, scorer in scorers.items():
            values[name].append(float(scorer.score(features, target_sample.y, target_sample.task,
                                                   source_probabilities=probabilities)))
    for name in scorers:
        values[f"{ranking.META}+{name}"] = ranking.rank_sum_key(values[ranking.META], values[name])
    values[ranking.SOURCE] = [c["source_val_acc"] for c in candidates]
    result = ranking.assess(candidates, values).to_dict()
    return {"condition": condition.id, "seed": seed, "seeds": list(seeds), "draw": chosen.draw, **result}
