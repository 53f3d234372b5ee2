"""The typer application, global options and error handling (message + hint, exit 2, no traceback)."""

from __future__ import annotations

import logging
import os
import sys

import click
import typer

from .. import __version__
from ..errors import EmbedkitError

app = typer.Typer(
    name="embedkit",
    help="Encode, convert, verify and serve BGE-style text-embedding models. Offline: local folders only.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_state = {"debug": bool(os.environ.get("EMBEDKIT_DEBUG"))}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"embedkit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks and debug logs."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only warnings and errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """embedkit: one embedding recipe, identical vectors everywhere."""
    _state["debug"] = _state["debug"] or debug
    level = logging.DEBUG if _state["debug"] else (logging.WARNING if quiet else logging.INFO)
    logging.basicConfig(level=level, format="%(levelname)s: %(message)s", stream=sys.stderr)
    logging.getLogger("embedkit").setLevel(level)
    if not _state["debug"]:
        _quiet_transformers()


def _quiet_transformers() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def _register() -> None:
    # each module registers its commands on `app`
    from . import checkpoint, encode, eval, export, inspect, manifest, mine, onnx, parity, spec, train  # noqa: F401


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; library errors print as ``error: ...`` / ``hint: ...`` and exit 2."""
    _register()
    try:
        rc = app(args=argv, prog_name="embedkit", standalone_mode=False)
        return rc if isinstance(rc, int) else 0
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return 2
    except (click.exceptions.Abort, KeyboardInterrupt):
        typer.echo("aborted", err=True)
        return 130
    except (EmbedkitError, TypeError, ValueError, OSError) as exc:
        if _state["debug"]:
            raise
        message = exc.message if isinstance(exc, EmbedkitError) else f"{type(exc).__name__}: {exc}"
        typer.secho(f"error: {message}", fg="red", err=True)
        hint = getattr(exc, "hint", None)
        if hint:
            typer.echo(f"hint: {hint}", err=True)
        if not isinstance(exc, EmbedkitError):
            typer.echo("hint: run with --debug for the full traceback", err=True)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
