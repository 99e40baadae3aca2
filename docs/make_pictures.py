"""Draw the lecture tutorial's pictures by running its code blocks, as a learner pasting them would.

The tutorial (docs/lecture.md, and docs/lecture.ko.md in Korean, which must hold the same blocks and pictures) is
the script: every ```console block's ``$ gdlab ...`` lines and every ```python block run in order, in one working
folder and (for Python) one namespace, and each picture the text shows (``![...](pictures/NAME)``) must be a file
they wrote there. Nothing here draws: the commands and the code do.

    python docs/make_pictures.py            # every block as written (about a minute on 2 cores); the commands run
                                            # in a shell, as pasted; the pictures go to docs/pictures/ (as PNGs of
                                            # 256 colours, to stay small), the shown output is checked
    python docs/make_pictures.py --quick    # the same blocks with tiny budgets (--steps, --epochs, --restarts,
                                            # --seeds, --num-iter and steps=, epochs=, seeds= cut), the commands run
                                            # in this process; pictures into a temporary folder (the default test)

``--out DIR`` puts the pictures in DIR instead. :func:`main` returns what ran, for the tests.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import tokenize
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parent
TUTORIALS = (DOCS / "lecture.md", DOCS / "lecture.ko.md")
PICTURES = DOCS / "pictures"

QUICK = {"steps": 12, "epochs": 1, "restarts": 6, "seeds": 3, "num-iter": 30, "num_iter": 30}
"""The budgets ``--quick`` cuts a block's numbers to (flags and keyword arguments alike)."""

FENCE = re.compile(r"^```(console|python)\n(.*?)^```", re.M | re.S)
PICTURE = re.compile(r"!\[[^\]]*\]\((pictures/[^)\s]+)\)")
NUMBER = re.compile(r"[-+]?(\d[\d,]*\.?\d*|\.\d+)(e[-+]?\d+)?%?", re.I)


@dataclass
class Block:
    """A fenced block: ``console`` (its ``$`` commands and the output shown under them) or ``python``."""

    kind: str
    text: str
    commands: list[tuple[str, list[str]]] = field(default_factory=list)  # (command, output lines shown)

    @classmethod
    def parse(cls, kind: str, text: str) -> Block:
        block = cls(kind, text)
        if kind == "console":
            for line in text.splitlines():
                if line.startswith("$ "):
                    block.commands.append((line[2:], []))
                elif block.commands and line.strip():
                    block.commands[-1][1].append(line)
        return block


def blocks(path: Path) -> list[Block]:
    """The tutorial's code blocks, in order."""
    return [Block.parse(kind, text) for kind, text in FENCE.findall(path.read_text(encoding="utf-8"))]


def pictures(path: Path) -> list[str]:
    """The pictures the tutorial shows (paths under ``pictures/``), in order."""
    return PICTURE.findall(path.read_text(encoding="utf-8"))


def sections(path: Path) -> list[str]:
    """The numbers of the tutorial's sections (``## 3. ...`` gives ``3``)."""
    return re.findall(r"^## (\d+)\.", path.read_text(encoding="utf-8"), re.M)


def code(block: Block) -> str:
    """What a block runs: a console block's commands, a Python block's code without its comments (the languages
    translate the comments, never the code)."""
    if block.kind == "console":
        return "\n".join(command for command, _ in block.commands)
    tokens = tokenize.generate_tokens(io.StringIO(block.text).readline)
    return " ".join(t.string for t in tokens if t.type not in (tokenize.COMMENT, tokenize.NL)).strip()


def out_of_step(english: Path = TUTORIALS[0], korean: Path = TUTORIALS[1]) -> list[str]:
    """How the two tutorials differ in what they run and show: sections, code blocks, pictures (empty: in step)."""
    wrong = []
    if sections(english) != sections(korean):
        wrong.append(f"sections: {sections(english)} against {sections(korean)}")
    en, ko = blocks(english), blocks(korean)
    if len(en) != len(ko):
        wrong.append(f"{len(en)} code blocks against {len(ko)}")
    for i, (a, b) in enumerate(zip(en, ko)):
        if (a.kind, code(a)) != (b.kind, code(b)):
            wrong.append(f"block {i + 1} differs:\n{code(a)}\n---\n{code(b)}")
    if pictures(english) != pictures(korean):
        wrong.append(f"pictures: {pictures(english)} against {pictures(korean)}")
    return wrong


def quick(text: str) -> str:
    """The block with its budgets cut to :data:`QUICK` (a number already smaller is kept)."""

    def cut(match: re.Match[str]) -> str:
        name, value = match.group(2), int(match.group(3))
        return f"{match.group(1)}{min(value, QUICK[name])}"

    flags = "|".join(k for k in QUICK if "_" not in k)
    text = re.sub(rf"(--({flags})[ =])(\d+)\b", cut, text)
    return re.sub(r"(\b(steps|epochs|seeds|restarts|num_iter)=)(\d+)\b", cut, text)


def masked(line: str) -> str:
    """A line of output with its numbers as ``#`` and its spaces collapsed: what stays from run to run."""
    return " ".join(NUMBER.sub("#", line).split())


def run_command(command: str, *, shell: bool) -> tuple[int, str]:
    """Run one ``gdlab ...`` line: in a shell as pasted, or (quick) through the CLI's app in this process."""
    if shell:
        done = subprocess.run(command, shell=True, capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})
        return done.returncode, done.stdout + done.stderr
    from typer.testing import CliRunner

    from gdlab.cli import app

    words = shlex.split(command)
    if words[0] != "gdlab":
        raise ValueError(f"a tutorial command must start with gdlab: {command}")
    result = CliRunner().invoke(app, words[1:], terminal_width=200)
    return result.exit_code, result.output


@dataclass
class Ran:
    """What running a tutorial gave: each command with its exit code and output, the Python namespace, the
    pictures written (relative path -> file), the seconds it took and the shown lines the output lacked."""

    commands: list[tuple[str, int, str]] = field(default_factory=list)
    namespace: dict[str, Any] = field(default_factory=dict)
    pictures: dict[str, Path] = field(default_factory=dict)
    seconds: float = 0.0
    missing: list[str] = field(default_factory=list)


def run(tutorial: Path, folder: Path, *, fast: bool) -> Ran:
    """Run every block of ``tutorial`` in ``folder`` (``fast``: :func:`quick` budgets, commands in this process)."""
    ran = Ran()
    start = time.perf_counter()
    here = Path.cwd()
    os.chdir(folder)
    try:
        for block in blocks(tutorial):
            if block.kind == "python":
                source = quick(block.text) if fast else block.text
                with contextlib.redirect_stdout(io.StringIO()):
                    exec(compile(source, f"{tutorial.name} block", "exec"), ran.namespace)
                continue
            for command, shown in block.commands:
                line = quick(command) if fast else command
                code_, output = run_command(line, shell=not fast)
                expected = 2 if shown and shown[0].startswith("error:") else 0
                if code_ != expected:
                    raise SystemExit(f"`{line}` exited {code_} (expected {expected}):\n{output}")
                ran.commands.append((command, code_, output))
                if not fast:  # each line shown is (a part of) a line printed, numbers aside
                    lines = [masked(x) for x in output.splitlines()]
                    ran.missing += [f"{command}: {x}" for x in shown
                                    if x.strip() != "..." and not any(masked(x) in y for y in lines)]
    finally:
        os.chdir(here)
    for name in pictures(tutorial):
        path = folder / name
        if not path.is_file():
            raise SystemExit(f"{tutorial.name} shows {name}, which no block wrote")
        ran.pictures[name] = path
    ran.seconds = time.perf_counter() - start
    return ran


def keep(source: Path, target: Path) -> None:
    """Copy a picture, a PNG in 256 colours (a few tens of KB: the tutorial's figures are line art)."""
    from PIL import Image

    target.parent.mkdir(parents=True, exist_ok=True)
    if source.suffix != ".png":
        shutil.copyfile(source, target)
        return
    with Image.open(source) as image:
        image.convert("RGB").quantize(colors=256).save(target, optimize=True)


def main(argv: list[str] | None = None) -> Ran:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny budgets, in this process (the tests)")
    parser.add_argument("--out", type=Path, help="where the pictures go [default: docs/pictures, or a temporary "
                                                 "folder with --quick]")
    args = parser.parse_args(argv)
    wrong = out_of_step()
    if wrong:
        raise SystemExit("docs/lecture.md and docs/lecture.ko.md are out of step:\n" + "\n".join(wrong))
    with tempfile.TemporaryDirectory() as work:
        ran = run(TUTORIALS[0], Path(work), fast=args.quick)
        if ran.missing:
            raise SystemExit("output shown in docs/lecture.md that the commands no longer print:\n"
                             + "\n".join(ran.missing))
        target = args.out or (None if args.quick else PICTURES)
        if target is not None:
            for name, path in ran.pictures.items():
                keep(path, target / Path(name).relative_to("pictures"))
            ran.pictures = {name: target / Path(name).relative_to("pictures") for name in ran.pictures}
        print(f"{len(ran.commands)} commands, {sum(b.kind == 'python' for b in blocks(TUTORIALS[0]))} Python blocks, "
              f"{len(ran.pictures)} pictures in {ran.seconds:.0f} s" + (f" -> {target}" if target else ""))
    return ran


if __name__ == "__main__":
    sys.path.insert(0, str(DOCS.parent / "src"))
    main()
