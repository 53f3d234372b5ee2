"""ed25519 signing of manifests: key pairs, reading keys, signing bytes and checking a detached signature.

``embedkit-manifest.sig`` is a detached ed25519 signature of the manifest's exact bytes, base64 text: any ed25519
implementation (e.g. ``openssl pkeyutl -verify -rawin``) checks it without embedkit.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
from pathlib import Path
from typing import Any

from .._io import atomic_write
from ..errors import CheckpointError

logger = logging.getLogger("embedkit")

KEYGEN_HINT = "create a key pair with `embedkit keygen KEYFILE` (writes KEYFILE and KEYFILE.pub)"
_KEY_KINDS = ("private", "public")


def generate_keypair(out: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Create an ed25519 key pair: private key PEM (PKCS8, unencrypted, mode 0600) at ``out``, public key PEM at
    ``out + ".pub"``. Refuses to overwrite either file. Returns ``(private_path, public_path)``.

    Example:
        >>> generate_keypair("release.key")
        (PosixPath('release.key'), PosixPath('release.key.pub'))
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private_path = Path(out)
    public_path = Path(f"{private_path}.pub")
    for p in (private_path, public_path):
        if p.exists():
            raise CheckpointError(f"{p} already exists; not overwriting a key",
                                  hint="choose another path, or delete the old key pair first if you really mean it")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    with atomic_write(private_path, "wb") as fh:  # created 0600 (mkstemp): never readable by others
        fh.write(private_pem)
    os.chmod(private_path, 0o600)
    with atomic_write(public_path, "wb") as fh:
        fh.write(public_pem)
    os.chmod(public_path, 0o644)
    logger.debug("wrote %s (private, keep it secret) and %s (public)", private_path, public_path)
    return private_path, public_path


def load_private_key(path: str | os.PathLike[str]) -> Any:
    """Read an ed25519 private key (PEM PKCS8 as written by :func:`generate_keypair`, or OpenSSH format).

    Raises :class:`CheckpointError` naming the file when it is missing, encrypted, not a key, or not ed25519.

    Example:
        >>> key = load_private_key("release.key")
    """
    return load_key(path, "private")


def load_public_key(path: str | os.PathLike[str]) -> Any:
    """Read an ed25519 public key (PEM as written by :func:`generate_keypair`, or an ``ssh-ed25519`` line).

    Raises :class:`CheckpointError` naming the file when it is missing, not a public key, or not ed25519.

    Example:
        >>> key = load_public_key("release.key.pub")
    """
    return load_key(path, "public")


def load_key(path: str | os.PathLike[str], kind: str) -> Any:
    """The one key loader: an ed25519 ``kind`` (``"private"`` or ``"public"``) key from ``path``, PEM or OpenSSH.

    Raises :class:`CheckpointError` naming the file when it is missing, too large, encrypted (private), the other
    kind of key, not a key, or a key of another algorithm.
    """
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

    if kind not in _KEY_KINDS:
        raise ValueError(f"kind must be one of {_KEY_KINDS}, got {kind!r}")
    path = Path(path)
    data = _read_key_file(path, kind)
    try:
        key = _parse_key(data, kind)
    except TypeError:
        if kind != "private":
            raise
        raise CheckpointError(f"{path} is an encrypted private key; embedkit needs an unencrypted one",
                              hint=KEYGEN_HINT) from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise _unusable_key(path, data, kind, exc) from None
    if not isinstance(key, Ed25519PrivateKey if kind == "private" else Ed25519PublicKey):
        raise CheckpointError(f"{path} holds a {_key_kind(key)} key; manifests are signed with ed25519 keys only",
                              hint=KEYGEN_HINT)
    return key


def _parse_key(data: bytes, kind: str) -> Any:
    """``data`` through cryptography's OpenSSH or PEM loader for ``kind`` keys (raises what they raise)."""
    from cryptography.hazmat.primitives import serialization

    if kind == "private":
        if data.lstrip().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----"):
            return serialization.load_ssh_private_key(data, password=None)
        return serialization.load_pem_private_key(data, password=None)
    if data.lstrip().startswith(b"ssh-"):
        return serialization.load_ssh_public_key(data.strip())
    return serialization.load_pem_public_key(data)


def _unusable_key(path: Path, data: bytes, kind: str, exc: BaseException) -> CheckpointError:
    """The error for key bytes the loader refused: says when it is the other kind of key."""
    if kind == "private":
        what = "a public key, not a private key" if b"PUBLIC KEY" in data or data.startswith(b"ssh-") \
            else "not a PEM private key"
        return CheckpointError(f"{path} is {what} ({_first_line(exc)})", hint=KEYGEN_HINT)
    if b"PRIVATE KEY" in data:
        return CheckpointError(f"{path} is a private key; verify with the public key",
                               hint=f"pass {path}.pub (written next to it by `embedkit keygen`), and keep the "
                               "private key out of the places you verify from")
    return CheckpointError(f"{path} is not a PEM public key ({_first_line(exc)})", hint=KEYGEN_HINT)


def sign(data: bytes, key: Any) -> str:
    """The detached signature of ``data`` with the private ``key``, as written to ``embedkit-manifest.sig``
    (base64 text and a newline)."""
    return base64.b64encode(key.sign(data)).decode("ascii") + "\n"


def check_signature(sig_path: Path, data: bytes, key: Any) -> str:
    """``"valid"``, ``"invalid"`` or ``"missing"``: the detached signature at ``sig_path`` of ``data`` checked
    with the public ``key`` (a symbolic link is never read: ``"invalid"``)."""
    from cryptography.exceptions import InvalidSignature

    if sig_path.is_symlink():
        return "invalid"  # never read through a link
    if not sig_path.is_file():
        return "missing"
    try:
        signature = base64.b64decode(sig_path.read_text(encoding="ascii").strip(), validate=True)
        key.verify(signature, data)
    except (InvalidSignature, binascii.Error, UnicodeDecodeError, ValueError):
        return "invalid"
    return "valid"


def _read_key_file(path: Path, kind: str) -> bytes:
    if not path.exists():
        raise CheckpointError(f"{kind} key file {path} does not exist", hint=KEYGEN_HINT)
    if not path.is_file():
        raise CheckpointError(f"{kind} key file {path} is not a file", hint=KEYGEN_HINT)
    data = path.read_bytes()
    if len(data) > 1 << 20:
        raise CheckpointError(f"{path} is too large to be a {kind} key file", hint=KEYGEN_HINT)
    return data


def _key_kind(key: Any) -> str:
    return type(key).__name__.removesuffix("PrivateKey").removesuffix("PublicKey") or type(key).__name__


def _first_line(exc: BaseException) -> str:
    lines = [ln for ln in str(exc).splitlines() if ln.strip()]
    return lines[0][:200] if lines else type(exc).__name__


__all__ = ["generate_keypair", "load_private_key", "load_public_key", "load_key", "sign", "check_signature"]
