"""The example chat page (docs/miniprogram/pages/chat/chat.js) run under Node with a `wx` that talks
HTTP like the WeChat client, against gunicorn, `wxkf live`, a worker and the sandbox: login, an
answer, escalation and an agent's reply reaching the page, the cache of the last 3 answers and the
offline fallback. `.ci/run` installs Node; elsewhere the test needs it."""
import json
import os
import shutil
import subprocess

import pytest

from conftest import ROOT, free_port, wait_for

NODE = shutil.which("node") or shutil.which("nodejs")


@pytest.fixture
def page_stack(stack):
    if NODE is None:
        if os.environ.get("CI"):
            pytest.fail("Node is not installed: .ci/run installs it")
        pytest.skip("Node is not installed (apt-get install nodejs)")
    stack.start_live()
    stack.start_worker()
    stack.wait_healthy()
    return stack


class PageRunner:
    def __init__(self, stack, sandbox, openid):
        self.proc = subprocess.Popen(
            [NODE, str(ROOT / "tests" / "miniprogram" / "harness.js"),
             str(ROOT / "docs" / "miniprogram" / "pages" / "chat" / "chat.js"), stack.live_url, sandbox.url, openid],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def do(self, command):
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        got = json.loads(self.proc.stdout.readline())
        assert "error" not in got, got["error"]
        return got

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)
        self.proc.stdin.close()
        self.proc.stdout.close()


def test_the_example_page_logs_in_chats_reaches_an_agent_and_survives_a_dead_network(page_stack, sandbox, r):
    from wxkf import keys
    page = PageRunner(page_stack, sandbox, "o_mp_page")
    try:
        assert page.do("load")["token"] is True  # wx.login -> /api/session
        got = page.do("send 能开发票吗")
        bot = got["data"]["messages"][-1]
        assert bot["who"] == "bot" and "发票" in bot["text"] and got["cache"][0]["query"] == "能开发票吗"
        for q in ("怎么退货", "快递到哪了", "可以用优惠券吗"):
            got = page.do(f"send {q}")
        assert [c["query"] for c in got["cache"]] == ["可以用优惠券吗", "快递到哪了", "怎么退货"]  # the last 3

        got = page.do("send 我要投诉，转人工")
        assert got["data"]["escalated"] is True
        assert wait_for(lambda: r.exists(keys.handoff("o_mp_page")))
        # An agent answers in the console (queued for the worker, as the console's reply button does).
        from wxkf.agents.outbox import Outbox
        from wxkf.agents.handoff import Handoffs
        Outbox(r, None, Handoffs(r), None).submit("o_mp_page", "您好，我是客服小王，请说。", "alice", "rep-1")
        got = page.do("wait_agent 20")
        assert [m["text"] for m in got["data"]["messages"] if m["who"] == "agent"] == ["您好，我是客服小王，请说。"]

        page.do(f"base http://127.0.0.1:{free_port()}")  # the network fails
        got = page.do("send 快递到哪了")
        assert got["data"]["offline"] is True
        kept = {c["query"]: c["reply"] for c in got["cache"]}
        assert got["data"]["messages"][-1] == {"who": "bot", "text": kept["快递到哪了"], "cached": True}
        got = page.do("send 你们几点下班")  # never asked before: the offline answer and the contact button
        assert got["data"]["messages"][-1]["notice"] is True and "网络不太好" in got["data"]["messages"][-1]["text"]
    finally:
        page.close()
