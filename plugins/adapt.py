"""Built-in command ``mednns adapt``: a user's dataset + a bundle → a fine-tuned, documented,
deployable model (:mod:`mednns.adapt`)."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape

import mednns
from mednns.transfer import rerank_from_options, rerank_options


@mednns.hookimpl
def register_commands(cli):
    @cli.command("adapt")
    @click.argument("data")
    @click.option("--bundle", "bundle", required=True, metavar="SPEC",
                  help="A bundle: folder, .tar.gz/.zip, https:// URL or hf://owner/name ('mednns bundle').")
    @click.option("--out", "out_dir", type=click.Path(file_okay=False),
                  help="Output folder [default: runs/adapt-<dataset>].")
    @click.option("--top-k", type=int, default=10, show_default=True, help="Candidates listed in the report.")
    @click.option("--max-params", type=int, help="Largest parameter count allowed.")
    @click.option("--max-macs", type=int, help="Largest MAC count allowed (per image).")
    @click.option("--max-latency-ms", type=float, help="Largest measured latency allowed (ms per image, this machine).")
    @rerank_options
    @click.option("--finetune-top", type=click.IntRange(min=1), default=1, show_default=True, metavar="K",
                  help="Fine-tune the first K candidates and keep the one with the best validation ACC "
                       "(K times the fine-tuning).")
    @click.option("--epochs", type=int, default=10, show_default=True, help="Fine-tuning epochs.")
    @click.option("--lr", type=float, default=0.05, show_default=True)
    @click.option("--batch-size", type=int, default=128, show_default=True)
    @click.option("--deploy", type=click.Choice(["onnx", "torchscript", "none"]), default="onnx", show_default=True,
                  help="Also write the fine-tuned model as this (with preprocessing.json).")
    @click.option("--seed", type=int, default=0, show_default=True)
    @click.option("--device", default="cpu", show_default=True)
    @click.option("--no-progress", is_flag=True)
    def adapt_command(data: str, bundle: str, out_dir: str | None, top_k: int, max_params: int | None,
                      max_macs: int | None, max_latency_ms: float | None, rerank_score: str | None, candidates: int,
                      rerank_images: int, combine: str, finetune_top: int, epochs: int, lr: float, batch_size: int,
                      deploy: str, seed: int, device: str, no_progress: bool) -> None:
        """Adapt a bundle's best model to DATA (an image folder, flat or train/val/test; an .npz file; or a
        registered dataset, NAME:key=value,...): query, export with inherited weights, fine-tune, report,
        model card and a deployable file, in one folder."""
        from mednns.adapt import adapt
        from mednns.data import resolve_dataset
        from mednns.distributed import refuse_torchrun
        from mednns.finetune import FinetuneConfig
        from mednns.manager import get_plugin_manager
        from mednns.metaspace import Constraints

        refuse_torchrun("mednns adapt", "run it as one process")
        manager = get_plugin_manager()
        rerank = rerank_from_options(manager, rerank_score, candidates, rerank_images, combine)
        dataset = resolve_dataset(manager, data)
        out = Path(out_dir) if out_dir else Path("runs") / f"adapt-{dataset.info.name}"
        console = Console(soft_wrap=False)
        summary = adapt(dataset, bundle, out, top_k=top_k,
                        constraints=Constraints(max_params, max_macs, max_latency_ms), rerank=rerank,
                        finetune_config=FinetuneConfig(epochs=epochs, lr=lr, batch_size=batch_size, seed=seed),
                        finetune_top=finetune_top,
                        deploy=deploy, device=device, manager=manager, console=console,  # type: ignore[arg-type]
                        progress=not no_progress)
        chosen, best = summary["chosen"], summary["best"]
        kept = (f" (rank {chosen['rank']}, the best validation ACC of {len(summary['tried'])} fine-tuned)"
                if summary["tried"] else "")
        console.print(f"[bold]{escape(summary['dataset'])}[/]: a subnet of the {escape(chosen['dataset'])} supernet "
                      f"({escape(chosen['space'])}, {chosen['params']:,} params){kept}, fine-tuned {epochs} epochs: "
                      f"test ACC {best['test_acc']:.4f}, AUC {best['test_auc']:.4f} "
                      f"(best epoch {summary['best_epoch']})")
        console.print(f"report: {escape(str(out / 'report.md'))}, model card: {escape(str(out / 'model_card.md'))}"
                      + (f", {escape(str(out / 'deploy' / summary['deploy']['file']))}" if summary["deploy"] else ""))
