"""Record the level every trade reached as its CI gate (tests/eval/gates.json).

    .venv/bin/python bench/write_gates.py [--print-only] [--ci] [trade ...]

With trade names, only those are measured again and merged into the existing gates.json. With
`--ci`, every CI_EVERY-th case only, into gates-ci.json: the sample CI runs (tests/test_trades.py).

Runs each trade (development and blind) through the whole engine with the real model, as
tests/test_trades.py does, and writes floors for the figures that must not fall and ceilings for those
that must not rise, each one case looser than reached, so that a float rounding in the model cannot
flip the gate while any real loss fails it. Prints figures only, never the messages.
"""
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from wxkf import config as config_mod  # noqa: E402
from wxkf.dialogue import model  # noqa: E402
from wxkf.dialogue.engine import DialogueEngine  # noqa: E402
from wxkf.dialogue.evaluate import evaluate_engine, read_cases  # noqa: E402
from wxkf.dialogue.knowledge import KnowledgeStore  # noqa: E402

EVAL = ROOT / "tests" / "eval"
CI_EVERY = 2
"""As in tests/test_trades.py."""
# figure -> (count it is a rate of, direction)
RATES = {"answered_right": ("in_scope", +1), "escalation_recall": ("escalations", +1),
         "multi_both": ("multi", +1), "follow_right": ("follow", +1),
         "wrong_answer": ("in_scope", -1), "oos_answered": ("out_of_scope", -1),
         "lookalikes_escalated": ("lookalikes", -1)}


def main():
    llm = model.load(config_mod.load(env={}).model_path)
    only = [a for a in sys.argv[1:] if not a.startswith("--")]
    ci = "--ci" in sys.argv
    target = EVAL / ("gates-ci.json" if ci else "gates.json")
    gates = json.loads(target.read_text()) if only else {}
    for kind in ("trades", "blind"):
        for folder in sorted((EVAL / kind).iterdir()):
            if not (folder / "cases.tsv").exists() or (only and folder.name not in only):
                continue
            engine = DialogueEngine(KnowledgeStore(folder / "knowledge"), llm=llm).warm_up()
            cases = read_cases(folder / "cases.tsv")
            f = evaluate_engine(folder.name, cases[::CI_EVERY] if ci else cases, engine).figures()
            gate = {}
            for key, (count, direction) in RATES.items():
                n = f[count] or 1
                value = f[key] if f[key] is not None else (0.0 if direction > 0 else 1.0)
                gate[key] = round(max(0.0, min(1.0, value - direction / n)), 4)
            gate["ordinary_escalated"] = f["ordinary_escalated"] + 1
            gates[folder.name] = gate
            print(kind, folder.name, json.dumps(f, ensure_ascii=False), flush=True)
    if "--print-only" not in sys.argv:
        target.write_text(json.dumps(gates, ensure_ascii=False, indent=2) + "\n")
        print(f"wrote {target}")


if __name__ == "__main__":
    main()
