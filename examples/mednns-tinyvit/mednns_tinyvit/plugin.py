"""The mednns plugin of this package (entry point ``tinyvit = mednns_tinyvit.plugin``).

It registers the search space ``tiny_vit`` through the public hook API. The supernet is registered
with :func:`mednns.lazy`, so loading plugins (``mednns list``, ``mednns plugins``) never imports
torch: :mod:`mednns_tinyvit.space` is imported when the space is built or its arguments are checked.
"""

import mednns


@mednns.hookimpl
def register_search_spaces(register):
    """Register ``tiny_vit``.

    :param register: mednns's ``register(name, factory, description=...)``.
    """
    register("tiny_vit", mednns.lazy("mednns_tinyvit.space:TinyViT"),
             description="Small vision transformer: elastic depth, MLP ratio, heads and embedding width "
                         "(mednns-tinyvit)")
