"""The hooks a mednns plugin can implement.

A plugin is any importable object (usually a module) exposed through the
``mednns`` entry-point group. Its hook implementations are functions named like
the specifications below and decorated with :data:`mednns.hookimpl`::

    import mednns

    @mednns.hookimpl
    def register_datasets(register):
        register("my_scans", MyScans, description="Ultrasound scans from our clinic")

Every ``register_*`` hook receives a ``register`` callable with the signature
``register(name: str, factory: Callable[..., T], *, description: str) -> None``.
``factory(**args)`` is called with the ``args`` mapping of a config component
``{name: ..., args: {...}}``; its signature (names, defaults and type
annotations) is what mednns validates those args against, so annotate it.
Names are global per kind: a second plugin registering a taken name is an error
that names both providers.

The registration hooks are called once per plugin manager, right after all
plugins are loaded, in a deterministic order (built-ins first, then third-party
plugins sorted by distribution and entry-point name).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Protocol

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    import click

    from mednns.runs import Run

PROJECT_NAME = "mednns"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


class Register(Protocol):
    """The callable every ``register_*`` hook receives."""

    def __call__(self, name: str, factory: Callable[..., Any], *, description: str) -> None: ...


@hookspec
def register_search_spaces(register: Register) -> None:
    """Register supernet search spaces (kind ``search-spaces``).

    :param register: call ``register(name, factory, description=...)`` once per space.
    :returns: nothing; results flow through ``register``.

    ``factory(**args)`` returns the supernet: a :class:`mednns.supernets.Supernet`
    (an ``nn.Module`` with ``sample``, ``largest``, ``smallest``, ``set_active``,
    ``extract``, ``encode``, ``cost``, ``arch_to_json`` ...). It must accept
    ``in_channels`` and ``num_classes``, which stages fill in from the dataset.
    Register heavy classes with :func:`mednns.lazy` to keep the CLI fast.
    Called once per plugin manager, after loading.
    """


@hookspec
def register_datasets(register: Register) -> None:
    """Register dataset sources (kind ``datasets``).

    :param register: call ``register(name, factory, description=...)`` once per source.
    :returns: nothing; results flow through ``register``.

    ``factory(**args)`` returns a :class:`mednns.data.MedicalDataset`. It should be
    cheap (check that files exist, read metadata) and defer loading pixels to
    ``MedicalDataset.load_split``, because ``mednns validate`` calls it.
    Called once per plugin manager, after loading.
    """


@hookspec
def register_dataset_encoders(register: Register) -> None:
    """Register dataset encoders (kind ``dataset-encoders``).

    :param register: call ``register(name, factory, description=...)`` once per encoder.
    :returns: nothing; results flow through ``register``.

    ``factory(**args)`` returns an encoder that maps a sample of a dataset's
    training images to per-image features and a dataset embedding.
    Called once per plugin manager, after loading.
    """


@hookspec
def register_model_encoders(register: Register) -> None:
    """Register model encoders (kind ``model-encoders``).

    :param register: call ``register(name, factory, description=...)`` once per encoder.
    :returns: nothing; results flow through ``register``.

    ``factory(**args)`` returns an encoder that embeds zoo models (architecture
    and/or functional encodings) into the meta-space.
    Called once per plugin manager, after loading.
    """


@hookspec
def register_losses(register: Register) -> None:
    """Register meta-space loss terms (kind ``losses``).

    :param register: call ``register(name, factory, description=...)`` once per term.
    :returns: nothing; results flow through ``register``.

    ``factory(**args)`` returns a loss term; the meta-space combines terms with
    the weights given in the config.
    Called once per plugin manager, after loading.
    """


@hookspec
def register_transfer_scores(register: Register) -> None:
    """Register transferability scores (kind ``transfer-scores``).

    :param register: call ``register(name, factory, description=...)`` once per score.
    :returns: nothing; results flow through ``register``.

    ``factory(**args)`` returns a :class:`mednns.transfer.scores.TransferScore`:
    ``score(features, labels, task, *, source_probabilities=None) -> float``,
    higher for a pretrained network that should transfer better to a labelled
    target sample, judged from its penultimate features (and, when it sets
    ``needs_source_probabilities``, its source head's probabilities).
    Called once per plugin manager, after loading.
    """


@hookspec
def register_stages(register: Register) -> None:
    """Register run stages (kind ``stages``) that ``mednns run`` can execute.

    :param register: call ``register(name, factory, description=...)`` once per stage.
    :returns: nothing; results flow through ``register``.

    ``factory(**args)`` returns a :class:`mednns.stages.Stage`: an object with
    ``outputs(run) -> list[pathlib.Path]`` (files that prove the stage complete)
    and ``run(run) -> dict`` (JSON-serializable results, stored in
    ``results.json``). A config lists stages by name, in order.
    Called once per plugin manager, after loading.
    """


@hookspec
def register_commands(cli: "click.Group") -> None:
    """Add commands to the ``mednns`` command line.

    :param cli: the root :class:`click.Group`; call ``cli.add_command(...)`` or
        decorate functions with ``@cli.command()``.
    :returns: nothing.

    Called once when the CLI starts, after plugins are loaded.
    """


@hookspec
def run_started(run: "Run") -> None:
    """Observe the start of a run, after validation and before the first stage.

    :param run: the :class:`mednns.runs.Run` (directory, resolved config, datasets).
    :returns: nothing. An exception aborts the run; the error names the plugin.
    """


@hookspec
def stage_finished(run: "Run", stage: str, results: dict[str, Any], skipped: bool) -> None:
    """Observe the end of one stage.

    :param run: the :class:`mednns.runs.Run`.
    :param stage: the stage's registered name.
    :param results: what the stage returned (or the stored results when skipped).
    :param skipped: ``True`` when the stage was complete for an unchanged config.
    :returns: nothing. An exception is logged as a warning naming the plugin; the run goes on.
    """


@hookspec
def run_finished(run: "Run", results: dict[str, Any], error: BaseException | None) -> None:
    """Observe the end of a run, successful or not.

    :param run: the :class:`mednns.runs.Run`.
    :param results: the content of ``results.json``.
    :param error: the exception that ended the run, or ``None`` on success.
    :returns: nothing. An exception is logged as a warning naming the plugin.
    """
