"""``embedkit manifest`` / ``verify`` / ``keygen``: sha256 manifests of a model folder, signed with ed25519."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from .._format import format_bytes


def manifest_cmd(
    folder: Path = typer.Argument(..., help="The model folder to describe."),
    sign: Path | None = typer.Option(None, "--sign", metavar="KEYFILE",
                                     help="ed25519 private key (from `embedkit keygen`): also write a signature."),
    progress: bool | None = typer.Option(None, "--progress/--no-progress",
                                         help="Progress bar (default: on in a terminal for large folders)."),
) -> None:
    """Write FOLDER/embedkit-manifest.json: sha256 and size of every file (and, with --sign, a signature).

    Example: embedkit manifest ./bge-small-ft --sign release.key
    """
    from ..checkpoint.manifest import SIGNATURE_NAME, write_manifest

    path = write_manifest(folder, sign_key=sign, show_progress=progress)
    files = json.loads(path.read_text(encoding="utf-8"))["files"]
    total = sum(entry["size"] for entry in files.values())
    typer.echo(f"wrote {path}: {len(files)} files, {total} bytes ({format_bytes(total)})")
    if sign is not None:
        typer.echo(f"wrote {path.parent / SIGNATURE_NAME} (ed25519, verify with {sign}.pub)")


def verify_cmd(
    folder: Path = typer.Argument(..., help="The model folder to check against its embedkit-manifest.json."),
    public_key: Path | None = typer.Option(None, "--public-key", metavar="KEYFILE",
                                           help="ed25519 public key: also require a valid signature."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    progress: bool | None = typer.Option(None, "--progress/--no-progress",
                                         help="Progress bar (default: on in a terminal for large folders)."),
) -> None:
    """Check every file of FOLDER against its manifest (and signature); exit 1 naming each offending file.

    Example: embedkit verify ./bge-small-ft --public-key release.key.pub
    """
    from ..checkpoint.manifest import verify_manifest

    report = verify_manifest(folder, public_key=public_key, show_progress=progress)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    elif report.ok:
        typer.echo(f"OK: {folder}: {report.checked} files match the manifest ({report.signature_summary()})")
    else:
        for problem in report.problems:
            typer.echo(problem)
        if report.signature == "not checked" and report.signature_present:
            typer.echo(report.signature_summary())
        typer.secho(f"FAILED: {folder} does not match its manifest ({len(report.problems)} problem(s))",
                    fg="red", err=True)
    if not report.ok:
        raise typer.Exit(1)


def keygen_cmd(
    out: Path = typer.Argument(..., help="Where to write the private key; the public key goes to OUT.pub."),
) -> None:
    """Create an ed25519 key pair for signing manifests: OUT (private, mode 0600) and OUT.pub (public).

    Example: embedkit keygen release.key
    """
    from ..checkpoint.manifest import generate_keypair

    private, public = generate_keypair(out)
    typer.echo(f"private key: {private} (keep it secret; sign with `embedkit manifest DIR --sign {private}`)")
    typer.echo(f"public key:  {public} (share it; verify with `embedkit verify DIR --public-key {public}`)")


def register(app: typer.Typer) -> None:
    """Add ``embedkit manifest``, ``embedkit verify``, ``embedkit keygen`` to ``app``."""
    app.command("manifest")(manifest_cmd)
    app.command("verify")(verify_cmd)
    app.command("keygen")(keygen_cmd)
