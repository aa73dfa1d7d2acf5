"""The re-ranking options of the commands that query a meta-space (``mednns query``, ``mednns adapt``).

Click only at import (plugins load without torch); the settings are built when the command runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import click

if TYPE_CHECKING:  # pragma: no cover
    from mednns.registry import ComponentSource
    from mednns.transfer.reranking import RerankSettings


def rerank_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add ``--rerank NAME``, ``--candidates``, ``--rerank-images`` and ``--combine`` to a command; it
    receives them as ``rerank_score``, ``candidates``, ``rerank_images`` and ``combine``."""
    for option in reversed([
        click.option("--rerank", "rerank_score", metavar="NAME",
                     help="Re-rank the top candidates on the dataset's training images with this transfer score "
                          "(mednns list transfer-scores)."),
        click.option("--candidates", type=int, default=20, show_default=True, help="Candidates --rerank scores."),
        click.option("--rerank-images", type=int, default=500, show_default=True,
                     help="Labelled training images --rerank reads."),
        click.option("--combine", type=click.Choice(["score", "rank_sum", "guarded"]), default="score",
                     show_default=True,
                     help="Final order: the transfer score's; the mean of the meta-space and score ranks; or "
                          "the score's only if its first beats the meta-space's first significantly "
                          "(paired over the images, family-wise level 0.05)."),
    ]):
        command = option(command)
    return command


def rerank_from_options(manager: ComponentSource, rerank_score: str | None, candidates: int, rerank_images: int,
                        combine: str) -> RerankSettings | None:
    """The :class:`~mednns.transfer.reranking.RerankSettings` of :func:`rerank_options`' values
    (``None`` without ``--rerank``); an unknown score fails here, before any work."""
    from mednns.transfer.reranking import RerankSettings

    if not rerank_score:
        return None
    manager.create("transfer-scores", rerank_score)
    return RerankSettings({"name": rerank_score, "args": {}}, candidates, rerank_images,
                          combine=combine)  # type: ignore[arg-type]
