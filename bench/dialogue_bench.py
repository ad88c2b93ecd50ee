"""Dialogue benchmarks, printed as the tables in docs/dialogue.md.

    .venv/bin/python bench/dialogue_bench.py [trades|ablation|latency|generation|memory ...]

- trades: every trade through the whole engine, default configuration (the model scoring intents),
  development trades and blind trades reported apart;
- ablation: top-1 over in-scope questions per trade for lexical words+bigrams, + the 词林 thesaurus,
  the model alone (every intent scored), and the default pipeline;
- latency: decision time over the 30-intent telecom knowledge base's messages, default configuration:
  distribution, share that needed the model, messages per second per worker;
- generation: rephrasing approved answers with the model (what sets `generation = false`);
- memory: Redis bytes for 10,000 conversations.
"""
import statistics
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
from wxkf.dialogue.engine import DialogueEngine, build_scorer  # noqa: E402
from wxkf.dialogue.evaluate import evaluate_engine, format_trades, read_cases, trade_folders  # noqa: E402
from wxkf.dialogue.generator import Generator  # noqa: E402
from wxkf.dialogue.intent import IntentClassifier  # noqa: E402
from wxkf.dialogue.knowledge import KnowledgeStore, load  # noqa: E402
from wxkf.store import connect, start_embedded  # noqa: E402

EVAL = ROOT / "tests" / "eval"
SHOP_CASES = EVAL / "trades" / "shop" / "cases.tsv"


def in_scope(folder):
    return [(label, text) for label, text in read_cases(folder / "cases.tsv") if ":" not in label and label != "none"]


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def trades(llm):
    for kind in ("trades", "blind"):
        reports = []
        for folder in trade_folders(EVAL / kind):
            engine = DialogueEngine(KnowledgeStore(folder / "knowledge"), llm=llm).warm_up()
            u = engine.understanding()
            reports.append(evaluate_engine(folder.name, read_cases(folder / "cases.tsv"), engine,
                                           top1=lambda t, u=u: u.read(t).ranked[0].intent_id))
        title = "development trades" if kind == "trades" else "BLIND trades (written by another hand, not tuned on)"
        print(f"## {title}: whole engine, default configuration")
        print(format_trades(reports))
        print()


def ablation(llm, model_every=1):
    print(f"## ablation: top-1 over in-scope held-out questions (model alone and default: every "
          f"{model_every}th message; model alone scores every intent)")
    print(f"{'trade':12s} {'n':>4s} {'words+bigrams':>14s} {'+thesaurus':>11s} {'model alone':>12s} {'default':>8s}")
    for kind in ("trades", "blind"):
        for folder in trade_folders(EVAL / kind):
            kb = load(folder / "knowledge")
            cases = in_scope(folder)
            plain, thes = IntentClassifier(kb, thesaurus=False), IntentClassifier(kb)
            a = sum(plain.rank(t)[0].intent_id == l for l, t in cases) / len(cases)
            b = sum(thes.rank(t)[0].intent_id == l for l, t in cases) / len(cases)
            scorer = build_scorer(kb, llm, max_candidates=len(kb.intents) + 1)
            sample = cases[::model_every]
            hits = 0
            for label, text in sample:
                s = scorer.score(text, [i.id for i in kb.intents])
                hits += max(s, key=lambda k: s[k][0]) == label
            scorer.close()
            u = DialogueEngine(KnowledgeStore(folder / "knowledge"), llm=llm).warm_up().understanding()
            d = sum(u.read(t).ranked[0].intent_id == l for l, t in sample) / len(sample)
            name = folder.name + (" (blind)" if kind == "blind" else "")
            print(f"{name:12s} {len(cases):4d} {a:14.3f} {b:11.3f} {hits / len(sample):12.3f} {d:8.3f}")
    print()


def machine_speed(llm):
    """llama.cpp's own prompt-evaluation and decode speed on this machine now, printed beside every
    latency figure: this VM's speed moves by 3x between days, and a latency means little without it
    (the brief's reference: ~260 tokens/s prompt evaluation, ~33 tokens/s decode, 2 threads)."""
    toks = llm.tokenize(("顾客：你好，请问你们的营业时间是几点到几点？周末也营业吗？我想周六下午过来看看，"
                         "顺便问一下停车方便吗？" * 4).encode())
    llm.reset()
    started = time.perf_counter()
    llm.eval(toks)
    prompt = len(toks) / (time.perf_counter() - started)
    started = time.perf_counter()
    for tok in toks[:64]:
        llm.eval([tok])
    decode = 64 / (time.perf_counter() - started)
    llm.reset()
    return prompt, decode


def latency(llm):
    prompt_tps, decode_tps = machine_speed(llm)
    print(f"## machine now: llama.cpp prompt evaluation {prompt_tps:.0f} tokens/s, decode {decode_tps:.1f} tokens/s "
          f"(reference machine: ~260 and ~33)")
    folder = EVAL / "trades" / "telecom"
    engine = DialogueEngine(KnowledgeStore(folder / "knowledge"), llm=llm).warm_up()
    u = engine.understanding()
    texts = [text for label, text in read_cases(folder / "cases.tsv") if not label.startswith("follow")]
    times, used, cands = [], 0, []
    started = time.perf_counter()
    for text in texts:
        t0 = time.perf_counter()
        engine.decide(Message(kind="text", text=text), Conversation("bench"))
        times.append((time.perf_counter() - t0) * 1000)
    total = time.perf_counter() - started
    for text in texts[::3]:
        r = u.read(text)
        used += r.used_model
        cands.append(r.candidates)
    print(f"## decision latency, {len(u.kb.intents)}-intent knowledge base (telecom), default configuration, "
          f"{len(texts)} messages")
    print(f"p50 {pct(times, .5):.0f} ms  p90 {pct(times, .9):.0f} ms  p95 {pct(times, .95):.0f} ms  "
          f"p99 {pct(times, .99):.0f} ms  max {max(times):.0f} ms  mean {statistics.mean(times):.0f} ms")
    print(f"messages per second per worker: {len(texts) / total:.1f}; model asked for "
          f"{used / len(texts[::3]):.0%} of messages, {statistics.mean(cands):.1f} intents scored on average")
    print(f"scorer preparation (all intents' prompts, at start-up and on knowledge change): "
          f"{u.scorer.prepare_seconds:.1f} s, and reading every intent's examples and title: "
          f"{u.scorer.reading_seconds:.1f} s")
    print()


def generation(llm, rounds=24):
    kb = load(ROOT / "knowledge")
    gen = Generator(llm, budget_seconds=60)  # no budget cut: compare the same work
    cases = [(l, t) for l, t in read_cases(SHOP_CASES) if ":" not in l and l != "none"][::20][:rounds]
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


def conversation_memory(n=10_000):
    tmp = Path(tempfile.mkdtemp(prefix="wxkf-convo-"))
    proc = start_embedded(tmp, persist=False)
    r = connect(f"unix://{tmp / 'redis.sock'}")
    engine = DialogueEngine(KnowledgeStore(ROOT / "knowledge")).warm_up()
    store = ConversationStore(r)
    texts = [t for label, t in read_cases(SHOP_CASES) if ":" not in label]
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
    parts = sys.argv[1:] or ["trades", "ablation", "latency", "generation", "memory"]
    llm = model.load(config_mod.load(env={}).model_path)
    for part in parts:
        {"trades": lambda: trades(llm), "ablation": lambda: ablation(llm, model_every=3),
         "latency": lambda: latency(llm), "generation": lambda: generation(llm),
         "memory": conversation_memory}[part]()


if __name__ == "__main__":
    main()
