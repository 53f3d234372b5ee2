"""Hostile folders against manifests and signatures: hidden files, links, special files, interrupted signing."""

from __future__ import annotations

import contextlib
import json
import os

import pytest

from embedkit.checkpoint import manifest as manifest_mod
from embedkit.checkpoint.manifest import (
    MANIFEST_NAME,
    SIGNATURE_NAME,
    build_manifest,
    verify_manifest,
    write_manifest,
)
from embedkit.cli import main
from embedkit.errors import CheckpointError


# ---------------------------------------------------------------------- hidden files
@pytest.mark.parametrize("rel", [".evil.py", ".hidden/payload.py", "1_Pooling/.x"])
def test_hidden_file_added_to_signed_folder_fails_verify(folder, keys, rel, capsys):
    private, public = keys
    write_manifest(folder, sign_key=private)
    assert verify_manifest(folder, public_key=public).ok
    (folder / rel).parent.mkdir(parents=True, exist_ok=True)
    (folder / rel).write_text("import os; os.system('touch marker')\n")
    report = verify_manifest(folder, public_key=public)
    assert not report.ok and report.extra == [rel] and report.signature == "valid"
    assert main(["verify", str(folder), "--public-key", str(public)]) == 1
    out = capsys.readouterr().out
    assert f"extra: {rel}" in out and "OK" not in out


def test_hidden_files_present_when_signing_are_listed_and_checked(folder, keys):
    private, public = keys
    (folder / ".gitattributes").write_text("*.safetensors filter=lfs\n")
    (folder / ".hidden").mkdir()
    (folder / ".hidden" / "payload.py").write_text("x = 1\n")
    write_manifest(folder, sign_key=private)
    listed = json.loads((folder / MANIFEST_NAME).read_text())["files"]
    assert ".gitattributes" in listed and ".hidden/payload.py" in listed
    assert verify_manifest(folder, public_key=public).ok
    (folder / ".hidden" / "payload.py").write_text("x = 2\n")
    report = verify_manifest(folder, public_key=public)
    assert not report.ok and report.modified == [".hidden/payload.py"]


# ---------------------------------------------------------------------- links and special files
def test_manifest_refuses_a_symlink_naming_it(folder, tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("secret\n")
    os.symlink(outside, folder / "tokenizer.json")
    with pytest.raises(CheckpointError) as err:
        write_manifest(folder)
    assert "tokenizer.json" in err.value.message and "symbolic link" in err.value.message and err.value.hint
    assert not (folder / MANIFEST_NAME).exists()


def test_manifest_refuses_a_symlink_inside_the_folder_and_a_linked_folder(folder, tmp_path):
    os.symlink("config.json", folder / "alias.json")  # points inside: still refused (recorded nowhere)
    with pytest.raises(CheckpointError, match="alias.json"):
        build_manifest(folder)
    (folder / "alias.json").unlink()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "big.bin").write_bytes(b"x" * 10)
    os.symlink(tmp_path / "elsewhere", folder / "linked")
    with pytest.raises(CheckpointError, match="linked"):
        build_manifest(folder)


def test_manifest_refuses_a_fifo_without_hanging(folder):
    os.mkfifo(folder / "pipe")
    with pytest.raises(CheckpointError, match="special file"):
        build_manifest(folder)


def test_verify_reports_links_added_or_swapped_in_and_never_follows_them(folder, tmp_path, keys):
    private, public = keys
    write_manifest(folder, sign_key=private)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "payload.py").write_text("evil\n")
    os.symlink(outside, folder / ".hidden")            # an extra linked folder (hidden, too)
    os.symlink(outside / "payload.py", folder / "extra.py")
    # a listed file replaced by a link to an identical copy outside: content matches, still a problem
    copy = tmp_path / "config-copy.json"
    copy.write_bytes((folder / "config.json").read_bytes())
    (folder / "config.json").unlink()
    os.symlink(copy, folder / "config.json")
    # a listed sub-folder replaced by a link to a copy outside
    pooled = tmp_path / "pool-copy"
    pooled.mkdir()
    (pooled / "config.json").write_bytes((folder / "1_Pooling" / "config.json").read_bytes())
    (folder / "1_Pooling" / "config.json").unlink()
    (folder / "1_Pooling").rmdir()
    os.symlink(pooled, folder / "1_Pooling")
    report = verify_manifest(folder, public_key=public)
    assert not report.ok
    assert sorted(report.modified) == ["1_Pooling/config.json", "config.json"]
    assert sorted(report.extra) == [".hidden", "1_Pooling", "extra.py"]
    assert all("not followed" in p for p in report.problems if "config.json" in p or "extra" in p)
    assert ".hidden/payload.py" not in " ".join(report.problems)  # the linked folder was not walked


def test_verify_refuses_a_manifest_that_is_a_link(folder, tmp_path):
    write_manifest(folder)
    real = tmp_path / "m.json"
    (folder / MANIFEST_NAME).rename(real)
    os.symlink(real, folder / MANIFEST_NAME)
    with pytest.raises(CheckpointError, match="symbolic link"):
        verify_manifest(folder)


# ---------------------------------------------------------------------- interrupted signing
class _Killed(BaseException):
    """Stands for SIGKILL: raised between two steps of write_manifest."""


def _kill_when_writing(monkeypatch, name):
    real = manifest_mod.atomic_write

    @contextlib.contextmanager
    def dying(path, mode="wb"):
        if os.path.basename(path) == name:
            raise _Killed
        with real(path, mode) as fh:
            yield fh

    monkeypatch.setattr(manifest_mod, "atomic_write", dying)


def test_kill_before_the_new_signature_never_leaves_new_manifest_with_old_signature(folder, keys, monkeypatch):
    private, public = keys
    write_manifest(folder, sign_key=private)
    (folder / "added.txt").write_text("new file\n")
    _kill_when_writing(monkeypatch, SIGNATURE_NAME)
    with pytest.raises(_Killed):
        write_manifest(folder, sign_key=private)
    monkeypatch.undo()
    assert "added.txt" in json.loads((folder / MANIFEST_NAME).read_text())["files"]  # new manifest written...
    assert not (folder / SIGNATURE_NAME).exists()                                      # ...and unsigned
    report = verify_manifest(folder, public_key=public)
    assert not report.ok and report.signature == "missing"


def test_kill_before_the_new_manifest_has_already_dropped_the_old_signature(folder, keys, monkeypatch):
    private, public = keys
    write_manifest(folder, sign_key=private)
    before = (folder / MANIFEST_NAME).read_bytes()
    _kill_when_writing(monkeypatch, MANIFEST_NAME)
    with pytest.raises(_Killed):
        write_manifest(folder, sign_key=private)
    monkeypatch.undo()
    assert (folder / MANIFEST_NAME).read_bytes() == before and not (folder / SIGNATURE_NAME).exists()
    assert verify_manifest(folder, public_key=public).signature == "missing"


def test_verify_without_key_says_a_signature_exists_but_was_not_checked(folder, keys, capsys):
    private, _ = keys
    write_manifest(folder, sign_key=private)
    report = verify_manifest(folder)
    assert report.ok and report.signature == "not checked" and report.signature_present
    assert "exists" in report.signature_summary() and "not checked" in report.signature_summary()
    assert main(["verify", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "a signature exists" in out and "not checked" in out and "--public-key" in out
    (folder / ".evil.py").write_text("x\n")
    assert main(["verify", str(folder)]) == 1
    out = capsys.readouterr().out
    assert "extra: .evil.py" in out and "a signature exists" in out
    assert main(["verify", str(folder), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["signature_present"] is True
    write_manifest(folder)  # unsigned rewrite
    report = verify_manifest(folder)
    assert not report.signature_present and report.signature_summary() == "unsigned"
