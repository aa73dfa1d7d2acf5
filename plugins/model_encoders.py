"""Built-in plugin: the model encoders ``arch``, ``functional`` and ``arch_functional``.

Registered through the model-encoder hook exactly as a third-party encoder would be; the
encoders are torch modules in :mod:`mednns.metaspace.model_encoders`, imported when first built
(``mednns.lazy``) so that loading plugins never imports torch.
"""

from typing import Callable

import mednns


@mednns.hookimpl
def register_model_encoders(register: Callable[..., None]) -> None:
    """Register the ``arch``, ``functional`` and ``arch_functional`` model encoders."""
    register("arch", mednns.lazy("mednns.metaspace.model_encoders:ArchEncoder"),
             description="architecture encoding (+ log params/MACs) through one MLP per search space")
    register("functional", mednns.lazy("mednns.metaspace.model_encoders:FunctionalEncoder"),
             description="width-independent functional signature (penultimate-feature similarity on a probe batch) "
                         "+ MLP")
    register("arch_functional", mednns.lazy("mednns.metaspace.model_encoders:ArchFunctionalEncoder"),
             description="arch and functional embeddings concatenated and mixed by a linear layer")
