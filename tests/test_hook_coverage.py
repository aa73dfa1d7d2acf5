"""Meta-tests of the plugin author's path: every hook is documented and tested, the guide's code holds.

For each hook specification in :mod:`mednns.hookspecs`: ``docs/writing-plugins.md`` has a section
``## <hook>`` with a Python example implementing it, and some test (under ``tests/`` or
``examples/*/tests/``) exercises it: a test file implements it with ``@mednns.hookimpl`` (a plugin
class or module used by its tests, or plugin source written into a fake distribution) or a
``test_*`` function calls it. The guide's Python blocks compile, its example package (the blocks
that start with ``# <path>``) loads through the plugin manager without importing torch, and it names
every environment variable the plugin manager reads.
"""

from __future__ import annotations

import ast
import configparser
import functools
import inspect
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mednns import hookspecs

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "writing-plugins.md"
GUIDE_NAME = "docs/writing-plugins.md"
MANAGER = ROOT / "mednns" / "manager.py"
THIS = Path(__file__).resolve()


def hook_names() -> list[str]:
    """Names of the functions of :mod:`mednns.hookspecs` marked with its ``hookspec`` decorator.

    :returns: sorted hook names.
    """
    marker = f"{hookspecs.PROJECT_NAME}_spec"  # the attribute pluggy's HookspecMarker sets
    return sorted(name for name, obj in vars(hookspecs).items() if inspect.isfunction(obj) and hasattr(obj, marker))


HOOKS = hook_names()


def guide_text() -> str:
    """The guide's text; fails the calling test when the file is missing."""
    assert GUIDE.is_file(), f"{GUIDE_NAME} is missing"
    return GUIDE.read_text(encoding="utf-8")


def sections(text: str) -> dict[str, str]:
    """``## `` headings of a markdown text (backticks stripped) mapped to their body, up to the next one.

    :param text: markdown.
    :returns: heading -> body.
    """
    found: dict[str, str] = {}
    parts = re.split(r"^## +(.+?) *$", text, flags=re.M)
    for heading, body in zip(parts[1::2], parts[2::2]):
        found[heading.strip().strip("`").strip()] = body
    return found


def code_blocks(text: str, language: str | None = None) -> list[tuple[str, str]]:
    """Fenced code blocks of a markdown text as ``(language, code)``.

    :param text: markdown.
    :param language: keep only blocks marked with this language.
    :returns: the blocks in order.
    """
    blocks = re.findall(r"^```([\w+-]*)[ \t]*\n(.*?)^```[ \t]*$", text, flags=re.M | re.S)
    return [(lang, code) for lang, code in blocks if language is None or lang == language]


def _is_hookimpl(decorator: ast.expr) -> bool:
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    return (isinstance(target, ast.Name) and target.id == "hookimpl") or (
        isinstance(target, ast.Attribute) and target.attr == "hookimpl")


def implemented_hooks(tree: ast.AST) -> set[str]:
    """Hooks that functions or methods decorated with ``hookimpl`` implement in ``tree``."""
    return {node.name for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in HOOKS
            and any(_is_hookimpl(d) for d in node.decorator_list)}


def exercised_hooks(path: Path) -> set[str]:
    """Hooks a test-folder file exercises.

    A hook counts when the file implements it with ``@hookimpl`` (a plugin class or module of the
    tests), when a string in it is plugin source implementing it (``@mednns.hookimpl`` and
    ``def <hook>(``: plugins written into fake distributions), or when a ``test_*`` function names it
    (e.g. calls ``manager.hooks.hook.<hook>(...)``).

    :param path: a Python file.
    :returns: the hook names.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = implemented_hooks(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and "hookimpl" in node.value:
            found |= {hook for hook in HOOKS if f"def {hook}(" in node.value}
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test_"):
            for inner in ast.walk(node):
                name = (inner.id if isinstance(inner, ast.Name) else
                        inner.attr if isinstance(inner, ast.Attribute) else None)
                if name in HOOKS:
                    found.add(name)
    return found


def files_of_tests() -> list[Path]:
    """Python files of ``tests/`` (this file excepted) and ``examples/*/tests/``."""
    files = list((ROOT / "tests").rglob("*.py")) + list(ROOT.glob("examples/*/tests/**/*.py"))
    return sorted(p for p in files if p.resolve() != THIS)


def test_hookspecs_are_found():
    assert len(HOOKS) >= 10, HOOKS
    assert {"register_search_spaces", "register_datasets", "register_stages", "run_finished"} <= set(HOOKS)


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_section_in_the_guide(hook):
    headings = sections(guide_text())
    assert hook in headings, f"hook {hook} has no section in {GUIDE_NAME} (add a heading '## {hook}')"


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_section_shows_a_plugin_implementing_it(hook):
    body = sections(guide_text()).get(hook)
    if body is None:
        pytest.fail(f"hook {hook} has no section in {GUIDE_NAME} (add a heading '## {hook}')")
    examples = [code for _, code in code_blocks(body, "python") if hook in implemented_hooks(ast.parse(code))]
    assert examples, (f"the section '## {hook}' of {GUIDE_NAME} has no ```python block with an "
                      f"'@mednns.hookimpl def {hook}(...)' example")


@functools.lru_cache(maxsize=1)
def hooks_by_test_file() -> dict[str, frozenset[str]]:
    """Every test-folder file (relative path) with the hooks it exercises (parsed once per session)."""
    return {p.relative_to(ROOT).as_posix(): frozenset(exercised_hooks(p)) for p in files_of_tests()}


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_exercised_by_a_test(hook):
    users = [path for path, hooks in hooks_by_test_file().items() if hook in hooks]
    assert users, (f"hook {hook} is exercised by no test: no file under tests/ or examples/*/tests/ implements it "
                   f"with @mednns.hookimpl or calls it in a test_ function")


def test_exercise_rule_sees_plugins_in_classes_strings_and_test_calls(tmp_path):
    sample = tmp_path / "test_sample.py"
    sample.write_text('''
import mednns

SOURCE = """
import mednns

@mednns.hookimpl
def register_losses(register):
    pass
"""

class Plugin:
    @mednns.hookimpl
    def register_datasets(self, register):
        pass

def helper():
    return "run_started"  # a name outside a test function does not count

def test_calls(manager):
    manager.hooks.hook.run_finished(run=None, results={}, error=None)
''')
    assert exercised_hooks(sample) == {"register_losses", "register_datasets", "run_finished"}


def test_every_python_block_of_the_guide_compiles():
    blocks = [code for _, code in code_blocks(guide_text(), "python")]
    plugins = [code for code in blocks if "hookimpl" in code]
    assert plugins, f"{GUIDE_NAME} shows no plugin (no ```python block uses mednns.hookimpl)"
    for i, code in enumerate(blocks):
        first = code.splitlines()[0] if code.strip() else "<empty>"
        try:
            compile(code, f"{GUIDE_NAME}, python block {i + 1} ({first})", "exec")
        except SyntaxError as exc:
            pytest.fail(f"python block {i + 1} of {GUIDE_NAME} ({first}) does not compile: {exc}")


def test_the_guide_names_every_environment_variable_the_plugin_manager_reads():
    names = set(re.findall(r"\bMEDNNS_[A-Z_]+\b", MANAGER.read_text(encoding="utf-8")))
    assert {"MEDNNS_LOAD_PLUGINS", "MEDNNS_DISABLE_PLUGINS", "MEDNNS_STRICT_PLUGINS", "MEDNNS_TRACE_PLUGINS"} <= names
    text = guide_text()
    missing = sorted(name for name in names if name not in text)
    assert not missing, f"{GUIDE_NAME} does not mention {', '.join(missing)} (read by mednns/manager.py)"


def example_files(text: str) -> dict[str, str]:
    """The guide's example package: code blocks whose first line is ``# <relative path>``.

    :param text: the guide.
    :returns: path -> file content; a path shown twice must have the same content each time.
    """
    files: dict[str, str] = {}
    for _, code in code_blocks(text):
        first, _, rest = code.partition("\n")
        match = re.fullmatch(r"# ([\w./-]+\.(?:py|cfg|toml))", first.strip())
        if match:
            path = match.group(1)
            assert files.get(path, rest) == rest, f"{GUIDE_NAME} shows two different versions of {path}"
            files[path] = rest
    return files


def test_the_guides_example_package_loads_without_importing_torch(tmp_path):
    files = example_files(guide_text())
    assert "setup.cfg" in files, f"{GUIDE_NAME} shows no '# setup.cfg' block for its example package"
    for path, content in files.items():
        target = tmp_path / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content, encoding="utf-8")
    parser = configparser.ConfigParser()
    parser.read_string(files["setup.cfg"])
    lines = parser.get("options.entry_points", "mednns", fallback="").strip().splitlines()
    entry_points = dict(line.replace(" ", "").split("=", 1) for line in lines if "=" in line)
    assert entry_points, "the example setup.cfg declares no entry point in the 'mednns' group"
    for module in entry_points.values():
        package = tmp_path / module.split(":")[0].split(".")[0]
        if package.is_dir():
            (package / "__init__.py").touch()  # the guide need not show an empty __init__.py
    code = (
        "import importlib, json, sys\n"
        "from mednns.testing import plugin_manager\n"
        f"targets = {json.dumps(entry_points)}\n"
        "plugins = []\n"
        "for name, target in targets.items():\n"
        "    module, _, attribute = target.partition(':')\n"
        "    plugin = importlib.import_module(module)\n"
        "    plugins.append(getattr(plugin, attribute) if attribute else plugin)\n"
        "manager = plugin_manager(*plugins)\n"
        "print(json.dumps({'torch': 'torch' in sys.modules,\n"
        "                  'hooks': sorted({h for r in manager.records.values() if not r.builtin\n"
        "                                   for h in r.hooks})}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"the example package of {GUIDE_NAME} does not load:\n{result.stderr[-3000:]}"
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["torch"] is False, f"loading the example plugins of {GUIDE_NAME} imports torch"
    assert set(report["hooks"]) == set(HOOKS), f"the example package implements {report['hooks']}, not every hook"


def test_the_public_kinds_are_every_kind_a_hook_registers():
    import mednns
    from mednns.registry import KIND_HOOKS

    assert mednns.KINDS == tuple(KIND_HOOKS) and "transfer-scores" in mednns.KINDS
    assert all(mednns.list_components(kind) is not None for kind in mednns.KINDS)
