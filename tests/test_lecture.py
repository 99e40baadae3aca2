"""The lecture's tutorial (docs/lecture.md, docs/lecture.ko.md) is run as written: its two languages hold the same
sections, code and pictures; every command and code block runs (``docs/make_pictures.py --quick``: tiny budgets, in
this process) and writes the pictures the text shows; the full form (slow) runs each command in a shell as pasted,
checks the output the text shows, and reads the lecture's numbers back from what ran."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from typing import Any

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _script() -> Any:
    spec = importlib.util.spec_from_file_location("make_pictures", DOCS / "make_pictures.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_pictures"] = module
    spec.loader.exec_module(module)
    return module


make_pictures = _script()


def test_the_two_languages_are_in_step() -> None:
    assert make_pictures.out_of_step() == []
    assert make_pictures.sections(DOCS / "lecture.md") == [str(n) for n in range(1, 9)]  # the lecture's 8 points


def test_out_of_step_names_what_differs(tmp_path: Path) -> None:
    english = (DOCS / "lecture.md").read_text(encoding="utf-8")
    korean = tmp_path / "lecture.ko.md"
    korean.write_text(english.replace("--lr 0.21 --steps 20", "--lr 0.3 --steps 20")
                      .replace("# 1. start from a parameter value", "# 1. 시작 값"), encoding="utf-8")
    wrong = make_pictures.out_of_step(DOCS / "lecture.md", korean)
    assert len(wrong) == 1 and "--lr 0.3" in wrong[0]  # a command differs; a translated comment does not count


def test_quick_cuts_budgets_only() -> None:
    assert make_pictures.quick("gdlab lab plateau --lr 1 --steps 300 --restarts 40") == \
        "gdlab lab plateau --lr 1 --steps 12 --restarts 6"
    assert make_pictures.quick("fit(m, d, steps=2000, epochs=3, seeds=16, lr=0.5)") == \
        "fit(m, d, steps=12, epochs=1, seeds=3, lr=0.5)"
    assert make_pictures.masked("finished in 0.6 s: 5 epochs, 5000 iterations") == \
        "finished in # s: # epochs, # iterations"


def test_every_block_runs_and_draws_what_the_text_shows(tmp_path: Path) -> None:
    ran = make_pictures.main(["--quick", "--out", str(tmp_path)])
    shown = make_pictures.pictures(DOCS / "lecture.md")
    assert sorted(ran.pictures) == sorted(shown)
    assert all((tmp_path / Path(name).relative_to("pictures")).is_file() for name in shown)
    commands = [c for b in make_pictures.blocks(DOCS / "lecture.md") for c, _ in b.commands]
    assert [c for c, _, _ in ran.commands] == commands and all(code == 0 for _, code, _ in ran.commands)
    outputs = {c: out for c, _, out in ran.commands}
    # the lecture's numbers, read from what ran: the iterations arithmetic and the backward pass
    plan = next(out for c, out in outputs.items() if "--batch-size 100" in c)
    assert "1000 samples, batch 100 -> 10 iterations per epoch" in plan
    explained = next(out for c, out in outputs.items() if c.startswith("gdlab explain"))
    assert re.search(r"d/dw = -8, d/dx = -2, d/db = -4, d/dy = 4", explained)
    namespace = ran.namespace
    assert namespace["result"].plan.describe() == "3 samples, batch 2 -> 2 iterations per epoch (last batch 1)"
    assert len(namespace["dataset"]) == 3 and namespace["found"].distinct >= 1
    assert namespace["w"].item() == pytest.approx(2.0, abs=1e-3)  # the four steps by hand reach y = 2x


@pytest.mark.slow
def test_the_full_tutorial_as_pasted(tmp_path: Path) -> None:
    """Every command in a shell, with the budgets as written: the output the text shows is printed, the doctor
    names what each section says it names."""
    ran = make_pictures.main(["--out", str(tmp_path)])
    assert ran.missing == []
    findings = " ".join(out for _, _, out in ran.commands)
    for code in ("lr_too_high", "lr_too_low", "plateau", "remedy applied at step"):
        assert code in findings
    lab = next(out for c, _, out in ran.commands if "styblinski_tang" in c and "--lr 0.02" in c)
    assert re.search(r"momentum\s+0\.02\s+\(.*?\)\s+-78\.33", lab), "momentum rolls into the global minimum"
