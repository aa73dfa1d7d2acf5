"""The plugin object behind the ``volumes`` entry point: registers the ``volume_slices`` dataset.

The factory is registered lazily (``mednns.lazy``): loading plugins imports only this module, and
:mod:`mednns_volumes.dataset` is imported when a config is validated or the dataset is built.
"""

from __future__ import annotations

from collections.abc import Callable

import mednns


@mednns.hookimpl
def register_datasets(register: Callable[..., None]) -> None:
    """Register the ``volume_slices`` dataset source.

    :param register: ``register(name, factory, description=...)``.
    """
    register("volume_slices", mednns.lazy("mednns_volumes.dataset:volume_slices"),
             description="3D volumes of a MedMNIST-layout .npz as 2.5D images (orthogonal slices or an "
                         "axial stack as channels; window, resize)")
