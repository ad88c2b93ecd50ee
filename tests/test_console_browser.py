"""The agent console in a real browser (headless Chromium from Debian, driven by Playwright) against
gunicorn, a worker and the WeChat sandbox. `.ci/run` installs Chromium; elsewhere these tests need
`apt-get install chromium` (they are skipped, saying so, when it is missing)."""
import shutil
import subprocess

import pytest

from conftest import BIN, wait_for
from wxkf import keys

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip("Chromium is not installed (apt-get install chromium)", allow_module_level=True)
playwright_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture
def browser():
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        yield b
        b.close()


def add_user(stack, name, role, password):
    subprocess.run([str(BIN / "wxkf"), "user", "add", name, "--role", role, "--password-stdin"], env=stack.env,
                   input=password + "\n", text=True, check=True, capture_output=True)


def push(stack, builder, sandbox, openid, text):
    import requests
    sandbox.state.interact(openid)
    url, body = builder.request(builder.message(openid, text=text))
    return requests.post(stack.url + url, data=body, timeout=5)


def test_agent_handles_an_escalation_in_the_browser(stack, builder, sandbox, browser, r):
    stack.start_live()
    stack.start_worker()
    stack.wait_healthy()
    add_user(stack, "alice", "agent", "correct horse")
    page = browser.new_page()
    page.goto(stack.url + "/console/")
    assert "/console/login" in page.url
    page.fill("input[name=name]", "alice")
    page.fill("input[name=password]", "wrong password")
    page.click("button[type=submit]")
    assert "用户名或密码错误" in page.inner_text("#error")
    page.fill("input[name=name]", "alice")
    page.fill("input[name=password]", "correct horse")
    page.click("button[type=submit]")
    page.wait_for_url(stack.url + "/console/")
    assert "暂无待处理会话" in page.inner_text("#queue")
    page.wait_for_function("window.wxkfLiveState && window.wxkfLiveState.open", timeout=10_000)  # `wxkf live`

    # An escalation arrives while the queue page is open: it appears without a reload, brought by a
    # notice from the live process (polling slows to every 30 s while the stream is open).
    assert push(stack, builder, sandbox, "o_browser", "我要投诉<script>alert(1)</script>").status_code == 200
    page.wait_for_selector("#queue a:has-text('o_browser')", timeout=10_000)
    assert page.evaluate("window.wxkfLiveState.notices") >= 1
    assert page.inner_text("#queue tr td:nth-child(2)") == "投诉"  # the reason, in Chinese

    page.click("#queue a:has-text('o_browser')")
    page.wait_for_selector("#transcript")
    assert wait_for(lambda: sandbox.sends("o_browser"))  # the worker told the shopper a human is coming
    page.reload()
    assert "<script>alert(1)</script>" in page.inner_text("#transcript")  # shown as text
    assert page.evaluate("document.querySelectorAll('#transcript script').length") == 0

    page.click("button:has-text('接入')")
    page.fill("textarea[name=text] >> nth=0", "您好，我是客服小王，马上为您处理。")
    page.press("textarea[name=text] >> nth=0", "Control+Enter")  # sends, as the button does
    page.wait_for_selector("text=您好，我是客服小王")  # shown at once; the worker sends it
    sent = wait_for(lambda: [m["text"]["content"] for m in sandbox.sends("o_browser")][-1] == "您好，我是客服小王，马上为您处理。")
    assert sent, sandbox.sends("o_browser")

    asked = []
    page.once("dialog", lambda d: (asked.append(d.message), d.dismiss()))  # the agent thinks again
    page.click("button:has-text('已解决')")
    assert asked == ["确认已解决？会话将交还机器人。"]
    assert r.exists(keys.handoff("o_browser"))  # dismissed: still with the agent
    page.once("dialog", lambda d: d.accept())
    page.click("button:has-text('已解决')")
    page.wait_for_selector("text=机器人接待中")
    assert "会话已解决" in page.inner_text("body")
    page.goto(stack.url + "/console/")
    assert "o_browser" not in page.inner_text("#queue")


def test_the_queue_polls_when_the_live_process_is_down(stack, builder, sandbox, browser):
    """No `wxkf live` running: the stream cannot open, and the page falls back to polling."""
    stack.start_worker()
    stack.wait_healthy()
    add_user(stack, "bob", "agent", "correct horse")
    page = browser.new_page()
    page.goto(stack.url + "/console/login")
    page.fill("input[name=name]", "bob")
    page.fill("input[name=password]", "correct horse")
    page.click("button[type=submit]")
    page.wait_for_url(stack.url + "/console/")
    assert push(stack, builder, sandbox, "o_polled", "转人工").status_code == 200
    page.wait_for_selector("#queue a:has-text('o_polled')", timeout=15_000)
    assert page.evaluate("[window.wxkfLiveState.open, window.wxkfLiveState.notices]") == [False, 0]


@pytest.fixture
def kb_stack(redis_url, sandbox, tmp_path, r):
    from conftest import ROOT, Stack
    shutil.copytree(ROOT / "knowledge", tmp_path / "kb")
    s = Stack(redis_url, sandbox, tmp_path, knowledge=tmp_path / "kb")
    yield s
    s.stop()


def test_admin_edits_knowledge_and_rolls_back_in_the_browser(kb_stack, browser):
    add_user(kb_stack, "root", "admin", "battery staple")
    page = browser.new_page()
    page.goto(kb_stack.url + "/console/login")
    page.fill("input[name=name]", "root")
    page.fill("input[name=password]", "battery staple")
    page.click("button[type=submit]")
    page.wait_for_url(kb_stack.url + "/console/")
    page.click("text=知识库")
    page.click("#intents tr:has-text('invoice') >> text=编辑")
    page.fill("textarea[name=answer]", "可以开具电子发票，开票后24小时内发送到您的邮箱。")
    page.click("button:has-text('保存')")
    assert "+" in page.inner_text("#diff .d-add") and "24小时内" in page.inner_text("#diff")  # shown first
    assert "24小时" not in (kb_stack.tmp / "kb" / "aftersale.yaml").read_text()  # nothing written yet
    page.click("button:has-text('确认保存')")
    assert "已保存" in page.inner_text(".flash")
    page.wait_for_timeout(1100)  # the web process reloads changed files within a second
    page.fill("input[name=text]", "能开发票吗")
    page.click("button:has-text('测试')")
    assert "24小时内发送到您的邮箱" in page.inner_text("#test-result")
    page.click("text=修改历史")
    page.click("#history tr:nth-child(1) >> a")
    assert "24小时内" in page.inner_text("#diff .d-del")  # what the rollback takes away, before it does
    page.click("button:has-text('确认回滚')")
    assert "已回滚" in page.inner_text(".flash")
    assert "24小时" not in (kb_stack.tmp / "kb" / "aftersale.yaml").read_text()


PAGES = ["/console/", "/console/conversations", "/console/c/o_wide", "/console/stats", "/console/kb",
         "/console/kb/history", "/console/kb/edit/invoice", "/console/kb/new"]

# Horizontal overflow, and visible table cells squeezed to one or two characters a line.
LAYOUT_CHECK = """() => {
  const doc = document.documentElement;
  const squeezed = c => {  // some run of its text wrapped into lines of fewer than 3 characters
    const walker = document.createTreeWalker(c, NodeFilter.SHOW_TEXT);
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
      const text = node.textContent.trim();
      if (text.length <= 3) continue;
      const range = document.createRange();
      range.selectNodeContents(node);
      const lines = new Set([...range.getClientRects()].filter(r => r.width > 0).map(r => Math.round(r.top))).size;
      if (lines > 1 && text.length / lines < 3) return true;
    }
    return false;
  };
  const narrow = [...document.querySelectorAll('td, th')].filter(c => c.offsetParent !== null && squeezed(c))
    .map(c => c.innerText.trim().slice(0, 20));
  return {overflow: doc.scrollWidth - window.innerWidth, narrow: narrow.slice(0, 5)};
}"""


def test_every_page_fits_a_phone_and_a_desktop(kb_stack, browser, sandbox, builder, tmp_path):
    """No page scrolls sideways or squeezes a column to a character or two, at 390 and 1280 px.
    With WXKF_SCREENSHOTS=DIR the pages are also saved there (docs/screenshots/ holds the last set)."""
    import os
    from pathlib import Path
    shots = Path(os.environ.get("WXKF_SCREENSHOTS") or tmp_path)
    add_user(kb_stack, "root", "admin", "battery staple")
    kb_stack.start_worker()
    kb_stack.wait_healthy()
    assert push(kb_stack, builder, sandbox, "o_wide", "我要投诉，东西坏了，" * 8).status_code == 200
    assert wait_for(lambda: sandbox.sends("o_wide"))
    for width, height in ((390, 844), (1280, 800)):
        page = browser.new_page(viewport={"width": width, "height": height})
        page.goto(kb_stack.url + "/console/login")
        page.fill("input[name=name]", "root")
        page.fill("input[name=password]", "battery staple")
        page.click("button[type=submit]")
        page.wait_for_url(kb_stack.url + "/console/")
        for path in PAGES:
            page.goto(kb_stack.url + path)
            found = page.evaluate(LAYOUT_CHECK)
            assert found == {"overflow": 0, "narrow": []}, f"{path} at {width} px: {found}"
            name = path.strip("/").replace("/", "-").replace("console", "").strip("-") or "queue"
            page.screenshot(path=str(shots / f"{name}-{width}.png"), full_page=True)
        page.close()
