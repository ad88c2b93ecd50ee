"""The real bundled GGUF, as `./run.sh` prepares it, loads through llama-cpp-python once per process."""
import pytest

from wxkf import config as config_mod
from wxkf.dialogue import model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def llm():
    path = config_mod.load(env={}).model_path
    if not path.exists():
        pytest.fail(f"{path} missing: ./run.sh prepares it (wxkf model)")
    return model.load(path)


def test_bundled_base_model_has_no_chat_template(llm):
    assert model.chat_template(llm) is None


def test_loaded_once_per_process(llm):
    assert model.load(config_mod.load(env={}).model_path) is llm


def test_grounded_completion_produces_chinese_text(llm):
    prompt = ("知识库：订单付款后48小时内发货。\n用户：什么时候发货\n客服：订单付款后48小时内发货哦。\n"
              "知识库：可以开具电子发票，开票后发送到您的预留邮箱。\n用户：能开发票吗\n客服：")
    text = model.complete(llm, prompt, max_tokens=32)
    assert text.strip(), "the model produced nothing"
    assert any("\u4e00" <= ch <= "\u9fff" for ch in text)


def test_model_gpu_layers_reaches_llama_cpp_from_the_config(tmp_path):
    """`model_gpu_layers` is what llama.cpp is asked to offload: the engine the worker builds loads the
    model with it (this CPU build then runs every layer on the CPU, and answers the same)."""
    from wxkf.dialogue.engine import engine_from_config
    cfg = config_mod.load(env={"WXKF_MODEL_GPU_LAYERS": "7"}, knowledge=str(tmp_path / "kb"))
    (tmp_path / "kb").mkdir()
    (tmp_path / "kb" / "faq.yaml").write_text(
        "intents:\n  - id: hours\n    title: 营业时间\n    examples: [几点开门, 营业到几点, 周末开吗]\n"
        "    answer: 每天9点到21点营业。\n", encoding="utf-8")
    engine = engine_from_config(cfg, model_scoring=True)
    assert engine.llm.model_params.n_gpu_layers == 7
    assert engine.llm is not model.load(cfg.model_path)  # the default (0) is another load
    assert model.load(cfg.model_path).model_params.n_gpu_layers == 0
