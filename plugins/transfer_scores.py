"""Built-in plugin: the transferability scores ``logme``, ``knn``, ``ridge``, ``leep`` and ``nce``.

Registered through the ``register_transfer_scores`` hook exactly as a third-party score would be;
the scores are numpy code in :mod:`mednns.transfer.scores`, imported when first built.
"""

from collections.abc import Callable

import mednns

_MODULE = "mednns.transfer.scores"


@mednns.hookimpl
def register_transfer_scores(register: Callable[..., None]) -> None:
    """Register the built-in transferability scores.

    :param register: ``register(name, factory, description=...)``.
    """
    register("logme", mednns.lazy(f"{_MODULE}:LogME"),
             description="LogME: log evidence of a Bayesian linear model on the features (You et al., ICML 2021)")
    register("knn", mednns.lazy(f"{_MODULE}:KNNAccuracy"),
             description="leave-one-out k-nearest-neighbour accuracy on L2-normalized features")
    register("ridge", mednns.lazy(f"{_MODULE}:RidgeProbe"),
             description="cross-validated accuracy of a closed-form ridge probe on standardized features")
    register("leep", mednns.lazy(f"{_MODULE}:LEEP"),
             description="LEEP: log expected empirical prediction through the source head (Nguyen et al., 2020)")
    register("nce", mednns.lazy(f"{_MODULE}:NCE"),
             description="NCE: negative conditional entropy of the labels given source predictions (Tran et al., 2019)")
