"""Built-in command ``mednns report RUN_DIR``: render the evaluation's results as a report.

Reads ``RUN_DIR/stages/evaluate/results.json`` (written by the ``evaluate`` stage) and writes
``report.md``, ``report.html`` (one self-contained page) and the figures into ``--out`` (default:
``report/`` beside ``results.json``); see :mod:`mednns.evaluation.report`. Nothing heavy is
imported until the command runs.
"""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console

import mednns


@mednns.hookimpl
def register_commands(cli):
    @cli.command("report")
    @click.argument("run_dir", type=click.Path(exists=True))
    @click.option("--out", "out_dir", type=click.Path(file_okay=False),
                  help="Output folder [default: report/ beside results.json].")
    def report_command(run_dir: str, out_dir: str | None) -> None:
        """Render an evaluation (RUN_DIR, its stages/evaluate folder or results.json) as markdown, figures and
        one self-contained HTML page."""
        from mednns.evaluation import load_results, overall_rich_table, render_report

        html_path = render_report(run_dir, out_dir)
        results = load_results(run_dir)
        Console(soft_wrap=False).print(overall_rich_table(results))
        click.echo(f"report: {html_path}")
        click.echo(f"markdown: {Path(html_path).with_name('report.md')}")
