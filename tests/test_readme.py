"""The README's quick start is two command lines, and CI runs the second one as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _quick_start() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quick start", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "the quick start has a bash block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_quick_start_has_exactly_two_command_lines() -> None:
    setup_and_train, setup_and_test = _quick_start()
    assert setup_and_train.endswith("gdlab train") and "torch==2.13.0" in setup_and_train
    extras = re.search(r"'\.\[([\w,-]+)\]'", setup_and_test)
    assert "pytest" in setup_and_test and extras and "dev" in extras.group(1).split(",")


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert _quick_start()[1] in ci


def test_the_default_run_leaves_out_the_slow_tests_and_ci_runs_them() -> None:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    options = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert "-m 'not slow'" in options["addopts"] and any(m.startswith("slow:") for m in options["markers"])
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    readme_command = ci.index(_quick_start()[1])
    assert any(line.startswith("python -m pytest -m slow") for line in ci[readme_command + 1:])


def test_python_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """The README's "Training from Python" block, as a reader would paste it."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Training from Python\n\n```python\n(.*?)```", text, re.S)
    assert block is not None
    exec(compile(block.group(1), "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert "iterations per epoch" in printed and "'member'" in printed and "successive halving" in printed
