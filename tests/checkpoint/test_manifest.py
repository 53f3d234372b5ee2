"""Integrity manifests (sha256 + size) and ed25519 signatures: library and CLI, on real files."""

from __future__ import annotations

import base64
import json
import os
import stat

import pytest

from embedkit.checkpoint.manifest import (
    MANIFEST_NAME,
    SIGNATURE_NAME,
    build_manifest,
    generate_keypair,
    load_private_key,
    load_public_key,
    verify_manifest,
    write_manifest,
)
from embedkit.cli import main
from embedkit.errors import CheckpointError


def _flip_byte(path, offset=100):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


# ---------------------------------------------------------------------- build / write
def test_build_manifest_lists_every_file_with_sha256_and_size(folder):
    import hashlib

    m = build_manifest(folder)
    assert m["format"] == "embedkit-manifest/1"
    assert list(m["files"]) == ["1_Pooling/config.json", "config.json", "model.safetensors", "vocab.txt"]
    data = (folder / "model.safetensors").read_bytes()
    assert m["files"]["model.safetensors"] == {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def test_build_manifest_streams_files_larger_than_one_chunk(folder):
    import hashlib

    big = os.urandom((1 << 20) * 2 + 123)
    (folder / "model.safetensors").write_bytes(big)
    entry = build_manifest(folder)["files"]["model.safetensors"]
    assert entry == {"sha256": hashlib.sha256(big).hexdigest(), "size": len(big)}


def test_write_manifest_is_sorted_indented_json_and_excludes_itself(folder):
    path = write_manifest(folder)
    assert path == folder / MANIFEST_NAME
    text = path.read_text()
    assert text.endswith("}\n") and text.startswith('{\n  "files"')
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"
    # written again, the manifest does not list itself and is byte-identical
    write_manifest(folder)
    assert path.read_text() == text
    assert MANIFEST_NAME not in json.loads(text)["files"]
    assert not list(folder.glob(".*tmp*")), "atomic_write left a temporary file"


def test_manifest_of_tiny_bert_copy_verifies(tiny_copy):
    d = tiny_copy("bert-with-manifest")
    write_manifest(d)
    report = verify_manifest(d)
    assert report.ok and report.checked >= 4 and report.signature == "not checked"


# ---------------------------------------------------------------------- verify
def test_good_manifest_verifies(folder):
    write_manifest(folder)
    report = verify_manifest(folder)
    assert report.ok
    assert (report.modified, report.missing, report.extra, report.problems) == ([], [], [], [])
    d = report.to_dict()
    assert d["ok"] is True and d["signature"] == "not checked" and json.dumps(d)


def test_flipped_byte_is_modified(folder):
    write_manifest(folder)
    _flip_byte(folder / "model.safetensors")  # same size: only the sha256 can tell
    report = verify_manifest(folder)
    assert not report.ok
    assert report.modified == ["model.safetensors"] and report.missing == [] and report.extra == []
    assert report.problems == ["modified: model.safetensors (sha256 differs)"]


def test_size_change_is_modified(folder):
    write_manifest(folder)
    with open(folder / "1_Pooling" / "config.json", "a") as fh:
        fh.write(" ")
    report = verify_manifest(folder)
    assert report.modified == ["1_Pooling/config.json"] and not report.ok


def test_deleted_file_is_missing(folder):
    write_manifest(folder)
    (folder / "vocab.txt").unlink()
    report = verify_manifest(folder)
    assert not report.ok and report.missing == ["vocab.txt"] and report.modified == []
    assert "missing: vocab.txt" in report.problems


def test_added_file_is_extra(folder):
    write_manifest(folder)
    (folder / "1_Pooling" / "evil.py").write_text("import os\n")
    report = verify_manifest(folder)
    assert not report.ok and report.extra == ["1_Pooling/evil.py"]
    assert any(p.startswith("extra: 1_Pooling/evil.py") for p in report.problems)


def test_every_kind_of_problem_at_once(folder):
    write_manifest(folder)
    _flip_byte(folder / "model.safetensors")
    (folder / "vocab.txt").unlink()
    (folder / "new.bin").write_bytes(b"x")
    report = verify_manifest(folder)
    assert (report.modified, report.missing, report.extra) == (["model.safetensors"], ["vocab.txt"], ["new.bin"])
    assert len(report.problems) == 3


def test_missing_manifest_raises_with_hint(folder):
    with pytest.raises(CheckpointError) as err:
        verify_manifest(folder)
    assert MANIFEST_NAME in err.value.message and "embedkit manifest" in err.value.hint


@pytest.mark.parametrize("content", ["{not json", "", '["a list"]', '{"format": "other/9", "files": {}}',
                                     '{"format": "embedkit-manifest/1", "files": {"x": {"size": 1}}}',
                                     '{"format": "embedkit-manifest/1", "files": {"../etc/passwd": '
                                     '{"sha256": "00", "size": 1}}}'])
def test_invalid_manifest_raises(folder, content):
    (folder / MANIFEST_NAME).write_text(content)
    with pytest.raises(CheckpointError) as err:
        verify_manifest(folder)
    assert MANIFEST_NAME in err.value.message and "embedkit manifest" in err.value.hint


def test_not_a_folder_raises(tmp_path):
    with pytest.raises(CheckpointError, match="no folder"):
        build_manifest(tmp_path / "nope")
    (tmp_path / "f").write_text("x")
    with pytest.raises(CheckpointError, match="not a folder"):
        verify_manifest(tmp_path / "f")


# ---------------------------------------------------------------------- signatures
def test_signed_manifest_verifies_with_the_right_public_key(folder, keys):
    private, public = keys
    write_manifest(folder, sign_key=private)
    sig = (folder / SIGNATURE_NAME).read_text()
    assert len(base64.b64decode(sig.strip(), validate=True)) == 64
    report = verify_manifest(folder, public_key=public)
    assert report.ok and report.signature == "valid" and report.problems == []


def test_signature_is_over_the_exact_manifest_bytes(folder, keys):
    private, public = keys
    write_manifest(folder, sign_key=private)
    sig = base64.b64decode((folder / SIGNATURE_NAME).read_text())
    load_public_key(public).verify(sig, (folder / MANIFEST_NAME).read_bytes())  # raises if not


def test_tampered_manifest_has_invalid_signature(folder, keys):
    private, public = keys
    write_manifest(folder, sign_key=private)
    # an attacker swaps a file and updates the manifest to match: only the signature catches it
    (folder / "vocab.txt").write_text("[PAD]\n[UNK]\nevil\n")
    manifest_sig = (folder / SIGNATURE_NAME).read_bytes()
    write_manifest(folder)
    (folder / SIGNATURE_NAME).write_bytes(manifest_sig)
    assert verify_manifest(folder).ok  # unsigned check passes...
    report = verify_manifest(folder, public_key=public)
    assert not report.ok and report.signature == "invalid"  # ...the signed one does not
    assert report.modified == [] and any(p.startswith("signature: invalid") for p in report.problems)


def test_whitespace_edit_of_manifest_breaks_signature(folder, keys):
    private, public = keys
    write_manifest(folder, sign_key=private)
    path = folder / MANIFEST_NAME
    path.write_text(path.read_text() + "\n")
    assert verify_manifest(folder, public_key=public).signature == "invalid"


def test_garbage_signature_is_invalid(folder, keys):
    private, public = keys
    write_manifest(folder, sign_key=private)
    (folder / SIGNATURE_NAME).write_text("not base64 at all!!\n")
    report = verify_manifest(folder, public_key=public)
    assert report.signature == "invalid" and not report.ok


def test_wrong_key_is_invalid(folder, keys, tmp_path):
    private, _ = keys
    _, other_public = generate_keypair(tmp_path / "other.key")
    write_manifest(folder, sign_key=private)
    report = verify_manifest(folder, public_key=other_public)
    assert not report.ok and report.signature == "invalid"


def test_public_key_given_but_no_signature_fails(folder, keys):
    _, public = keys
    write_manifest(folder)
    report = verify_manifest(folder, public_key=public)
    assert not report.ok and report.signature == "missing"
    assert any(p.startswith("signature: missing") for p in report.problems)


def test_unsigned_rewrite_removes_stale_signature(folder, keys):
    private, public = keys
    write_manifest(folder, sign_key=private)
    assert (folder / SIGNATURE_NAME).exists()
    write_manifest(folder)
    assert not (folder / SIGNATURE_NAME).exists()
    assert verify_manifest(folder).ok


def test_bad_sign_key_writes_nothing(folder, tmp_path):
    garbage = tmp_path / "garbage.key"
    garbage.write_text("this is not a key\n")
    with pytest.raises(CheckpointError) as err:
        write_manifest(folder, sign_key=garbage)
    assert str(garbage) in err.value.message and "embedkit keygen" in err.value.hint
    assert not (folder / MANIFEST_NAME).exists()


# ---------------------------------------------------------------------- keys
def test_keygen_writes_private_0600_and_public(tmp_path):
    private, public = generate_keypair(tmp_path / "k")
    assert public == tmp_path / "k.pub"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert private.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert public.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    load_private_key(private)
    load_public_key(public)


def test_keygen_refuses_to_overwrite(tmp_path):
    private, public = generate_keypair(tmp_path / "k")
    before = private.read_bytes()
    with pytest.raises(CheckpointError, match="already exists"):
        generate_keypair(tmp_path / "k")
    assert private.read_bytes() == before
    # an existing .pub alone is enough to refuse
    (tmp_path / "lone.pub").write_text("x")
    with pytest.raises(CheckpointError, match="lone.pub"):
        generate_keypair(tmp_path / "lone")
    assert not (tmp_path / "lone").exists()


def test_key_loading_errors_name_the_file(tmp_path, keys):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    private, public = keys
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    rsa_private = tmp_path / "rsa.pem"
    rsa_private.write_bytes(rsa_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
    rsa_public = tmp_path / "rsa.pub"
    rsa_public.write_bytes(rsa_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                             serialization.PublicFormat.SubjectPublicKeyInfo))
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"\x00\x01 not a key")
    cases = [
        (load_private_key, tmp_path / "absent.key", "does not exist"),
        (load_private_key, rsa_private, "RSA"),
        (load_private_key, garbage, "not a PEM private key"),
        (load_private_key, public, "public key"),
        (load_public_key, tmp_path / "absent.pub", "does not exist"),
        (load_public_key, rsa_public, "RSA"),
        (load_public_key, garbage, "not a PEM public key"),
        (load_public_key, private, "private key"),
    ]
    for loader, path, words in cases:
        with pytest.raises(CheckpointError) as err:
            loader(path)
        assert str(path) in err.value.message and words in err.value.message, (loader.__name__, path)
        assert err.value.hint


def test_one_key_loader_reads_pem_and_openssh_keys_of_either_kind(tmp_path, folder):
    """checkpoint.signing.load_key is the one loader behind load_private_key / load_public_key (PEM and OpenSSH)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from embedkit.checkpoint import signing

    assert load_private_key is signing.load_private_key and load_public_key is signing.load_public_key
    key = Ed25519PrivateKey.generate()
    ssh_private, ssh_public = tmp_path / "id_ed25519", tmp_path / "id_ed25519.pub"
    ssh_private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                              serialization.NoEncryption()))
    ssh_public.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                         serialization.PublicFormat.OpenSSH) + b" me@host\n")
    assert isinstance(signing.load_key(ssh_private, "private"), Ed25519PrivateKey)
    write_manifest(folder, sign_key=ssh_private)
    assert verify_manifest(folder, public_key=ssh_public).signature == "valid"
    with pytest.raises(ValueError, match="kind"):
        signing.load_key(ssh_public, "secret")


# ---------------------------------------------------------------------- CLI
def test_cli_keygen_manifest_verify_ok(tmp_path, folder, capsys):
    key = tmp_path / "cli.key"
    assert main(["keygen", str(key)]) == 0
    out = capsys.readouterr().out
    assert str(key) in out and f"{key}.pub" in out
    assert main(["keygen", str(key)]) == 2
    assert "already exists" in capsys.readouterr().err

    assert main(["manifest", str(folder), "--sign", str(key)]) == 0
    out = capsys.readouterr().out
    total = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and p.name not in
                (MANIFEST_NAME, SIGNATURE_NAME))
    assert "4 files" in out and f"{total} bytes" in out and (folder / SIGNATURE_NAME).exists()

    assert main(["verify", str(folder), "--public-key", f"{key}.pub"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("OK") and "signature valid" in out


def test_cli_verify_names_each_offending_file_and_exits_1(folder, capsys):
    assert main(["manifest", str(folder)]) == 0
    _flip_byte(folder / "model.safetensors")
    (folder / "vocab.txt").unlink()
    (folder / "extra.txt").write_text("x")
    capsys.readouterr()
    assert main(["verify", str(folder)]) == 1
    out = capsys.readouterr().out
    assert "modified: model.safetensors" in out
    assert "missing: vocab.txt" in out
    assert "extra: extra.txt" in out
    assert "OK" not in out


def test_cli_verify_signature_invalid_exits_1(folder, keys, capsys):
    private, public = keys
    assert main(["manifest", str(folder), "--sign", str(private)]) == 0
    path = folder / MANIFEST_NAME
    path.write_text(path.read_text().replace('"size": 2304', '"size": 2305'))
    capsys.readouterr()
    assert main(["verify", str(folder), "--public-key", str(public)]) == 1
    out = capsys.readouterr().out
    assert "signature: invalid" in out and "modified: model.safetensors" in out


def test_cli_verify_json(folder, capsys):
    assert main(["manifest", str(folder)]) == 0
    capsys.readouterr()
    assert main(["verify", str(folder), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True and report["signature"] == "not checked"
    (folder / "vocab.txt").unlink()
    assert main(["verify", str(folder), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False and report["missing"] == ["vocab.txt"]


def test_cli_errors_exit_2_with_hint_and_no_traceback(folder, tmp_path, capsys):
    assert main(["verify", str(folder)]) == 2  # no manifest yet
    err = capsys.readouterr().err
    assert MANIFEST_NAME in err and "hint:" in err and "embedkit manifest" in err and "Traceback" not in err
    assert main(["manifest", str(folder)]) == 0
    bad_key = tmp_path / "bad.pub"
    bad_key.write_text("garbage\n")
    assert main(["verify", str(folder), "--public-key", str(bad_key)]) == 2
    err = capsys.readouterr().err
    assert str(bad_key) in err and "Traceback" not in err


def test_cli_help_has_examples(capsys):
    for cmd in ("manifest", "verify", "keygen"):
        assert main([cmd, "--help"]) == 0
        assert "Example: embedkit " + cmd in capsys.readouterr().out
