"""Documentation cannot rot: every code block marked ``<!-- runnable -->`` in README.md and docs/*.md runs.

Blocks of one page run in order in one scratch folder (a later block may use files an earlier one wrote), bash with
``set -e`` and ``embedkit`` on the PATH bound to this checkout, python with this interpreter.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARK = "<!-- runnable -->"
FENCE = re.compile(r"^```(\w*)\s*$")


def runnable_blocks(text: str) -> list[tuple[int, str, str]]:
    """``(line, language, code)`` of every fenced block whose opening fence follows a ``<!-- runnable -->`` line."""
    lines = text.split("\n")
    blocks = []
    i = 0
    while i < len(lines):
        if lines[i].strip() == MARK:
            j = i + 1
            while j < len(lines) and not lines[j].strip():
                j += 1
            m = FENCE.match(lines[j]) if j < len(lines) else None
            if not m or m.group(1) not in ("bash", "python"):
                raise AssertionError(f"line {i + 1}: {MARK} must precede a ```bash or ```python block")
            end = j + 1
            while not lines[end].startswith("```"):
                end += 1
            blocks.append((j + 1, m.group(1), "\n".join(lines[j + 1:end])))
            i = end
        i += 1
    return blocks


def test_every_page_is_linked_from_the_readme():
    readme = (ROOT / "README.md").read_text()
    for page in PAGES[1:]:
        assert f"(docs/{page.name})" in readme, f"docs/{page.name} is not linked from README.md"
    assert len(readme.splitlines()) <= 200


def test_runnable_blocks_are_found():
    assert sum(len(runnable_blocks(p.read_text())) for p in PAGES) >= 5


@pytest.mark.parametrize("page", [p for p in PAGES if runnable_blocks(p.read_text())], ids=lambda p: p.name)
def test_runnable_blocks_run(page, tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name, argv in (("embedkit", "-m embedkit"), ("python", ""), ("python3", "")):
        shim = bindir / name
        shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" {argv} "$@"\n')
        shim.chmod(0o755)
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "EMBEDKIT_CACHE": str(tmp_path / "cache")}
    for line, lang, code in runnable_blocks(page.read_text()):
        cmd = ["bash", "-e", "-c", code] if lang == "bash" else [sys.executable, "-c", code]
        proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=600)
        tail = f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        assert proc.returncode == 0, f"{page.name}:{line} ({lang}) failed:\n{tail}"
