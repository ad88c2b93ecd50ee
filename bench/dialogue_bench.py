"""Dialogue benchmarks: classification speed and accuracy, generation against raw llama-cpp-python,
end-to-end reply latency from `wxkf chat --json`, and Redis memory for 10,000 conversations.

    .venv/bin/python bench/dialogue_bench.py
"""
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from wxkf import config as config_mod  # noqa: E402
from wxkf.dialogue import model  # noqa: E402
from wxkf.dialogue.conversation import ConversationStore  # noqa: E402
from wxkf.dialogue.decision import Conversation, Message  # noqa: E402
from wxkf.dialogue.engine import ANSWER_AT, DialogueEngine  # noqa: E402
from wxkf.dialogue.evaluate import evaluate, read_cases  # noqa: E402
from wxkf.dialogue.generator import Generator  # noqa: E402
from wxkf.dialogue.intent import IntentClassifier  # noqa: E402
from wxkf.dialogue.knowledge import KnowledgeStore, load  # noqa: E402
from wxkf.store import connect, start_embedded  # noqa: E402

EVAL = ROOT / "tests" / "eval"


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def classification():
    kb = load(ROOT / "knowledge")
    clf = IntentClassifier(kb)
    clf.rank("你好")
    print("## classification (no model)")
    for name in ("intents.tsv", "intents_blind.tsv"):
        cases = read_cases(EVAL / name)
        times = []

        def predict(text):
            started = time.perf_counter()
            top = clf.rank(text)[0]
            times.append((time.perf_counter() - started) * 1000)
            return top.intent_id, (top.intent_id if top.confidence >= ANSWER_AT else None)

        report = evaluate(cases, predict)
        print(f"{name:20s} cases {len(cases):4d}  top-1 {report['top1_accuracy']:.3f}  "
              f"direct-answer precision {report['answered_precision']:.3f}  "
              f"ms/message mean {statistics.mean(times):.2f} p50 {pct(times, .5):.2f} p95 {pct(times, .95):.2f}")


def generation(llm, rounds=24):
    kb = load(ROOT / "knowledge")
    gen = Generator(llm, budget_seconds=60)  # no budget cut: compare the same work
    cases = [(l, t) for l, t in read_cases(EVAL / "intents.tsv") if l != "none"][::13][:rounds]
    raw_t, raw_tok, wx_t, wx_tok, verdicts = [], [], [], [], {}

    def raw(question, answer):
        started = time.perf_counter()
        n = 0
        for _ in llm.create_completion(gen.prompt(question, answer), max_tokens=gen.max_tokens, temperature=0.0,
                                       stop=["\n", "顾客：", "知识库："], stream=True):
            n += 1
        return time.perf_counter() - started, n

    for i, (label, question) in enumerate(cases):
        answer = kb.intent(label).answer
        order = (0, 1) if i % 2 == 0 else (1, 0)
        for which in order:
            if which == 0:
                t, n = raw(question, answer)
                raw_t.append(t)
                raw_tok.append(n)
            else:
                out = gen.phrase(question, answer, kb.persona)
                wx_t.append(out.seconds)
                wx_tok.append(out.tokens)
                verdicts[out.reason] = verdicts.get(out.reason, 0) + 1
    print("## generation (same prompt, greedy, 2 threads; interleaved, alternating who goes first)")
    for name, ts, toks in (("raw llama-cpp-python", raw_t, raw_tok), ("wxkf Generator.phrase", wx_t, wx_tok)):
        print(f"{name:24s} reply p50 {pct(ts, .5) * 1000:6.0f} ms  p95 {pct(ts, .95) * 1000:6.0f} ms  "
              f"tokens/s {sum(toks) / sum(ts):5.1f}  mean tokens {statistics.mean(toks):.1f}")
    print(f"guard verdicts over {len(cases)} replies: {verdicts}")


def chat_latency():
    lines = [t for l, t in read_cases(EVAL / "intents.tsv") if l != "none"][::6]
    print("## end-to-end reply latency, `wxkf chat --json` (ms as reported per reply)")
    for flag in ("--no-generation", "--generation"):
        out = subprocess.run([str(Path(sys.executable).parent / "wxkf"), "chat", "--json", flag],
                             input="\n".join(lines) + "\n", capture_output=True, text=True, check=True).stdout
        rows = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
        by = {}
        for r in rows:
            by.setdefault(r["source"], []).append(r["ms"])
        print(f"{flag:16s} " + "  ".join(f"{src}: n={len(ms)} p50 {pct(ms, .5):.1f} p95 {pct(ms, .95):.1f}"
                                        for src, ms in sorted(by.items())))


def conversation_memory(n=10_000):
    tmp = Path(tempfile.mkdtemp(prefix="wxkf-convo-"))
    proc = start_embedded(tmp, persist=False)
    r = connect(f"unix://{tmp / 'redis.sock'}")
    engine = DialogueEngine(KnowledgeStore(ROOT / "knowledge")).warm_up()
    store = ConversationStore(r)
    texts = [t for _, t in read_cases(EVAL / "intents.tsv")]
    before = r.info("memory")["used_memory"]
    for i in range(n):
        convo = Conversation(f"oABCDEFGHIJKLMNOPQRSTUVW{i:05d}")  # openids are 28 characters
        for j in range(5):
            engine.decide(Message(kind="text", text=texts[(i * 5 + j) % len(texts)]), convo)
        store.save(convo)
    after = r.info("memory")["used_memory"]
    print("## conversation state in Redis")
    print(f"{n} conversations x 5 exchanges: {(after - before) / 1e6:.2f} MB "
          f"({(after - before) / n:.0f} bytes each, key + JSON + TTL)")
    proc.terminate()


def main():
    classification()
    llm = model.load(config_mod.load(env={}).model_path)
    generation(llm)
    chat_latency()
    conversation_memory()


if __name__ == "__main__":
    main()
