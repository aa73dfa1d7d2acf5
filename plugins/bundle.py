"""Built-in commands ``mednns bundle export|pull|info``: publish a trained meta-space with its zoo and
supernets, and fetch one to query (:mod:`mednns.bundle`)."""

from __future__ import annotations

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

import mednns


def sources_table(manifest: dict) -> Table:
    table = Table(title=f"bundle ({manifest['format']}, mednns {manifest['mednns_version']}, {manifest['created']})")
    for column in ("source", "modality", "task", "classes", "train / val / test", "models", "licence"):
        table.add_column(column)
    for s in manifest["sources"]:
        splits = s.get("splits") or {}
        table.add_row(escape(s["dataset"]), escape(str(s["modality"])), escape(str(s["task"])), str(s["classes"]),
                      " / ".join(f"{splits.get(k, '?'):,}" if isinstance(splits.get(k), int) else "?"
                                 for k in ("train", "val", "test")),
                      f"{s['models']:,}", escape(str(s["licence"])))
    return table


@mednns.hookimpl
def register_commands(cli):
    @cli.group("bundle")
    def bundle() -> None:
        """Publish and fetch bundles: a trained meta-space with its zoo and source supernets."""

    @bundle.command("export")
    @click.argument("run_dir", type=click.Path(file_okay=False, exists=True))
    @click.argument("out_dir", type=click.Path(file_okay=False))
    @click.option("--licence", "licences", multiple=True, metavar="DATASET=TEXT",
                  help="The licence of a source dataset, as known; repeatable.")
    def bundle_export(run_dir: str, out_dir: str, licences: tuple[str, ...]) -> None:
        """Pack RUN_DIR's meta-space, zoo and supernets into OUT_DIR, with a manifest of sha256s."""
        from mednns.bundle import export_bundle
        from mednns.errors import UsageError

        known = {}
        for item in licences:
            name, sep, text = item.partition("=")
            if not sep:
                raise UsageError(f"--licence {item!r} is not DATASET=TEXT")
            known[name] = text
        manifest = export_bundle(run_dir, out_dir, licences=known)
        console = Console(soft_wrap=False)
        console.print(sources_table(manifest))
        console.print(f"{len(manifest['files'])} files in {escape(out_dir)}")

    @bundle.command("pull")
    @click.argument("spec")
    def bundle_pull(spec: str) -> None:
        """Fetch a bundle into the cache and verify it; print its folder. SPEC: a folder, a .tar.gz/.zip
        archive, an https:// URL (#sha256=... checks the download) or hf://owner/name."""
        from mednns.bundle import pull_bundle

        click.echo(pull_bundle(spec))

    @bundle.command("info")
    @click.argument("spec")
    def bundle_info(spec: str) -> None:
        """Show a bundle's manifest (pulled and verified first)."""
        from mednns.bundle import pull_bundle, verify_bundle

        manifest = verify_bundle(pull_bundle(spec))
        console = Console(soft_wrap=False)
        console.print(sources_table(manifest))
        meta = manifest["meta_space"]
        console.print(f"meta-space: target {meta['target']}, dataset encoder {escape(str(meta['dataset_encoder']))}, "
                      f"model encoder {escape(str(meta['model_encoder']))}; {len(manifest['files'])} files verified")
