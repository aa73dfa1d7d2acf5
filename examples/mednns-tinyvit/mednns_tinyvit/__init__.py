"""mednns-tinyvit: a third-party mednns search space, ``tiny_vit`` (an elastic small vision transformer).

Modules: :mod:`~mednns_tinyvit.plugin` (the hook implementation, the package's entry point; imports
no torch), :mod:`~mednns_tinyvit.space` (the supernet), :mod:`~mednns_tinyvit.network` (the
transformer computation and the extracted network), :mod:`~mednns_tinyvit.elastic` (sliced layers).
"""

__version__ = "0.1.0"
