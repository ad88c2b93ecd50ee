"""Which part escalates what: rules, the model's reading, or both, per trade (counts only, never
messages, so the blind trades stay blind).

    python bench/escalation_split.py tests/eval/blind
"""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from wxkf import config as config_mod  # noqa: E402
from wxkf.dialogue import escalation, model  # noqa: E402
from wxkf.dialogue.engine import build_scorer  # noqa: E402
from wxkf.dialogue.evaluate import read_cases  # noqa: E402
from wxkf.dialogue.knowledge import load  # noqa: E402


def main():
    llm = model.load(config_mod.load(env={}).model_path)
    reader = escalation.Reader.for_model(llm)
    print(f"{'trade':12} {'kind':10} {'n':>4} {'rules':>6} {'reader':>7} {'either':>7}")
    for folder in sorted(Path(sys.argv[1]).iterdir()):
        if not (folder / "cases.tsv").exists():
            continue
        scorer = build_scorer(load(folder / "knowledge"), llm)
        counts = {}
        for label, text in read_cases(folder / "cases.tsv"):
            kind = label.partition(":")[0]
            kind = kind if kind in ("escalate", "calm") else "ordinary"
            text = text.split("||")[-1]
            rules = escalation.detect(text) is not None
            read = not escalation.defused(text) and reader.detect(scorer.read(text)) is not None
            c = counts.setdefault(kind, [0, 0, 0, 0])
            c[0] += 1
            c[1] += rules
            c[2] += read
            c[3] += rules or read
        scorer.close()
        for kind, (n, r, m, e) in sorted(counts.items()):
            print(f"{folder.name:12} {kind:10} {n:>4} {r:>6} {m:>7} {e:>7}")


if __name__ == "__main__":
    main()
