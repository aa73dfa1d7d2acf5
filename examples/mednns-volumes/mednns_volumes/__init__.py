"""mednns-volumes: a third-party mednns plugin that serves 3D volumes as 2.5D images.

The ``volume_slices`` dataset (registered by :mod:`mednns_volumes.plugin`) turns the volumes of a
MedMNIST-layout ``.npz`` (``adrenalmnist3d``, ``organmnist3d``, ...) into 2D multi-channel images that
every 2D search space can take: the central orthogonal slices, or a stack of axial slices, with an
optional intensity window and resize. Importing this package imports neither torch nor the data code.
"""

__version__ = "0.1.0"
