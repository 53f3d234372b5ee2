"""The CLI's structure: one module per command group, registered by cli/app.py without importing `app` back, and one
byte formatter (binary units) behind every size it prints."""

import ast
import importlib
import re
from pathlib import Path

import pytest
import typer

import embedkit
from embedkit._format import format_bytes
from embedkit.cli import main

app_module = importlib.import_module("embedkit.cli.app")  # `embedkit.cli.app` the attribute is the Typer app

CLI_DIR = Path(embedkit.__file__).parent / "cli"
COMMAND_FILES = sorted(p.stem for p in CLI_DIR.glob("*.py") if p.stem not in ("__init__", "app")
                       and not p.stem.startswith("_"))


@pytest.mark.parametrize("name", COMMAND_FILES)
def test_command_modules_do_not_import_app(name):
    tree = ast.parse((CLI_DIR / f"{name}.py").read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level >= 1:
            assert node.module != "app" and not (node.module is None and any(a.name == "app" for a in node.names)), (
                f"cli/{name}.py imports the typer app back (line {node.lineno}): expose register(app) instead")


def test_every_command_module_is_registered_once():
    registered = [m.__name__.rsplit(".", 1)[1] for m in app_module.COMMAND_MODULES]
    assert sorted(registered) == COMMAND_FILES and len(set(registered)) == len(registered)


def _commands_of(module_name: str) -> dict:
    """The click commands module ``module_name`` adds to a fresh app (besides a placeholder that keeps it a group)."""
    fresh = typer.Typer()
    fresh.command("placeholder")(lambda: None)
    importlib.import_module(f"embedkit.cli.{module_name}").register(fresh)
    commands = dict(typer.main.get_command(fresh).commands)
    del commands["placeholder"]
    return commands


def test_one_group_per_module():
    """merge and recipe have their own modules; cli/export.py is the `export` group and holds `onnx`."""
    assert set(_commands_of("merge")) == {"merge"}
    assert set(_commands_of("recipe")) == {"recipe"}
    export = _commands_of("export")
    assert set(export) == {"export"} and set(export["export"].commands) == {"onnx"}
    assert set(_commands_of("checkpoint")) == {"save", "convert", "slim"}


def test_the_real_app_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for cmd in ("save", "convert", "slim", "encode", "eval", "merge", "recipe", "inspect", "manifest", "verify",
                "keygen", "mine", "score-pairs", "parity", "spec", "finetune", "export"):
        assert re.search(rf"│ {re.escape(cmd)}\s", out), cmd
    assert main(["export", "--help"]) == 0
    assert "onnx" in capsys.readouterr().out


@pytest.mark.parametrize("n, text", [
    (0, "0 B"), (1, "1 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1536, "1.5 KiB"), (1024**2 - 1, "1.0 MiB"),
    (91_540_000, "87.3 MiB"), (3 * 1024**3, "3.0 GiB"), (5 * 1024**4, "5.0 TiB"), (2048 * 1024**4, "2048.0 TiB"),
    (-2048, "-2.0 KiB"),
])
def test_format_bytes_binary_units(n, text):
    assert format_bytes(n) == text


def test_one_byte_formatter():
    """No other module of embedkit's output side spells a size unit or divides by 1024 itself."""
    from embedkit.checkpoint import inspect

    assert inspect.format_bytes is format_bytes
    units = {"KB", "kB", "MB", "GB", "TB", "KiB", "MiB", "GiB", "TiB"}
    for path in [*CLI_DIR.glob("*.py"), *(CLI_DIR.parent / "checkpoint" / "inspect").glob("*.py")]:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        literals = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
        numbers = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, (int, float))
                   and not isinstance(n.value, bool)}
        assert not literals & units, f"{path.name} formats sizes itself: use embedkit._format.format_bytes"
        assert 1024 not in numbers, f"{path.name} formats sizes itself"  # (1e9 "B" in cli/inspect.py: parameters)


def test_save_prints_its_size_with_the_formatter(tiny_bert, tmp_path, capsys):
    dst = tmp_path / "saved"
    assert main(["save", str(tiny_bert), str(dst)]) == 0
    out = capsys.readouterr().out
    size = sum(f.stat().st_size for f in dst.rglob("*") if f.is_file())
    assert f", {format_bytes(size)}); pooling=" in out, out
