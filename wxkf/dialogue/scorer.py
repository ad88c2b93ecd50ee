"""Generative intent scoring with the local model: how likely is the customer's message after a prompt
that describes an intent?

For each intent the prompt is "customers asking about «title» (the approved answer) wrote:" followed by
the intent's examples, one per line; the score is log P(message + newline | prompt), summed over the
message's tokens. A base model that has read a lot of Chinese knows that "明早六点的飞机 房卡放哪" is
the kind of thing people write about checking out, with no word list for hotels: this is the part of
wxkf that understands phrasings no example covers. A trade-wide prompt (one example of every intent)
scores the message too; how much better the best intent explains it (pointwise mutual information)
is how out-of-scope questions are recognised.

Speed: every prompt is evaluated once, when the knowledge base is loaded, into its own sequence of one
llama.cpp context (one KV cache for all, `kv_unified`). Scoring a message then costs one `llama_decode`
of (message tokens + 1) per candidate intent in a single batch, and removing those tokens again: about
4 ms a token on 2 cores, so 4 candidates of a 12-token message take ~0.2 s. Only the first
`max_message_tokens` tokens of a message are scored, so any length works.
"""
import contextlib
import ctypes
import io
import logging
import threading
import time

import numpy as np

log = logging.getLogger("wxkf.scorer")

NEUTRAL = "__neutral__"
"""Key of the neutral prompt, scored beside the candidates."""

NEUTRAL_PROMPT = "以下是顾客发给客服的消息：\n"

READING = "__reading__"
"""Key of the trade-independent prompt (NEUTRAL_PROMPT alone) after which `read` takes the model's
hidden states of a message."""


def neutral_prompt(examples):
    """The trade-wide prompt: customers of this shop writing about anything it answers (one example of
    each intent). Measured against it, an out-of-scope question about the trade ("有停车场吗" at a
    hotel without a parking intent) gains nothing from the best intent's prompt, while a generic
    prompt made every trade question look in scope (docs/dialogue.md)."""
    return NEUTRAL_PROMPT + "".join(f"{e}\n" for e in examples)

_CHUNK = 16
"""Rows of logits normalised at a time."""

MAX_SEQUENCES = 250
"""llama.cpp allows 256 sequences in one context; intents beyond this are not model-scored."""


def intent_prompt(title, examples, answer=None, answer_chars=60):
    """The prompt an intent's messages are scored after."""
    about = f"「{title}」"
    if answer:
        about += f"（客服回答：{answer[:answer_chars]}）"
    lines = "".join(f"{e}\n" for e in examples)
    return f"以下是顾客关于{about}的提问：\n{lines}"


class ModelScorer:
    """log P(message | prompt) for many prompts kept in one llama.cpp context."""

    def __init__(self, llm, prompts, n_threads=2, max_message_tokens=40, max_candidates=16):
        import llama_cpp
        self._ll = llama_cpp
        self.llm = llm
        self.max_message_tokens = max_message_tokens
        self.max_candidates = max_candidates
        self._lock = threading.Lock()
        self._buf = None
        self.centroids = {}   # intent id -> unit vector in reading space (learn_readings)
        self._standard = None
        self.reading_seconds = 0.0
        self.n_embd = llama_cpp.llama_model_n_embd(llm.model)
        prompts = dict(prompts)
        prompts.setdefault(NEUTRAL, NEUTRAL_PROMPT)
        prompts[READING] = NEUTRAL_PROMPT
        keys = list(prompts)[:MAX_SEQUENCES]
        if len(prompts) > MAX_SEQUENCES:
            log.warning("%d intents: only the first %d are scored by the model", len(prompts) - 1, MAX_SEQUENCES - 1)
        self.seq = {k: i for i, k in enumerate(keys)}
        self.tokens = {k: self._tokenize(prompts[k], bos=True) for k in keys}
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(llm.model))
        total = sum(len(t) for t in self.tokens.values())
        room = max_candidates * (max_message_tokens + 2)
        self.n_batch = max(512, room)
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = total + room + 256
        params.n_batch = self.n_batch
        params.n_ubatch = self.n_batch
        params.n_seq_max = len(keys)
        params.n_threads = params.n_threads_batch = n_threads
        params.kv_unified = True
        params.swa_full = True
        params.no_perf = True
        # llama.cpp prints a notice per context through llama-cpp-python's callback onto sys.stderr.
        with contextlib.redirect_stderr(io.StringIO()):
            self.ctx = llama_cpp.llama_init_from_model(llm.model, params)
        if not self.ctx:
            raise RuntimeError("could not create a llama.cpp context for intent scoring")
        self.mem = llama_cpp.llama_get_memory(self.ctx)
        self.batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        started = time.monotonic()
        self._evaluate_prompts()
        self.prepare_seconds = time.monotonic() - started
        log.info("intent scorer ready: %d prompts, %d tokens in %.1f s", len(keys), total, self.prepare_seconds)

    def close(self):
        if getattr(self, "batch", None) is not None:
            self._ll.llama_batch_free(self.batch)
            self.batch = None
        if getattr(self, "ctx", None):
            self._ll.llama_free(self.ctx)
            self.ctx = None

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass

    def _tokenize(self, text, bos=False):
        return self.llm.tokenize(text.encode("utf-8"), add_bos=bos, special=False)

    def _fill(self, rows):
        """rows: (token, pos, seq, wants_logits). Decodes them as one batch."""
        b = self.batch
        for i, (tok, pos, seq, logits) in enumerate(rows):
            b.token[i] = tok
            b.pos[i] = pos
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = seq
            b.logits[i] = logits
        b.n_tokens = len(rows)
        rc = self._ll.llama_decode(self.ctx, b)
        if rc != 0:
            raise RuntimeError(f"llama_decode failed ({rc})")

    def _evaluate_prompts(self):
        # Every prompt but its last token: the last one is decoded with each message, so that its
        # logits (the first message token's probability) are computed then.
        rows = [(tok, pos, self.seq[k], False) for k, toks in self.tokens.items() for pos, tok in enumerate(toks[:-1])]
        for i in range(0, len(rows), self.n_batch):
            self._fill(rows[i:i + self.n_batch])

    def message_tokens(self, text):
        toks = self._tokenize(text.strip().replace("\n", " ") + "\n")
        if len(toks) > self.max_message_tokens:
            toks = toks[:self.max_message_tokens]
        return toks

    def score(self, text, keys):
        """{key: (log P(message | prompt), number of message tokens)} for the given keys."""
        keys = [k for k in dict.fromkeys(keys) if k in self.seq][:self.max_candidates]
        msg = self.message_tokens(text)
        if not keys or not msg:
            return {}
        with self._lock:
            rows, spans = [], []
            for k in keys:
                toks, seq = self.tokens[k], self.seq[k]
                start = len(toks) - 1
                seq_rows = [(toks[-1], start, seq, True)] + [
                    (t, start + 1 + j, seq, j < len(msg) - 1) for j, t in enumerate(msg)]
                spans.append((k, len(rows)))
                rows += seq_rows
            try:
                self._fill(rows)
                out = self._collect(rows, spans, msg)
            finally:
                for k in keys:
                    self._ll.llama_memory_seq_rm(self.mem, self.seq[k], len(self.tokens[k]) - 1, -1)
        return out

    def read(self, text):
        """The model's reading of a message: its final hidden states (640 numbers for Gemma-3-270m)
        averaged over the message's tokens after the trade-independent READING prompt, the features
        of the escalation reader (escalation.Reader). Read after a trade's own prompt they told
        escalations apart worse in trades the reader was not fitted on (docs/dialogue.md). One decode
        of the message's tokens, ~10 ms a token: with embeddings on, llama.cpp outputs every row."""
        msg = self.message_tokens(text) if text.strip() else []
        if not msg or READING not in self.seq:
            return None
        toks, seq = self.tokens[READING], self.seq[READING]
        start = len(toks) - 1
        rows = [(toks[-1], start, seq, True)] + [(t, start + 1 + j, seq, True) for j, t in enumerate(msg)]
        with self._lock:
            self._ll.llama_set_embeddings(self.ctx, True)
            try:
                self._fill(rows)
                ptr = self._ll.llama_get_embeddings(self.ctx)
                hidden = np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)),
                                               shape=(len(rows), self.n_embd))
                return hidden[1:].mean(axis=0, dtype=np.float64).astype(np.float32)
            finally:
                self._ll.llama_set_embeddings(self.ctx, False)
                self._ll.llama_memory_seq_rm(self.mem, seq, start, -1)

    def learn_readings(self, texts, mean, scale):
        """Where each intent lies in reading space: the mean of its texts' readings (`read`), after
        standardising with `mean` and `scale` (the escalation reader's, fitted with the model), as a
        unit vector. `texts`: {intent id: [its examples and title]}. ~0.1 s a text, at load time."""
        started = time.monotonic()
        centroids = {}
        for intent_id, items in texts.items():
            vecs = [(v - mean) / scale for v in (self.read(t) for t in items) if v is not None]
            if vecs:
                c = np.mean(vecs, axis=0)
                centroids[intent_id] = c / (np.linalg.norm(c) + 1e-9)
        self._standard = (mean, scale)
        self.centroids = centroids
        self.reading_seconds = time.monotonic() - started

    def nearest(self, reading, k):
        """[(intent id, cosine)] of the `k` intents whose readings are most like this message's, best
        first."""
        if not self.centroids or reading is None:
            return []
        mean, scale = self._standard
        u = (reading - mean) / scale
        u = u / (np.linalg.norm(u) + 1e-9)
        cos = {i: float(u @ c) for i, c in self.centroids.items()}
        return sorted(cos.items(), key=lambda p: -p[1])[:k]

    def _collect(self, rows, spans, msg):
        # Logits come back in batch order for the rows that asked for them.
        n_out = sum(1 for r in rows if r[3])
        ptr = self._ll.llama_get_logits(self.ctx)
        logits = np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)),
                                       shape=(n_out, self.n_vocab))
        # The log-softmax normaliser of each row, 16 rows at a time in one reused 16 MB buffer: fresh
        # 50 MB temporaries per message cost more in page faults than the arithmetic.
        if self._buf is None:
            self._buf = np.empty((_CHUNK, self.n_vocab), dtype=np.float32)
        lse = np.empty(n_out)
        for i in range(0, n_out, _CHUNK):
            rows = logits[i:i + _CHUNK]
            buf = self._buf[:len(rows)]
            top = rows.max(axis=1, keepdims=True)
            np.subtract(rows, top, out=buf)
            np.exp(buf, out=buf)
            lse[i:i + len(rows)] = np.log(buf.sum(axis=1, dtype=np.float64)) + top[:, 0]
        out, row = {}, 0
        for k, _ in spans:
            idx = np.arange(row, row + len(msg))
            out[k] = (float((logits[idx, msg] - lse[idx]).sum()), len(msg))
            row += len(msg)
        return out
