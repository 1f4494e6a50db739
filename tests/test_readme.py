"""Every ```python block of the repository's Markdown files runs as written.

Each block runs alone, in a fresh Python process, from an empty temporary
directory, against the same ``dmkernels`` the tests import; the test fails when
it raises. A block that truly cannot run here must say so where a reader sees
it, on the line just above its fence:

    <!-- readme-test: skip: why it cannot run on a CPU machine -->

and is then reported as skipped with that reason, never dropped silently.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

import dmkernels

ROOT = Path(__file__).resolve().parents[1]
_PRUNE = {"build", "dist", "node_modules", "__pycache__"}
_FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
_SKIP = re.compile(r"^\s*<!--\s*readme-test:\s*skip:\s*(?P<reason>.*?)\s*-->\s*$")
_PYTHON = {"python", "py", "python3"}
TIMEOUT_S = 300


class Block(NamedTuple):
    path: str  # relative to the repository root
    line: int  # 1-based line of the opening fence
    code: str
    skip: str | None  # the reason given by a skip marker, or None


def python_blocks(text: str, path: str = "<text>") -> list[Block]:
    """The fenced python blocks of Markdown ``text``, in order. Raises on an
    unclosed fence and on a skip marker that does not stand right above a
    python block (a stale marker would otherwise hide nothing, or the wrong block)."""
    lines = text.splitlines()
    blocks, i, pending = [], 0, None  # pending: (line, reason) of the last skip marker
    while i < len(lines):
        marker = _SKIP.match(lines[i])
        if marker:
            if pending:
                raise ValueError(f"{path}:{pending[0]}: skip marker not followed by a python block")
            pending = (i + 1, marker["reason"] or "no reason given")
            i += 1
            continue
        opening = _FENCE.match(lines[i])
        if not opening:
            if pending and lines[i].strip():
                raise ValueError(f"{path}:{pending[0]}: skip marker not followed by a python block")
            i += 1
            continue
        fence, indent = opening["fence"], len(opening["indent"])
        lang = opening["info"].strip().split()[0].lower() if opening["info"].strip() else ""
        start, body = i + 1, []
        i += 1
        while i < len(lines):
            closing = _FENCE.match(lines[i])
            if closing and closing["fence"][0] == fence[0] and len(closing["fence"]) >= len(fence) \
                    and not closing["info"].strip():
                break
            line = lines[i]  # drop up to the fence's own indentation, as Markdown does
            body.append(line[min(indent, len(line) - len(line.lstrip(" "))):])
            i += 1
        else:
            raise ValueError(f"{path}:{start}: fenced block never closed")
        i += 1
        if lang in _PYTHON:
            blocks.append(Block(path, start, "\n".join(body) + "\n", pending[1] if pending else None))
        elif pending:
            raise ValueError(f"{path}:{pending[0]}: skip marker stands above a {lang or 'plain'} block")
        pending = None
    if pending:
        raise ValueError(f"{path}:{pending[0]}: skip marker not followed by a python block")
    return blocks


def markdown_files() -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = sorted(d for d in dirnames
                             if not d.startswith(".") and d not in _PRUNE and not d.endswith(".egg-info"))
        out += [Path(dirpath) / f for f in sorted(filenames) if f.endswith(".md")]
    return out


def _all_blocks() -> list[Block]:
    blocks = []
    for path in markdown_files():
        blocks += python_blocks(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
    return blocks


BLOCKS = _all_blocks()


def test_the_readme_has_its_examples():
    """The main README's examples are found (a broken extractor would pass every block)."""
    names = {b.path for b in BLOCKS}
    assert "README.md" in names
    assert sum(b.path == "README.md" for b in BLOCKS) >= 6


@pytest.mark.parametrize("block", BLOCKS, ids=[f"{b.path}:{b.line}" for b in BLOCKS])
def test_block_runs(block: Block, tmp_path: Path):
    if block.skip is not None:
        pytest.skip(f"{block.path}:{block.line}: {block.skip}")
    script = tmp_path / "snippet.py"
    script.write_text(block.code, encoding="utf-8")
    env = dict(os.environ)
    # The dmkernels under test, wherever it is imported from (the checkout or an install).
    package_parent = str(Path(dmkernels.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
    env.setdefault("OMP_NUM_THREADS", "1")  # small snippets; threads only contend on a shared CI machine
    try:
        proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{block.path}:{block.line}: the block ran past {TIMEOUT_S} s")
    if proc.returncode != 0:
        pytest.fail(f"{block.path}:{block.line}: the block failed (exit {proc.returncode})\n"
                    f"--- block ---\n{block.code}--- stderr (tail) ---\n{proc.stderr[-4000:]}")


# The extractor itself.

def test_extracts_python_blocks_only_and_keeps_skip_reasons():
    text = "\n".join([
        "# T", "", "```bash", "echo hi", "```", "",
        "```python", "x = 1", "", "  y = 2", "```",
        "<!-- readme-test: skip: needs a GPU -->", "```py", "import torch", "```",
        "- item", "", "   ```python", "   z = 3", "   ```",
        "````python", "s = '```'", "```", "````",
    ])
    blocks = python_blocks(text)
    assert [b.code for b in blocks] == ["x = 1\n\n  y = 2\n", "import torch\n", "z = 3\n", "s = '```'\n```\n"]
    assert [b.line for b in blocks] == [7, 13, 18, 21]
    assert [b.skip for b in blocks] == [None, "needs a GPU", None, None]


@pytest.mark.parametrize("text, message", [
    ("```python\nx = 1\n", "never closed"),
    ("<!-- readme-test: skip: why -->\n```bash\nls\n```\n", "stands above a bash block"),
    ("<!-- readme-test: skip: why -->\nsome prose\n```python\nx = 1\n```\n", "not followed by a python block"),
    ("text\n<!-- readme-test: skip: why -->\n", "not followed by a python block"),
])
def test_extractor_refuses_unclosed_fences_and_stray_markers(text, message):
    with pytest.raises(ValueError, match=message):
        python_blocks(text)


def test_a_failing_block_fails(tmp_path):
    """The runner reports a raising block (the test cannot pass on a broken snippet)."""
    bad = Block("x.md", 1, "raise SystemExit('boom')\n", None)
    with pytest.raises(pytest.fail.Exception, match="boom"):
        test_block_runs(bad, tmp_path)
