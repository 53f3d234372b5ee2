"""embedkit._optional: one registry of optional modules -> extras, one install message."""

import re
import sys
from pathlib import Path

import pytest

from embedkit import _optional
from embedkit._optional import EXTRAS, available, install_hint, require
from embedkit.errors import EmbedkitError

ROOT = Path(__file__).resolve().parents[1]


def test_missing_module_names_its_extra(monkeypatch):
    monkeypatch.setitem(EXTRAS, "embedkit_test_not_a_module", "fancy")
    with pytest.raises(EmbedkitError) as info:
        require("embedkit_test_not_a_module", "the fancy feature")
    assert info.value.message == "the fancy feature needs embedkit_test_not_a_module, which is not installed"
    assert info.value.hint == "pip install 'embedkit[fancy]'"
    assert not available("embedkit_test_not_a_module")


def test_submodule_and_default_feature(monkeypatch):
    monkeypatch.setitem(EXTRAS, "embedkit_test_not_a_module", "fancy")
    with pytest.raises(EmbedkitError) as info:
        require("embedkit_test_not_a_module.sub")
    assert info.value.message.startswith("this feature needs embedkit_test_not_a_module,")
    assert info.value.hint == "pip install 'embedkit[fancy]'"


def test_a_module_blocked_in_sys_modules_counts_as_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "yaml", None)  # what an environment without pyyaml looks like
    with pytest.raises(EmbedkitError, match="needs yaml") as info:
        require("yaml")
    assert info.value.hint == "pip install 'embedkit[train]'"


def test_present_module_is_returned():
    import json

    assert require("json") is json and available("json")
    assert install_hint("not_registered_anywhere") == "pip install not_registered_anywhere"


def test_every_extra_exists_in_pyproject():
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    block = text.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    extras = set(re.findall(r"^([a-z0-9_-]+)\s*=", block, flags=re.M))
    assert set(EXTRAS.values()) <= extras, set(EXTRAS.values()) - extras


def test_no_hand_written_guards_for_registered_modules():
    """Optional modules are imported through require(), never under a bare try/except ImportError."""
    for path in (ROOT / "embedkit").rglob("*.py"):
        if path.name == "_optional.py":
            continue
        text = path.read_text(encoding="utf-8")
        for m in re.finditer(r"try:\n((?:[ \t]+.*\n){1,3}?)[ \t]+except ImportError", text):
            guarded = re.findall(r"(?:import|from) ([a-zA-Z_][\w]*)", m.group(1))
            assert not set(guarded) & set(EXTRAS), f"{path.name}: hand-written guard for {guarded}"


def test_registry_is_the_module_the_design_names():
    assert _optional.__doc__ and "require" in _optional.__all__
