"""Built-in command ``mednns export-model``: a fine-tuned model as ONNX or TorchScript, with the
preprocessing a deployment must repeat (:mod:`mednns.deploy`)."""

from __future__ import annotations

import click
from rich.console import Console
from rich.markup import escape

import mednns


@mednns.hookimpl
def register_commands(cli):
    @cli.command("export-model")
    @click.argument("model", type=click.Path(file_okay=False, exists=True))
    @click.option("--format", "fmt", type=click.Choice(["onnx", "torchscript"]), default="onnx", show_default=True)
    @click.option("--out", "out_dir", type=click.Path(file_okay=False),
                  help="Output folder [default: MODEL/deploy].")
    def export_model(model: str, fmt: str, out_dir: str | None) -> None:
        """Write a fine-tuned model (the folder 'mednns finetune' or 'mednns adapt' wrote) as model.onnx or
        model.pt, with preprocessing.json: channels, image size, normalization, labels, and the largest
        difference between the file's outputs and the PyTorch model's on a test batch."""
        from pathlib import Path

        from mednns.deploy import export_deployable, model_folder

        out = Path(out_dir) if out_dir else model_folder(model) / "deploy"
        record = export_deployable(model, out, fmt)  # type: ignore[arg-type]
        Console(soft_wrap=False).print(
            f"{escape(str(out / record['file']))}: input {record['input']['shape']}, "
            f"{len(record['labels'])} labels; outputs within {record['parity']['max_abs_difference']:.2g} of PyTorch's "
            f"({escape(str(out / 'preprocessing.json'))})")
