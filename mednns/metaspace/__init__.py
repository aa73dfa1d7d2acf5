"""The meta-space: datasets and zoo models embedded into one space (MedNNS, step 3).

Modules: :mod:`~mednns.metaspace.contracts` (the plugin contracts: dataset encoders, model
encoders, loss terms, the training batch), :mod:`~mednns.metaspace.features` (image sampling and
cached per-image features), :mod:`~mednns.metaspace.fid` (Fréchet distances between datasets),
:mod:`~mednns.metaspace.model` (the meta-space network: set encoder, predictor) and
:mod:`~mednns.metaspace.fit` (training on a zoo). Built-in encoders and loss terms live in
``mednns.plugins`` and register through the hooks like any third-party plugin.
"""
