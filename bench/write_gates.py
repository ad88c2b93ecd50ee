"""Record the level every trade reached as its CI gate (tests/eval/gates.json).

    .venv/bin/python bench/write_gates.py [--print-only] [--ci] [trade ...]
    .venv/bin/python bench/write_gates.py [--ci] --from run.log   # the gates of a run printed earlier
    ... --merge: keep, figure by figure, the looser of the gate already written and the new one

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


def gate_of(f):
    """The gate for a trade's figures: each one case looser than reached."""
    gate = {}
    for key, (count, direction) in RATES.items():
        n = f[count] or 1
        value = f[key] if f[key] is not None else (0.0 if direction > 0 else 1.0)
        gate[key] = round(max(0.0, min(1.0, value - direction / n)), 4)
    gate["ordinary_escalated"] = f["ordinary_escalated"] + 1
    return gate


def _looser(old, new):
    """With --merge: the looser of the gate already written and the new one, figure by figure.
    Another CPU's matrix kernels round the model's scores differently and move a few borderline
    cases (seen between the VM of earlier sessions and an AMD EPYC with AVX-512, same code): the
    gate is then the level the same code reached on every machine it was written on, still one case
    looser, not the last machine's alone."""
    if not old:
        return new
    out = {}
    for key, value in new.items():
        higher = key in RATES and RATES[key][1] > 0
        out[key] = min(value, old.get(key, value)) if higher else max(value, old.get(key, value))
    return out


def _measured(only, ci):
    """(kind, trade, figures) of each trade run now through the whole engine, printed as it goes."""
    llm = model.load(config_mod.load(env={}).model_path)
    for kind in ("trades", "blind"):
        for folder in sorted((EVAL / kind).iterdir()):
            if not (folder / "cases.tsv").exists() or (only and folder.name not in only):
                continue
            engine = DialogueEngine(KnowledgeStore(folder / "knowledge"), llm=llm).warm_up()
            cases = read_cases(folder / "cases.tsv")
            f = evaluate_engine(folder.name, cases[::CI_EVERY] if ci else cases, engine).figures()
            print(kind, folder.name, json.dumps(f, ensure_ascii=False), flush=True)
            yield kind, folder.name, f


def _printed(source, only):
    """The same, from the lines an earlier run printed ("kind trade {figures}"), without running."""
    for line in Path(source).read_text().splitlines():
        kind, name, figures = (line.split(" ", 2) + ["", ""])[:3]
        if kind in ("trades", "blind") and (not only or name in only):
            yield kind, name, json.loads(figures)


def main():
    args = sys.argv[1:]
    source = args[args.index("--from") + 1] if "--from" in args else None
    only = [a for a in args if not a.startswith("--") and a != source]
    target = EVAL / ("gates-ci.json" if "--ci" in args else "gates.json")
    written = json.loads(target.read_text()) if only or source or "--merge" in args else {}
    old = written if "--merge" in args else {}
    gates = dict(written) if only or source else {}
    for _, name, f in (_printed(source, only) if source else _measured(only, "--ci" in args)):
        gates[name] = _looser(old.get(name), gate_of(f))
    if "--print-only" not in args:
        target.write_text(json.dumps(gates, ensure_ascii=False, indent=2) + "\n")
        print(f"wrote {target}")


if __name__ == "__main__":
    main()
