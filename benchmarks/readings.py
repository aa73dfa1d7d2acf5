"""What the benchmark scripts that read published evaluations share: read each folder's results,
turn it into a reading and its markdown, and write both (JSON and markdown) into one output folder."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable

from mednns.evaluation.report import load_results
from mednns.files import write_json


def publish(folders: list[Path], out: Path, stem: str, title: str, reading: Callable[[dict[str, Any]], Any],
            markdown: Callable[[str, Any], list[str]]) -> dict[str, Any]:
    """``reading(results)`` per published folder, written to ``out/<stem>.json`` and, under ``# title``,
    ``markdown(folder name, reading)`` to ``out/<stem>.md`` (also printed); returns the readings."""
    readings, lines = {}, [f"# {title}", ""]
    for folder in folders:
        readings[folder.name] = reading(load_results(folder))
        lines += markdown(folder.name, readings[folder.name])
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / f"{stem}.json", readings)
    (out / f"{stem}.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return readings


def main(doc: str | None, stem: str, title: str, reading: Callable[[dict[str, Any]], Any],
         markdown: Callable[[str, Any], list[str]]) -> None:
    """The command line of such a script: published folders, ``--out`` (default ``results/<stem>``)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("published", nargs="+", type=Path, help="published evaluation folders (with results.json.gz)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / stem)
    args = parser.parse_args()
    publish(args.published, args.out, stem, title, reading, markdown)
