"""The local GGUF model, loaded once per process through llama-cpp-python.

The default is the bundled Gemma-3-270m base model, which has no chat template: it is driven with
grounded few-shot completion prompts. A GGUF that carries its own chat template (an -it model,
Qwen, ...) is detected so the generator can use that template instead.
"""
import logging
import threading
from pathlib import Path

log = logging.getLogger("wxkf.model")

_lock = threading.Lock()
_loaded = {}


def load(path, n_ctx=2048, n_threads=2, gpu_layers=0):
    """The llama_cpp.Llama for `path`, loaded at most once per process. `gpu_layers`: layers
    llama.cpp offloads to a GPU (-1: all), when llama-cpp-python was built with a GPU backend; a CPU
    build runs every layer on the CPU whatever it says."""
    path = str(Path(path).resolve())
    key = (path, gpu_layers)
    with _lock:
        if key not in _loaded:
            if not Path(path).is_file():
                raise FileNotFoundError(f"model not found: {path} (run `wxkf model`)")
            import contextlib
            import io
            from llama_cpp import Llama
            with contextlib.redirect_stderr(io.StringIO()):  # llama.cpp's notices, printed via sys.stderr
                _loaded[key] = Llama(model_path=path, n_ctx=n_ctx, n_threads=n_threads, n_gpu_layers=gpu_layers,
                                     verbose=False)
            log.info("model loaded: %s (chat template: %s, GPU layers asked: %s)", Path(path).name,
                     bool(chat_template(_loaded[key])), gpu_layers)
        return _loaded[key]


def chat_template(llm):
    """The GGUF's own chat template, or None (the bundled base model has none)."""
    return (getattr(llm, "metadata", None) or {}).get("tokenizer.chat_template")


def complete(llm, prompt, max_tokens=48, stop=("\n",)):
    """Greedy completion of a few-shot prompt; returns the text."""
    out = llm.create_completion(prompt, max_tokens=max_tokens, temperature=0.0, stop=list(stop))
    return out["choices"][0]["text"]
