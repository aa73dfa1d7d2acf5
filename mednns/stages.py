"""The stage contract: one step of ``mednns run`` (``dataset_summary``, ``train_supernet``, ...).

Stages are registered through the ``register_stages`` hook, listed by name in a
config and run in order by :mod:`mednns.runner`. A stage reads what earlier
stages left in the run directory and writes its own files under
``run.stage_dir(name)``. The runner skips a stage whose recorded config
fingerprint is unchanged and whose :meth:`Stage.outputs` all exist.
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from mednns.runs import Run


class Stage(abc.ABC):
    """Base class of stages. The factory's arguments come from the stage's ``args`` in the config.

    Set :attr:`name` to the registered name; the runner uses it for the stage directory.
    """

    name: str = ""
    #: When the stage's config changes, keep its directory and run it again (instead of deleting
    #: it first): for stages whose files stay valid and that check them themselves, such as a
    #: model zoo keyed by supernet weights and evaluation protocol. ``--restart`` still discards.
    keeps_state: bool = False
    #: Arguments added after runs existed, each with the value that computes what the stage computed
    #: before it: left out of the fingerprint while they hold that value, so that a finished stage
    #: stays finished when mednns gains an option (``{"min_steps_per_epoch": 0}``).
    fingerprint_omits: dict[str, Any] = {}
    #: The stages whose files it reads (their fingerprints enter its own); ``None``: the stage
    #: listed before it. A stage that reads only the datasets says ``()``, so that adding or changing
    #: an unrelated stage before it does not make it run again.
    reads: tuple[str, ...] | None = None
    #: Its files take long to make again (trained supernets, a zoo): a config change never deletes
    #: them without ``--restart``; the runner says what it would discard and stops.
    expensive: bool = False
    #: Under torchrun, :meth:`run` is called on every rank (the stage splits its work by
    #: ``run.distributed`` and only rank 0 writes the outputs); otherwise rank 0 runs it alone while
    #: the other ranks wait. See :mod:`mednns.distributed`.
    distributed: bool = False

    def keeps_state_for(self, changed: list[str]) -> bool:
        """Whether the stage's files stay valid after these inputs changed (dotted keys of the stage's
        inputs: ``stage.args.seeds``, ``datasets.0.args.size``, ``seed``, ``previous`` for the stage
        before it). Default: :attr:`keeps_state`; override to keep files only for some changes."""
        return self.keeps_state

    def outputs(self, run: "Run") -> list[Path]:
        """Files whose existence (with an unchanged config) proves the stage complete."""
        return []

    def damaged_outputs(self, run: "Run") -> list[str]:
        """Problems of outputs that exist (a truncated weights file, a store that fails its integrity
        check), checked cheaply before a complete stage is skipped; default: none known."""
        return []

    @abc.abstractmethod
    def run(self, run: "Run") -> dict[str, Any]:
        """Do the work and return JSON-serializable results (stored in ``results.json``).

        Long stages should save progress under ``run.stage_dir(self.name)`` and resume
        from it: the runner calls ``run`` again after an interruption when the
        config is unchanged.
        """
