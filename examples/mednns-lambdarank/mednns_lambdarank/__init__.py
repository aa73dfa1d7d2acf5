"""mednns-lambdarank: a third-party mednns plugin with the ``lambdarank`` meta-space loss term.

LambdaRank weights each pairwise ranking mistake by the NDCG it costs, so the meta-space learns to get
the top of each dataset's model ranking right (see :mod:`mednns_lambdarank.loss`). The term is
registered by :mod:`mednns_lambdarank.plugin`; importing this package does not import torch.
"""

__version__ = "0.1.0"
