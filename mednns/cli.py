"""The ``mednns`` command line: ``plugins``, ``list``, ``validate``, ``run`` and plugin-provided commands."""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any

import click
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.table import Table

import mednns
from mednns.errors import MednnsError, environment_error
from mednns.manager import get_plugin_manager, plugin_manager_pinned, set_plugin_manager
from mednns.registry import KIND_HOOKS

DEBUG_KEY = "mednns.debug"


def _set_debug(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.meta[DEBUG_KEY] = True


debug_option = click.option("--debug", is_flag=True, expose_value=False, callback=_set_debug, is_eager=True,
                            help="Show full tracebacks.")


def _error(message: str, hint: str | None = None) -> None:
    click.echo(click.style("Error: ", fg="red", bold=True) + message, err=True)
    if hint:
        click.echo(click.style("  hint: ", fg="yellow") + hint, err=True)


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    click.echo(f"mednns {mednns.__version__}")
    manager = get_plugin_manager()
    seen = set()
    for record in manager.records.values():
        if not record.builtin and record.distribution not in seen:
            seen.add(record.distribution)
            click.echo(f"  plugin {record.distribution} {record.version} ({record.status})")
    ctx.exit()


class MednnsCLI(click.Group):
    """Root group: fresh plugin manager per invocation, plugin commands, one-line errors."""

    builtin_commands: set[str] = set()

    def main(self, args: Any = None, *rest: Any, **kwargs: Any) -> Any:
        if not plugin_manager_pinned():
            set_plugin_manager(None)  # a fresh manager reads the environment of this invocation
        self._plugin_commands_for: object | None = None
        argv = list(sys.argv[1:] if args is None else args)
        try:
            return super().main(argv, *rest, **kwargs)
        except MednnsError as exc:  # raised while resolving commands, e.g. strict plugin loading
            if "--debug" in argv or os.environ.get("MEDNNS_DEBUG") == "1":
                raise
            _error(exc.message, exc.hint)
            sys.exit(exc.exit_code)

    def _load_plugin_commands(self) -> None:
        manager = get_plugin_manager()
        if getattr(self, "_plugin_commands_for", None) is manager:
            return
        self._plugin_commands_for = manager
        for name in list(self.commands):
            if name not in self.builtin_commands:
                del self.commands[name]
        for plugin, message in manager.notify("register_commands", cli=self):  # one broken plugin breaks none
            click.echo(click.style("Warning: ", fg="yellow") + f"plugin '{plugin}': {message}", err=True)

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._load_plugin_commands()
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        self._load_plugin_commands()
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        debug = lambda: ctx.meta.get(DEBUG_KEY) or os.environ.get("MEDNNS_DEBUG") == "1"  # noqa: E731
        try:
            if ctx.invoked_subcommand != "plugins":
                for record, message in get_plugin_manager().errors:
                    click.echo(click.style("Warning: ", fg="yellow") +
                               f"plugin {record.label}: {message} (see 'mednns plugins')", err=True)
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except MednnsError as exc:
            if debug():
                raise
            _error(exc.message, exc.hint)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            _error("interrupted")
            ctx.exit(130)
        except Exception as exc:
            if debug():
                raise
            known = environment_error(exc)
            if known is not None:
                _error(known.message, known.hint)
                ctx.exit(known.exit_code)
            _error(f"{type(exc).__name__}: {exc}", "this looks like a bug; rerun with --debug for the traceback")
            ctx.exit(1)


@click.group(cls=MednnsCLI, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
              help="Show the mednns and plugin versions and exit.")
@debug_option
def cli() -> None:
    """mednns: task-adaptive neural network search for medical images."""
    logger = logging.getLogger("mednns")
    if not any(isinstance(h, RichHandler) for h in logger.handlers):
        handler = RichHandler(console=Console(stderr=True), show_path=False, markup=False)
        handler.setLevel(logging.INFO)
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def _console() -> Console:
    return Console(soft_wrap=False)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@debug_option
def plugins(as_json: bool) -> None:
    """List plugins: name, version, hooks, components and load errors."""
    manager = get_plugin_manager()
    _ = manager.errors  # registration problems are recorded on first registry use
    records = list(manager.records.values())
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in records], indent=2))
        return
    table = Table(title="mednns plugins")
    for column in ("plugin", "distribution", "status", "hooks", "components"):
        table.add_column(column, overflow="fold")
    for r in records:
        components = "; ".join(
            f"{kind}: {', '.join(names) if len(names) <= 4 else ', '.join(names[:3]) + f', … ({len(names)})'}"
            for kind, names in r.components.items()
        )
        status = {"loaded": "[green]loaded[/]", "failed": "[red]failed[/]"}.get(r.status, r.status)
        table.add_row(escape(r.name), escape(f"{r.distribution} {r.version}".strip()), status,
                      ", ".join(r.hooks), escape(components))
    console = _console()
    console.print(table)
    for r in records:
        for error in r.errors:
            console.print(f"[red]error[/] {escape(r.label)}: {escape(error)}", soft_wrap=True)
        if (r.import_seconds or 0) > SLOW_IMPORT_SECONDS:
            console.print(f"[yellow]slow[/] {escape(r.label)}: its import takes {r.import_seconds:.1f} s, which "
                          f"every mednns command pays (import heavy modules inside the factories, or use "
                          f"mednns.lazy)", soft_wrap=True)


#: A plugin import slower than this is reported by ``mednns plugins``.
SLOW_IMPORT_SECONDS = 1.0


@cli.command("list")
@click.argument("kind", type=click.Choice(list(KIND_HOOKS)))
@click.argument("pattern", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@debug_option
def list_(kind: str, pattern: str | None, as_json: bool) -> None:
    """List registered components of KIND, optionally matching a glob PATTERN (e.g. '*mnist3d')."""
    components = get_plugin_manager().registry(kind).components(pattern)
    if as_json:
        click.echo(json.dumps([{"name": c.name, "description": c.description, "provider": c.provider}
                               for c in components], indent=2))
        return
    table = Table(title=f"{kind}" + (f" matching '{escape(pattern)}'" if pattern else ""))
    for column in ("name", "description", "plugin"):
        table.add_column(column, overflow="fold")
    for c in components:
        table.add_row(escape(c.name), escape(c.description), escape(c.provider))
    _console().print(table)
    if not components:
        click.echo(f"No {kind} match." + (" Run 'mednns plugins' to see what is loaded." if not pattern else ""),
                   err=True)


def _config_options(command: Any) -> Any:
    command = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                           help="Override a config value (dotted path, list indices allowed); repeatable.")(command)
    return click.argument("config", type=click.Path(dir_okay=False))(command)


@cli.command()
@_config_options
@click.option("--resolved", is_flag=True, help="Print the resolved config.")
@debug_option
def validate(config: str, overrides: tuple[str, ...], resolved: bool) -> None:
    """Check CONFIG (keys, types, component names, arguments, dataset files) without running anything."""
    from mednns.config import dump_yaml, load_config
    from mednns.runs import prepare_run

    manager = get_plugin_manager()
    run_config = load_config(manager, config, overrides)
    run = prepare_run(manager, run_config)
    if resolved:
        click.echo(dump_yaml(run_config.to_dict()), nl=False)
    click.echo(f"{config}: OK — {len(run.datasets)} dataset(s) [{', '.join(run.datasets)}], "
               f"stages: {', '.join(s['name'] for s, _ in run.stages)}; run directory {run.directory}")


@cli.command()
@_config_options
@click.option("--output-dir", type=click.Path(file_okay=False),
              help="Parent of the run directory (config: output_dir).")
@click.option("--seed", type=int, help="Seed for python, numpy, torch and data loaders (config: seed).")
@click.option("--device", help="auto, cpu, cuda or cuda:N (config: device).")
@click.option("--restart", is_flag=True, help="Discard partial state of stages interrupted under another config.")
@debug_option
def run(config: str, overrides: tuple[str, ...], output_dir: str | None, seed: int | None, device: str | None,
        restart: bool) -> None:
    """Run the stages of CONFIG; a rerun skips stages already complete for an unchanged config."""
    from mednns.config import load_config
    from mednns.runner import execute
    from mednns.runs import prepare_run

    extra = [f"{key}={value}" for key, value in (("output_dir", output_dir), ("seed", seed), ("device", device))
             if value is not None]
    manager = get_plugin_manager()
    run_config = load_config(manager, config, [*overrides, *extra])
    prepared = prepare_run(manager, run_config, console=_console())
    results = execute(prepared, restart=restart)
    if not prepared.distributed.is_main:
        return  # rank 0 reports
    table = Table(title=f"run {escape(str(run_config.name))}")
    for column in ("stage", "status", "seconds"):
        table.add_column(column)
    for name, record in results["stages"].items():
        table.add_row(escape(name), record["status"], f"{record['seconds'] or 0:.1f}")
    console = _console()
    console.print(table)
    console.print(f"results: {escape(str(prepared.directory / 'results.json'))}")


MednnsCLI.builtin_commands = set(cli.commands)


def main() -> None:
    """Console-script entry point. Under torchrun, an unexpected error is recorded for torchrun's
    agent, which then stops the other ranks and shows this rank's traceback."""
    if "TORCHELASTIC_RUN_ID" in os.environ:
        from torch.distributed.elastic.multiprocessing.errors import record

        record(cli.main)(prog_name="mednns")
    else:
        cli.main(prog_name="mednns")


if __name__ == "__main__":  # pragma: no cover
    main()
