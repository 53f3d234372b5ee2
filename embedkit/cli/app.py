"""The typer application, global options and error handling (message + hint, exit 2, no traceback)."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import typer

from .. import __version__
from ..errors import EmbedkitError
from . import (
    checkpoint,
    corpus,
    encode,
    export,
    manifest,
    merge,
    mine,
    parity,
    recipe,
    release,
    rerank,
    serve,
    spec,
    train,
)
from . import eval as eval_
from . import inspect as inspect_


def _click_modules() -> list:
    """The click ``exceptions`` modules typer raises from: its vendored copy (``typer._click``, typer >= 0.2x) and,
    for older typers built on it, the real click package. ``except click.ClickException`` alone misses the first."""
    modules = []
    try:
        import typer._click.exceptions as vendored
    except ImportError:
        pass
    else:
        modules.append(vendored)
    try:
        import click.exceptions as real
    except ImportError:
        pass
    else:
        modules.append(real)
    return modules


_CLICK = _click_modules()
_CLICK_ERRORS = tuple(m.ClickException for m in _CLICK)
_NO_ARGS = tuple(m.NoArgsIsHelpError for m in _CLICK if hasattr(m, "NoArgsIsHelpError"))
_EXITS = tuple({typer.Exit, *(m.Exit for m in _CLICK if hasattr(m, "Exit"))})
_ABORTS = tuple({typer.Abort, *(m.Abort for m in _CLICK if hasattr(m, "Abort"))})
# user mistakes about paths: reported as `error:` naming the path, not as a traceback
_PATH_ERRORS = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError)
THIRD_PARTY_LOGGERS = ("faiss", "transformers", "huggingface_hub", "onnxruntime", "sentence_transformers", "urllib3")

app = typer.Typer(
    name="embedkit",
    help="Encode, rerank, fine-tune, evaluate, convert, verify, release and serve BGE-style text-embedding models. "
    "Offline: local folders only.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_state = {"debug": bool(os.environ.get("EMBEDKIT_DEBUG")), "verbose": bool(os.environ.get("EMBEDKIT_VERBOSE"))}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"embedkit {__version__}")
        raise typer.Exit()


# one module per command group, each adding its own commands; this order is the order of `embedkit --help`
COMMAND_MODULES = (checkpoint, encode, corpus, rerank, eval_, merge, recipe, inspect_, manifest, mine, export, parity,
                   spec, train, release, serve)
for _module in COMMAND_MODULES:
    _module.register(app)


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks and debug logs (implies --verbose)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Also show the logs and progress bars of "
                                 "transformers, huggingface_hub, faiss and onnxruntime."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only warnings and errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """embedkit: one embedding recipe, identical vectors everywhere."""
    _state["debug"] = _state["debug"] or debug
    _state["verbose"] = _state["verbose"] or verbose or _state["debug"]
    if _state["verbose"]:
        os.environ["EMBEDKIT_VERBOSE"] = "1"  # the library keeps transformers' loading bar too
    level = logging.DEBUG if _state["debug"] else (logging.WARNING if quiet else logging.INFO)
    logging.basicConfig(level=level, format="%(levelname)s: %(message)s", stream=sys.stderr)
    logging.getLogger("embedkit").setLevel(level)
    _offline_env()
    if not _state["verbose"]:
        quiet_third_party()


def _offline_env() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def quiet_third_party() -> None:
    """Warnings and errors only from the libraries under embedkit, and none of their progress bars.

    Environment variables cover libraries imported later; those already imported are told directly.
    """
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("ORT_LOGGING_LEVEL", "3")
    for name in THIRD_PARTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING if name != "transformers" else logging.ERROR)
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()


def _tidy_help(command: Any) -> Any:
    """Make every command's help read alike: positional arguments as ``SRC DST`` (not ``{src} {dst}``) in the usage
    line and the argument table, and no ``<bool>`` type column for on/off flags. Returns ``command``."""
    import types

    for param in getattr(command, "params", []):
        if getattr(param, "param_type_name", "") == "argument":
            param.metavar = param.metavar or param.name.upper()
            required = param.required
            param._usage_display_name = types.MethodType(
                lambda self, req=required: self.metavar if req else f"[{self.metavar}]", param)
        elif getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    get_help_option = command.get_help_option

    def _help_option(ctx: Any) -> Any:  # click makes --help lazily: no <bool> for it either
        option = get_help_option(ctx)
        if option is not None and option.metavar is None:
            option.metavar = ""
        return option

    command.get_help_option = _help_option
    for sub in getattr(command, "commands", {}).values():
        _tidy_help(sub)
    return command


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit status.

    Usage errors (unknown command or option, missing or malformed value) and embedkit's own errors print as
    ``error: ...`` / ``hint: ...`` and return 2; a missing or unreadable path the user named, too. Anything else is a
    bug in embedkit and propagates with its traceback.
    """
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        rc = _tidy_help(typer.main.get_command(app)).main(args=args, prog_name="embedkit", standalone_mode=False)
        return rc if isinstance(rc, int) else 0
    except _EXITS as exc:
        return int(exc.exit_code)
    except _NO_ARGS as exc:  # `embedkit` alone: the help, as click does
        exc.show()
        return 2
    except _CLICK_ERRORS as exc:
        _error(exc.format_message(), _usage_hint(exc))
        return 2
    except _ABORTS + (KeyboardInterrupt,):
        typer.echo("aborted", err=True)
        return 130
    except EmbedkitError as exc:
        if _state["debug"]:
            raise
        flags = _command_flags(args)
        _error(_in_flags(exc.message, exc.param, flags, args), _in_flags(exc.hint, exc.param, flags, args))
        return 2
    except _PATH_ERRORS as exc:
        if _state["debug"] or exc.filename is None:
            raise
        _error(f"{exc.strerror or type(exc).__name__}: {exc.filename}", "check the path (run with --debug for the "
               "full traceback)")
        return 2


def _error(message: str, hint: str | None) -> None:
    typer.secho(f"error: {message}", fg="red", err=True)
    if hint:
        typer.echo(f"hint: {hint}", err=True)


def _usage_hint(exc: Exception) -> str:
    """``run 'embedkit CMD --help'`` for the command the usage error is about."""
    ctx = getattr(exc, "ctx", None)
    path = getattr(ctx, "command_path", None) or "embedkit"
    return f"run '{path} --help'"


def _command_flags(args: list[str]) -> dict[str, str]:
    """Python parameter name -> its long flag (``max_length`` -> ``--max-length``) for the command in ``args``."""
    try:
        group = typer.main.get_command(app)
        name = next((a for a in args if not a.startswith("-")), None)
        command = group.commands.get(name) if name else None  # type: ignore[attr-defined]
        # `embedkit export onnx ...`: a sub-group
        if command is not None and hasattr(command, "commands"):
            rest = args[args.index(name) + 1:]
            sub = next((a for a in rest if not a.startswith("-")), None)
            command = command.commands.get(sub) if sub else None
    except Exception:  # naming flags is a nicety; never let it hide the error itself
        return {}
    if command is None:
        return {}
    flags = {}
    for param in command.params:
        longs = [o for o in getattr(param, "opts", []) if o.startswith("--")]
        if param.name and longs and getattr(param, "param_type_name", "") == "option":
            flags[param.name] = longs[0]
    return flags


def _in_flags(text: str | None, param: str | None, flags: dict[str, str], args: list[str]) -> str | None:
    """Say ``--max-length 512`` where the library says ``max_length=512``.

    ``param`` (the spec field or argument the error is about, e.g. ``query_max_length``) maps to the command's flag
    for it, or for the same field without its ``query_`` / ``passage_`` prefix; it is rewritten in the message only
    when the user passed that flag (otherwise the value came from the model folder and the field name is the truth).
    """
    import re

    if not text:
        return text
    names = dict(flags)
    if param:
        base = re.sub(r"^(query|passage)_", "", param)
        flag = flags.get(param) or flags.get(base)
        given = flag is not None and any(a == flag or a.startswith(flag + "=") for a in args)
        if given:
            names[param] = flag
    for name in sorted(names, key=len, reverse=True):
        text = re.sub(rf"(?<![\w-]){re.escape(name)}=", names[name] + " ", text)
    return text


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
