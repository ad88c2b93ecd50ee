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
