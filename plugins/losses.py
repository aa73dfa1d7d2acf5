"""Built-in plugin: the meta-space loss terms ``performance``, ``rank``, ``fid`` and ``contrastive``.

Registered through the ``register_losses`` hook exactly as a third-party term would be. The terms
are plain torch code in :mod:`mednns.metaspace.losses`, imported when first built or validated
(``mednns.lazy``), so loading plugins never imports torch.
"""

from collections.abc import Callable

import mednns

_MODULE = "mednns.metaspace.losses"


@mednns.hookimpl
def register_losses(register: Callable[..., None]) -> None:
    """Register the built-in meta-space loss terms.

    :param register: ``register(name, factory, description=...)``.
    """
    register("performance", mednns.lazy(f"{_MODULE}:PerformanceLoss"),
             description="predicted metric vs measured metric over present pairs (mse or huber)")
    register("rank", mednns.lazy(f"{_MODULE}:RankLoss"),
             description="rank each dataset's models by score or prediction as by the metric "
                         "(RankNet pairwise or ListNet)")
    register("fid", mednns.lazy(f"{_MODULE}:FIDLoss"),
             description="distances between dataset embeddings follow the normalized Frechet distances "
                         "(cosine or euclidean)")
    register("contrastive", mednns.lazy(f"{_MODULE}:ContrastiveLoss"),
             description="TANS-style InfoNCE: a dataset near its best models, away from other datasets' "
                         "and its worst models")
