"""The plugin object behind the ``lambdarank`` entry point: registers the ``lambdarank`` loss term.

The term is plain torch code in :mod:`mednns_lambdarank.loss`, registered with ``mednns.lazy`` so that
loading plugins (``mednns list``, ``mednns plugins``) never imports torch.
"""

from __future__ import annotations

from collections.abc import Callable

import mednns


@mednns.hookimpl
def register_losses(register: Callable[..., None]) -> None:
    """Register the ``lambdarank`` loss term.

    :param register: ``register(name, factory, description=...)``.
    """
    register("lambdarank", mednns.lazy("mednns_lambdarank.loss:LambdaRankLoss"),
             description="LambdaRank: pairwise logistic loss weighted by |delta NDCG| of each swap "
                         "(mistakes at the top of a dataset's ranking cost most; NDCG@top_k)")
