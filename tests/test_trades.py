"""The quality gate: every trade's held-out set through the whole dialogue engine with the real model.

Development trades (tests/eval/trades) were used to build and fit the engine; blind trades
(tests/eval/blind) were written by someone else and not looked at until the end (docs/dialogue.md).
`tests/eval/gates.json` holds the level each trade reached; no change may quietly lower it. A failure
on a blind trade prints only figures, never its messages, so the set stays blind for the next change.

CI runs every trade on every other case (`CI_EVERY`), against `gates-ci.json`, which keeps the
suite inside its time budget; `WXKF_ALL_CASES=1` runs every case against `gates.json`. Both files
are written by `bench/write_gates.py` (`--ci` for the sample).
"""
import json
import os
from pathlib import Path

import pytest

from wxkf import config as config_mod
from wxkf.dialogue import model
from wxkf.dialogue.engine import DialogueEngine
from wxkf.dialogue.evaluate import check_labels, evaluate_engine, read_cases
from wxkf.dialogue.knowledge import KnowledgeStore

pytestmark = pytest.mark.slow

EVAL = Path(__file__).resolve().parent / "eval"
ALL_CASES = os.environ.get("WXKF_ALL_CASES") == "1"
CI_EVERY = 2
"""CI reads every CI_EVERY-th case of each trade (the files group cases by intent and kind, so every
group keeps its share)."""
GATES = json.loads((EVAL / ("gates.json" if ALL_CASES else "gates-ci.json")).read_text())
TRADES = [(kind, p) for kind in ("trades", "blind") for p in sorted((EVAL / kind).iterdir())
          if (p / "cases.tsv").exists()]
HIGHER = ("answered_right", "escalation_recall", "multi_both", "follow_right")
LOWER = ("wrong_answer", "oos_answered", "lookalikes_escalated", "ordinary_escalated")


@pytest.fixture(scope="module")
def llm():
    return model.load(config_mod.load(env={}).model_path)


def test_every_trade_has_a_gate():
    assert {p.name for _, p in TRADES} == set(GATES)
    assert len([1 for kind, _ in TRADES if kind == "trades"]) >= 6
    assert len([1 for kind, _ in TRADES if kind == "blind"]) >= 2


@pytest.mark.parametrize("kind, folder", TRADES, ids=[p.name for _, p in TRADES])
def test_trade_holds_its_level(llm, kind, folder):
    engine = DialogueEngine(KnowledgeStore(folder / "knowledge"), llm=llm).warm_up()
    cases = read_cases(folder / "cases.tsv")
    check_labels(cases, {i.id for i in engine.understanding().kb.intents}, folder.name)
    if not ALL_CASES:
        cases = cases[::CI_EVERY]
    figures = evaluate_engine(folder.name, cases, engine).figures()
    gate = GATES[folder.name]
    below = {k: (figures[k], gate[k]) for k in HIGHER if figures[k] is not None and figures[k] < gate[k] - 1e-9}
    above = {k: (figures[k], gate[k]) for k in LOWER if figures[k] is not None and figures[k] > gate[k] + 1e-9}
    assert not below and not above, f"{folder.name} ({kind}) below its gate (figure, gate): {below} {above}"
