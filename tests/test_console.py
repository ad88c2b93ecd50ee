"""The agent console through Flask's test client: auth, CSRF, the handoff flow, escaping."""
import re

import pytest
from click.testing import CliRunner

from wxkf.agents.accounts import Accounts, AccountError
from conftest import start_worker
from wxkf import keys
from wxkf.cli import main


@pytest.fixture
def accounts(svc):
    acc = Accounts(svc.redis)
    acc.add("alice", "agent", "correct horse")
    acc.add("root", "admin", "battery staple")
    return acc


def csrf(client, path="/console/login"):
    html = client.get(path).get_data(as_text=True)
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def login(client, name="alice", password="correct horse"):
    token = csrf(client)
    return client.post("/console/login", data={"name": name, "password": password, "csrf_token": token})


def escalate(client, builder, sandbox, openid, text="转人工"):
    sandbox.state.interact(openid)
    url, body = builder.request(builder.message(openid, text=text), mode="plain")
    assert client.post(url, data=body).status_code == 200


def run_worker(svc):
    w = start_worker(svc, "console-test")
    for _ in range(3):
        w.run_once(block_ms=50)


@pytest.mark.parametrize("path", ["/console/", "/console/c/o_x"])
def test_pages_need_login(client, accounts, path):
    resp = client.get(path)
    assert resp.status_code == 302 and "/console/login" in resp.headers["Location"]


def test_api_needs_login(client, accounts):
    assert client.get("/console/api/queue").status_code == 401


def test_login_and_logout(client, accounts):
    assert login(client, password="wrong").status_code == 401
    assert login(client).status_code == 302
    assert client.get("/console/").status_code == 200
    token = csrf(client, "/console/")
    client.post("/console/logout", data={"csrf_token": token})
    assert client.get("/console/").status_code == 302


def test_login_is_rate_limited(client, accounts):
    for _ in range(5):
        assert login(client, password="nope").status_code == 401
    assert login(client).status_code == 429  # even the right password, for 15 minutes


def test_session_cookie_is_httponly_and_samesite(client, accounts):
    resp = login(client)
    cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie


def test_a_poll_in_flight_does_not_undo_what_a_form_just_did(client, accounts, builder, sandbox, svc):
    """The open page polls while the agent clicks. A poll answered after the click must not send back
    the session cookie it was sent, or it overwrites the one carrying the click's message (the
    browser test saw '会话已解决' lost this way)."""
    login(client)
    escalate(client, builder, sandbox, "o_race")
    token = csrf(client, "/console/c/o_race")
    before = client.get_cookie("wxkf_session").value
    assert client.post("/console/c/o_race/resolve", data={"csrf_token": token}).status_code == 302
    after = client.get_cookie("wxkf_session").value
    client.set_cookie("wxkf_session", before)  # the poll left before the click
    poll = client.get("/console/api/c/o_race")
    assert poll.status_code == 200 and "Set-Cookie" not in poll.headers
    assert "Set-Cookie" not in client.get("/console/api/queue").headers
    client.set_cookie("wxkf_session", after)
    assert "会话已解决" in client.get("/console/c/o_race").get_data(as_text=True)


def test_post_without_csrf_token_is_refused(client, accounts, builder, sandbox):
    login(client)
    escalate(client, builder, sandbox, "o_csrf")
    resp = client.post("/console/c/o_csrf/handback", data={})
    assert resp.status_code == 400
    assert client.post("/console/login", data={"name": "alice", "password": "correct horse"}).status_code == 400


def test_the_handoff_flow_claim_reply_resolve(client, accounts, builder, sandbox, svc):
    login(client)
    escalate(client, builder, sandbox, "o_flow", text="我要投诉 东西坏了")
    run_worker(svc)  # tells the shopper a human is coming (1 of the 5 messages)
    queue = client.get("/console/api/queue").get_json()["queue"]
    assert [q["openid"] for q in queue] == ["o_flow"] and queue[0]["reason"] == "complaint"
    token = csrf(client, "/console/c/o_flow")
    client.post("/console/c/o_flow/claim", data={"csrf_token": token})
    assert svc.handoffs.get("o_flow")["agent"] == "alice"
    page = client.get("/console/c/o_flow").get_data(as_text=True)
    reply_id = re.search(r'name="reply_id" value="([^"]+)"', page).group(1)
    for _ in range(2):  # a double-submitted form sends once
        client.post("/console/c/o_flow/reply", data={"csrf_token": token, "reply_id": reply_id, "text": "您好，我是小王"})
    run_worker(svc)  # the worker sends what the console queued
    kb = svc.knowledge.get()
    assert [m["text"]["content"] for m in sandbox.sends("o_flow")] == [kb.escalation_reply, "您好，我是小王"]
    client.post("/console/c/o_flow/note", data={"csrf_token": token, "text": "已补发"})
    client.post("/console/c/o_flow/resolve", data={"csrf_token": token})
    assert not svc.handoffs.held("o_flow")
    roles = [t["role"] for t in svc.handoffs.transcript("o_flow")]
    assert "agent" in roles and "note" in roles
    actions = [a["action"] for a in accounts.audit_log()]
    assert {"login", "claim", "reply", "note", "resolve"} <= set(actions)


def test_reply_outside_the_window_is_refused_visibly(client, accounts, svc, sandbox):
    login(client)
    token = csrf(client, "/console/c/o_stranger")
    resp = client.post("/console/c/o_stranger/reply", data={"csrf_token": token, "text": "hi"}, follow_redirects=True)
    assert "48小时窗口已关闭" in resp.get_data(as_text=True)
    run_worker(svc)
    assert sandbox.sends("o_stranger") == []
    # The agent's text is not lost: the transcript keeps it with why it was not sent.
    assert "客服回复未发送" in svc.handoffs.transcript("o_stranger")[-1]["text"]
    assert "hi" in svc.handoffs.transcript("o_stranger")[-1]["text"]


def _escalated_and_claimed(client, builder, sandbox, svc, openid):
    login(client)
    escalate(client, builder, sandbox, openid, text="我要投诉 东西坏了")
    run_worker(svc)
    token = csrf(client, f"/console/c/{openid}")
    client.post(f"/console/c/{openid}/claim", data={"csrf_token": token})
    return token


def test_agent_replies_are_sent_by_the_worker_not_the_web_process(client, accounts, builder, sandbox, svc):
    """The web processes acknowledge pushes and must never wait on WeChat's send API (issue 8, #12):
    the console queues the reply, shows it at once, and the worker sends it exactly once."""
    token = _escalated_and_claimed(client, builder, sandbox, svc, "o_queue")
    sent_before = len(sandbox.state.calls)
    for _ in range(3):  # a form sent three times (double click, reload) is one reply
        resp = client.post("/console/c/o_queue/reply",
                           data={"csrf_token": token, "reply_id": "r-q1", "text": "马上为您处理"})
        assert resp.status_code == 302
    assert sandbox.state.calls[sent_before:] == []  # the web process called nothing at WeChat
    assert [t["text"] for t in svc.handoffs.transcript("o_queue") if t["role"] == "agent"] == ["马上为您处理"]
    assert svc.outbox.waiting() == 1
    run_worker(svc)
    run_worker(svc)
    assert [m["text"]["content"] for m in sandbox.sends("o_queue")][1:] == ["马上为您处理"]
    assert svc.outbox.waiting() == 0
    assert 'wxkf_agent_replies_total{outcome="sent"} 1' in client.get("/metrics").get_data(as_text=True)


def test_an_agent_reply_wechat_refuses_is_said_in_the_transcript(client, accounts, builder, sandbox, svc):
    token = _escalated_and_claimed(client, builder, sandbox, svc, "o_refused")
    sandbox.state.failures.append({"path": "/cgi-bin/message/custom/send", "errcode": 45015, "count": 1})
    client.post("/console/c/o_refused/reply", data={"csrf_token": token, "reply_id": "r-x", "text": "您好"})
    run_worker(svc)
    assert [m["text"]["content"] for m in sandbox.sends("o_refused")][1:] == []
    last = svc.handoffs.transcript("o_refused")[-1]
    assert last["role"] == "system" and "未送达" in last["text"]
    assert any(e["push_id"] == "agent:r-x" for _, e in svc.redis.xrange(keys.UNDELIVERED))
    run_worker(svc)  # said once, not on every round
    assert sum("未送达" in t["text"] for t in svc.handoffs.transcript("o_refused")) == 1


def test_an_agent_reply_taken_by_a_worker_that_died_is_sent_by_another_once(client, accounts, builder, sandbox,
                                                                           svc):
    token = _escalated_and_claimed(client, builder, sandbox, svc, "o_died")
    client.post("/console/c/o_died/reply", data={"csrf_token": token, "reply_id": "r-d", "text": "稍等"})
    # A worker reads the entry and dies before sending: it stays pending under that worker's name.
    svc.redis.xreadgroup("senders", "dead-worker", {keys.OUTBOX: ">"}, count=10)
    run_worker(svc)
    assert [m["text"]["content"] for m in sandbox.sends("o_died")][1:] == []  # not idle long enough yet
    svc.outbox.claim_idle_ms = 0  # as after a minute
    run_worker(svc)
    run_worker(svc)
    assert [m["text"]["content"] for m in sandbox.sends("o_died")][1:] == ["稍等"]
    assert svc.outbox.waiting() == 0


def test_shopper_text_is_escaped(client, accounts, builder, sandbox, svc):
    login(client)
    escalate(client, builder, sandbox, "o_xss", text="转人工<script>alert(1)</script>")
    run_worker(svc)
    page = client.get("/console/c/o_xss").get_data(as_text=True)
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    queue = client.get("/console/").get_data(as_text=True)
    assert "<script>alert(1)" not in queue


def test_user_add_cli(svc, cfg):
    runner = CliRunner()
    env = {"WXKF_REDIS_URL": cfg.redis_url}
    ok = runner.invoke(main, ["user", "add", "bob", "--role", "agent", "--password-stdin"], input="long enough pw\n",
                       env=env)
    assert ok.exit_code == 0, ok.output
    assert Accounts(svc.redis).login("bob", "long enough pw", "1.2.3.4")["role"] == "agent"
    dup = runner.invoke(main, ["user", "add", "bob", "--role", "agent", "--password-stdin"], input="long enough pw\n",
                        env=env)
    assert dup.exit_code == 1 and "exists" in dup.output
    with pytest.raises(AccountError):
        Accounts(svc.redis).add("carol", "agent", "short")


def test_passwords_are_hashed(svc, accounts):
    stored = svc.redis.hget(keys.user("alice"), "pw")
    assert "correct horse" not in stored and stored.startswith(("scrypt:", "pbkdf2:"))


# -- admin: knowledge editing, unanswered questions, statistics ------------------------------------
@pytest.fixture
def kb_copy(svc, tmp_path):
    import dataclasses
    import shutil
    shutil.copytree(svc.config.knowledge_dir, tmp_path / "kb")
    svc.config = dataclasses.replace(svc.config, knowledge=str(tmp_path / "kb"))
    svc.reload_knowledge()
    return tmp_path / "kb"


@pytest.mark.parametrize("path", ["/console/kb", "/console/kb/new", "/console/kb/history"])
def test_agents_cannot_edit_knowledge(client, accounts, kb_copy, path):
    login(client)
    assert client.get(path).status_code == 403
    token = csrf(client, "/console/")
    assert client.post("/console/kb/delete/invoice", data={"csrf_token": token}).status_code == 403


def test_admin_edits_tests_and_rolls_back(client, accounts, kb_copy, svc):
    login(client, "root", "battery staple")
    token = csrf(client, "/console/kb")
    resp = client.post("/console/kb/new", data={"csrf_token": token, "id": "membership", "title": "会员",
                                                "examples": "怎么办会员\n会员有什么好处", "answer": "在「我的-会员」免费开通。"})
    assert resp.status_code == 302
    svc.knowledge.interval = 0
    page = client.post("/console/kb/test", data={"csrf_token": token, "text": "会员怎么办"}).get_data(as_text=True)
    assert "membership" in page and "在「我的-会员」免费开通。" in page
    bad = client.post("/console/kb/edit/invoice", data={"csrf_token": token, "title": "", "examples": "x", "answer": "y"})
    assert bad.status_code == 400 and "aftersale.yaml:" in bad.get_data(as_text=True)
    assert "「title」必须是非空的文字" in bad.get_data(as_text=True)
    assert not re.search(r"/[\w./-]+/aftersale\.yaml", bad.get_data(as_text=True))  # the file's name, no server path
    history = client.get("/console/kb/history").get_data(as_text=True)
    version = re.search(r'/console/kb/rollback/([0-9-]+)', history).group(1)
    client.post(f"/console/kb/rollback/{version}", data={"csrf_token": token})
    assert svc.knowledge.get().intent("membership") is None


def test_unanswered_questions_become_examples(client, accounts, kb_copy, svc, builder, sandbox):
    login(client, "root", "battery staple")
    sandbox.state.interact("o_u")
    url, body = builder.request(builder.message("o_u", text="可以刻字吗"), mode="plain")
    client.post(url, data=body)
    run_worker(svc)
    page = client.get("/console/kb").get_data(as_text=True)
    assert "可以刻字吗" in page
    token = csrf(client, "/console/kb")
    client.post("/console/kb/example", data={"csrf_token": token, "text": "可以刻字吗", "intent": "stock"})
    svc.knowledge.interval = 0
    assert "可以刻字吗" in svc.knowledge.get().intent("stock").examples
    assert "可以刻字吗" not in client.get("/console/kb").get_data(as_text=True).split("没答上来的问题")[1]


def test_unanswered_noise_is_dismissed_and_no_intent_is_preselected(client, accounts, kb_copy, svc):
    login(client, "root", "battery staple")
    svc.redis.zincrby(keys.UNANSWERED, 3, "asdfgh啊啊啊")
    page = client.get("/console/kb").get_data(as_text=True)
    assert '<option value="">选择意图…</option>' in page  # not silently the first intent
    token = csrf(client, "/console/kb")
    unchosen = client.post("/console/kb/example", data={"csrf_token": token, "text": "asdfgh啊啊啊", "intent": ""},
                           follow_redirects=True)
    assert "请先选择要加入的意图" in unchosen.get_data(as_text=True)
    assert svc.redis.zscore(keys.UNANSWERED, "asdfgh啊啊啊") == 3
    done = client.post("/console/kb/unanswered/dismiss", data={"csrf_token": token, "text": "asdfgh啊啊啊"},
                       follow_redirects=True)
    assert "已忽略" in done.get_data(as_text=True)
    assert svc.redis.zscore(keys.UNANSWERED, "asdfgh啊啊啊") is None
    assert "kb_dismiss" in [a["action"] for a in accounts.audit_log()]
    agent = client.post("/console/logout", data={"csrf_token": token})
    assert agent.status_code == 302
    login(client)  # an agent may not dismiss
    svc.redis.zincrby(keys.UNANSWERED, 1, "噪音")
    token = csrf(client, "/console/")
    assert client.post("/console/kb/unanswered/dismiss", data={"csrf_token": token, "text": "噪音"}).status_code == 403
    assert svc.redis.zscore(keys.UNANSWERED, "噪音") == 1


def test_statistics_page(client, accounts, svc, builder, sandbox):
    login(client)
    for openid, text in (("o_s1", "发票怎么开"), ("o_s2", "今天天气怎么样"), ("o_s3", "我要投诉")):
        sandbox.state.interact(openid)
        url, body = builder.request(builder.message(openid, text=text), mode="plain")
        client.post(url, data=body)
    run_worker(svc)
    token = csrf(client, "/console/c/o_s3")
    client.post("/console/c/o_s3/reply", data={"csrf_token": token, "reply_id": "r1", "text": "您好"})
    page = client.get("/console/stats").get_data(as_text=True)
    assert "投诉：1" in page
    assert "今天天气怎么样（1）" in page
    assert re.search(r'id="median">\d+ 秒', page)
    assert 'class="s-knowledge"' in page and 'class="s-escalate"' in page


def test_admin_promotes_an_agent_reply_into_the_knowledge_base(client, accounts, kb_copy, svc, builder, sandbox):
    login(client, "root", "battery staple")
    escalate(client, builder, sandbox, "o_p", text="转人工 我想问能不能刻字")
    run_worker(svc)
    token = csrf(client, "/console/c/o_p")
    client.post("/console/c/o_p/reply", data={"csrf_token": token, "reply_id": "p1", "text": "可以免费刻字，下单备注即可。"})
    page = client.get("/console/c/o_p").get_data(as_text=True)
    link = re.search(r'class="meta promote" href="([^"]+)"', page).group(1).replace("&amp;", "&")
    form = client.get(link).get_data(as_text=True)
    assert "可以免费刻字，下单备注即可。" in form and "转人工 我想问能不能刻字" in form
    client.post("/console/kb/new", data={"csrf_token": token, "id": "engraving", "title": "刻字",
                                         "examples": "能不能刻字", "answer": "可以免费刻字，下单备注即可。"})
    svc.knowledge.interval = 0
    assert svc.knowledge.get().intent("engraving").answer == "可以免费刻字，下单备注即可。"


def test_the_console_opens_with_a_broken_knowledge_base_and_says_what_is_wrong(svc, client, accounts, tmp_path):
    import dataclasses
    import shutil
    from pathlib import Path
    kb = tmp_path / "kb"
    shutil.copytree(Path(__file__).resolve().parent.parent / "knowledge", kb)
    svc.config = dataclasses.replace(svc.config, knowledge=str(kb), var_dir=str(tmp_path / "var"))
    svc.knowledge.get()  # a good start remembers it
    (kb / "orders.yaml").write_text("intents: [\n")
    svc.reload_knowledge()  # as after a restart
    login(client, "root", "battery staple")
    page = client.get("/console/kb")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "上一个正确的版本" in html and "orders.yaml:" in html and str(kb) not in html
    assert client.get("/console/").status_code == 200


@pytest.mark.parametrize("nxt", ["/console/\nSet-Cookie: x=1", "//evil.example/console/", "https://evil.example/",
                                 "/console/../../etc"])
def test_login_never_redirects_to_an_unsafe_next(client, accounts, nxt):
    token = csrf(client)
    resp = client.post("/console/login?next=" + __import__("urllib.parse").parse.quote(nxt),
                       data={"name": "alice", "password": "correct horse", "csrf_token": token})
    assert resp.status_code == 302
    assert resp.headers["Location"] in ("/console/", "http://localhost/console/")


def test_rollback_of_a_malformed_version_is_a_message_not_a_500(client, accounts):
    login(client, "root", "battery staple")
    token = csrf(client, "/console/kb")
    resp = client.post("/console/kb/rollback/abc", data={"csrf_token": token})
    assert resp.status_code in (302, 400)


def test_a_huge_username_leaves_only_a_small_key(client, accounts, r):
    token = csrf(client)
    client.post("/console/login", data={"name": "x" * 400_000, "password": "p", "csrf_token": token})
    names = r.keys(keys.login_failures("*"))
    assert names and all(len(k) < 100 for k in names)
    assert all(len(v) < 100 for v in (r.get(k) for k in names))


def test_parallel_guesses_check_at_most_five_passwords(svc, accounts, monkeypatch):
    import threading
    from wxkf.agents import accounts as accounts_mod
    checked, lock = [], threading.Lock()
    real = accounts_mod.check_password_hash

    def counting(h, p):
        with lock:
            checked.append(p)
        return real(h, p)

    monkeypatch.setattr(accounts_mod, "check_password_hash", counting)
    threads = [threading.Thread(target=accounts.login, args=("alice", f"guess{i}", "9.9.9.9")) for i in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(checked) <= 5
    assert accounts.login("alice", "correct horse", "9.9.9.9") is None  # locked for this address


def test_unknown_names_cost_a_password_check_too(accounts, monkeypatch):
    from wxkf.agents import accounts as accounts_mod
    checked = []
    real = accounts_mod.check_password_hash
    monkeypatch.setattr(accounts_mod, "check_password_hash", lambda h, p: checked.append(p) or real(h, p))
    assert accounts.login("nobody", "whatever1", "1.2.3.4") is None
    assert accounts.login("alice", "whatever1", "1.2.3.4") is None
    assert len(checked) == 2  # same work whether the name exists or not


def test_logout_revokes_the_session_cookie(client, accounts):
    login(client)
    assert client.get("/console/").status_code == 200
    cookie = client.get_cookie("wxkf_session").value
    client.post("/console/logout", data={"csrf_token": csrf(client, "/console/")})
    client.set_cookie("wxkf_session", cookie)  # the old cookie, replayed
    resp = client.get("/console/")
    assert resp.status_code == 302 and "/console/login" in resp.headers["Location"]


def test_behind_a_trusted_proxy_one_clients_failures_do_not_lock_out_another(cfg, r, sandbox, accounts):
    import dataclasses
    from wxkf import create_app
    from wxkf.services import Services
    c = create_app(services=Services(dataclasses.replace(cfg, trusted_proxies=1), redis=r)).test_client()
    for _ in range(6):
        token = csrf(c)
        c.post("/console/login", data={"name": "alice", "password": "wrong pass", "csrf_token": token},
               headers={"X-Forwarded-For": "1.1.1.1"}, environ_base={"REMOTE_ADDR": "10.0.0.1"})
    token = csrf(c)
    ok = c.post("/console/login", data={"name": "alice", "password": "correct horse", "csrf_token": token},
                headers={"X-Forwarded-For": "2.2.2.2"}, environ_base={"REMOTE_ADDR": "10.0.0.1"})
    assert ok.status_code == 302


def test_account_management_from_the_cli(svc, cfg, client):
    runner = CliRunner()
    env = {"WXKF_REDIS_URL": cfg.redis_url}

    def run(*args, input=None):
        return runner.invoke(main, ["user", *args], input=input, env=env)

    assert run("add", "张三", "--role", "agent", "--password-stdin", input="long enough pw\n").exit_code == 0
    assert run("add", "root", "--role", "admin", "--password-stdin", input="battery staple\n").exit_code == 0
    listed = run("list")
    assert listed.exit_code == 0
    assert [line.split("\t")[:2] for line in listed.output.splitlines()] == [["root", "admin"], ["张三", "agent"]]
    # An open login ends when the password changes.
    acc = Accounts(svc.redis)
    sid = acc.open_session("张三")
    assert run("passwd", "张三", "--password-stdin", input="a new long password\n").exit_code == 0
    assert acc.session_user(sid) is None
    assert acc.login("张三", "long enough pw", "1.2.3.4") is None
    assert acc.login("张三", "a new long password", "1.2.3.4")["role"] == "agent"
    # Disabled: no login, even with the right password; enabled again: login works.
    sid = acc.open_session("张三")
    assert run("disable", "张三").exit_code == 0
    assert acc.session_user(sid) is None and acc.get("张三") is None
    assert acc.login("张三", "a new long password", "1.2.3.4") is None
    assert "disabled" in run("list").output
    assert run("enable", "张三").exit_code == 0
    assert acc.login("张三", "a new long password", "1.2.3.5")["role"] == "agent"
    # Locked after failures from two addresses; unlock lifts both.
    for address in ("5.5.5.5", "6.6.6.6"):
        for _ in range(6):
            acc.login("张三", "wrong", address)
        assert acc.locked("张三", address)
    unlocked = run("unlock", "张三")
    assert unlocked.exit_code == 0 and "2 lock(s)" in unlocked.output
    assert not acc.locked("张三", "5.5.5.5") and not acc.locked("张三", "6.6.6.6")
    assert run("delete", "张三", "--yes").exit_code == 0
    assert acc.get("张三") is None
    gone = run("passwd", "张三", "--password-stdin", input="a new long password\n")
    assert gone.exit_code == 1 and "no user" in gone.output


def test_account_cli_says_clearly_when_redis_is_not_reachable(cfg):
    result = CliRunner().invoke(main, ["user", "list"], env={"WXKF_REDIS_URL": "redis://127.0.0.1:9/0"})
    assert result.exit_code == 1
    assert "cannot reach redis://127.0.0.1:9/0" in result.output
    assert "Traceback" not in result.output and result.exception is None or isinstance(result.exception, SystemExit)


ENGLISH_CODES = re.compile(r"\b(waiting|claimed|shopper|bot|system|agent|note|complaint|urgent|request|anger|"
                           r"repeated_failure|knowledge|fallback|suggest|escalate)\b")


def _visible_text(html):
    html = re.sub(r"(?s)<script.*?</script>|<style.*?</style>", "", html)
    return re.sub(r"<[^>]+>", " ", html)


def test_pages_say_statuses_roles_and_reasons_in_chinese_with_times_and_the_shoppers_last_words(
        client, accounts, builder, sandbox, svc):
    login(client)
    escalate(client, builder, sandbox, "o_words", text="我要投诉 东西坏了")
    run_worker(svc)
    token = csrf(client, "/console/c/o_words")
    client.post("/console/c/o_words/claim", data={"csrf_token": token})
    client.post("/console/c/o_words/note", data={"csrf_token": token, "text": "已补发"})
    queue = client.get("/console/").get_data(as_text=True)
    page = client.get("/console/c/o_words").get_data(as_text=True)
    stats = client.get("/console/stats").get_data(as_text=True)
    for html in (queue, page, stats):
        assert not ENGLISH_CODES.findall(_visible_text(html)), ENGLISH_CODES.findall(_visible_text(html))
    assert "投诉" in queue and "已接入" in queue
    assert "我要投诉 东西坏了" in _visible_text(queue)  # the shopper's words, not the bot's handoff line
    assert client.get("/console/api/queue").get_json()["queue"][0]["last"] == "我要投诉 东西坏了"
    text = _visible_text(page)
    assert "顾客" in text and "机器人" in text and "内部备注" in text and "转人工：投诉" in text
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d", text)  # every message with its time


def test_resolve_says_so_and_leaves_no_action_that_no_longer_applies(client, accounts, builder, sandbox, svc):
    login(client)
    escalate(client, builder, sandbox, "o_done")
    run_worker(svc)
    page = client.get("/console/c/o_done").get_data(as_text=True)
    assert "/console/c/o_done/claim" in page and 'data-confirm="确认已解决' in page  # asked before resolving
    token = csrf(client, "/console/c/o_done")
    client.post("/console/c/o_done/claim", data={"csrf_token": token})
    assert "/console/c/o_done/claim" not in client.get("/console/c/o_done").get_data(as_text=True)  # mine now
    done = client.post("/console/c/o_done/resolve", data={"csrf_token": token}, follow_redirects=True)
    html = done.get_data(as_text=True)
    assert "会话已解决，已交还机器人。" in html
    assert not re.search(r"/console/c/o_done/(claim|resolve|handback)", html)
    again = client.post("/console/c/o_done/resolve", data={"csrf_token": token}, follow_redirects=True)
    assert "这个会话已交还机器人。" in again.get_data(as_text=True)


def test_every_conversation_is_listed_searched_filtered_and_paginated(client, accounts, svc):
    import time
    login(client)
    h, now, day = svc.handoffs, time.time(), 86400
    for i in range(65):  # quiet conversations the bot handled, five days ago
        h.clock = lambda i=i: now - 5 * day + i * 60
        h.log(f"o_c{i:02d}", "shopper", f"第{i}个问题")
        h.log(f"o_c{i:02d}", "bot", "回答")
    h.clock = lambda: now - 2 * day  # a complaint an agent resolved, two days ago
    h.start("o_angry", "complaint", 3, via="worker")
    h.log("o_angry", "shopper", "你们的服务太差了")
    h.touch("o_angry", agent="alice", claim=True)
    h.log("o_angry", "agent", "非常抱歉", agent="alice")
    h.end("o_angry", "已解决", who="alice")
    h.clock = time.time  # a WeCom customer, now
    svc.redis.hset(keys.kf_user("wmNow"), "open_kfid", "wkAccount")
    h.log("wmNow", "shopper", "在吗")

    def listed(**args):
        html = client.get("/console/conversations", query_string=args).get_data(as_text=True)
        return re.findall(r'href="/console/c/([^"]+)"', html), html

    first, html = listed()
    assert "共 67 个会话，第 1 / 3 页" in html
    assert first[:2] == ["wmNow", "o_angry"] and len(first) == 30  # newest first
    last, _ = listed(page=3)
    assert last == [f"o_c{i:02d}" for i in range(6, -1, -1)]
    assert listed(q="服务太差")[0] == ["o_angry"]  # by what was said
    assert listed(q="o_c6")[0] == ["o_c64", "o_c63", "o_c62", "o_c61", "o_c60"]  # by id
    assert listed(reason="complaint")[0] == ["o_angry"]  # past handoffs keep their reason
    assert listed(agent="alice")[0] == ["o_angry"]
    assert listed(channel="wecom")[0] == ["wmNow"]
    assert listed(status="human")[0] == []
    two_days_ago = time.strftime("%Y-%m-%d", time.localtime(now - 2 * day))
    assert listed(**{"from": two_days_ago, "to": two_days_ago})[0] == ["o_angry"]
    row = re.search(r"o_angry</a></td>(.*?)</tr>", html, re.S).group(1)
    assert "投诉" in row and "alice" in row and "非常抱歉" not in row and "你们的服务太差了" in row
    assert not ENGLISH_CODES.findall(_visible_text(html))
    _, bad = listed(**{"from": "next tuesday"})
    assert "日期格式应为" in bad and "共 67 个会话" in bad


def test_an_agent_marks_a_bot_answer_wrong_and_an_admin_fixes_it_in_one_step(client, accounts, kb_copy, svc,
                                                                             builder, sandbox):
    login(client)
    sandbox.state.interact("o_wrong")
    url, body = builder.request(builder.message("o_wrong", text="能开发票吗"), mode="plain")
    client.post(url, data=body)
    run_worker(svc)
    page = client.get("/console/c/o_wrong").get_data(as_text=True)
    at = re.search(r'name="at" value="([^"]+)"', page).group(1)  # the bot's answer has the button
    token = csrf(client, "/console/c/o_wrong")
    done = client.post("/console/c/o_wrong/wrong", data={"csrf_token": token, "at": at}, follow_redirects=True)
    assert "已标记为答错" in done.get_data(as_text=True)
    assert client.post("/console/c/o_wrong/wrong", data={"csrf_token": token, "at": "1.0"},
                       follow_redirects=True).get_data(as_text=True).count("找不到这条机器人回复") == 1
    assert any(t["role"] == "note" and "标记机器人答错" in t["text"] for t in svc.handoffs.transcript("o_wrong"))
    client.post("/console/logout", data={"csrf_token": token})
    login(client, "root", "battery staple")
    kb_page = client.get("/console/kb").get_data(as_text=True)
    review = kb_page.split('id="review"')[1].split("</table>")[0]
    assert "能开发票吗" in review and "发票" in review and "alice" in review
    token = csrf(client, "/console/kb")
    client.post("/console/kb/example", data={"csrf_token": token, "text": "能开发票吗", "intent": "coupon"})
    svc.knowledge.interval = 0
    assert "能开发票吗" in svc.knowledge.get().intent("coupon").examples
    assert svc.redis.hlen(keys.REVIEW) == 0
    assert "能开发票吗" not in client.get("/console/kb").get_data(as_text=True).split('id="review"')[1].split("</table>")[0]


def test_admins_see_the_change_before_saving_and_before_rolling_back(client, accounts, kb_copy, svc):
    login(client, "root", "battery staple")
    token = csrf(client, "/console/kb/edit/invoice")
    before = (kb_copy / "aftersale.yaml").read_text()
    form = {"csrf_token": token, "title": "发票", "examples": "能开发票吗\n发票怎么开", "answer": "电子发票24小时内发到邮箱。",
            "version": re.search(r'name="version" value="([^"]*)"',
                                 client.get("/console/kb/edit/invoice").get_data(as_text=True)).group(1)}
    shown = client.post("/console/kb/edit/invoice", data=dict(form, do="preview")).get_data(as_text=True)
    added = re.findall(r'<span class="d-add">([^<]*)</span>', shown)
    removed = re.findall(r'<span class="d-del">([^<]*)</span>', shown)
    assert any("电子发票24小时内发到邮箱" in a for a in added) and removed and "确认保存" in shown
    assert (kb_copy / "aftersale.yaml").read_text() == before  # a preview writes nothing
    bad = client.post("/console/kb/edit/invoice", data=dict(form, title="", do="preview"))
    assert bad.status_code == 400 and "aftersale.yaml:" in bad.get_data(as_text=True)  # checked as a save is
    assert client.post("/console/kb/edit/invoice", data=dict(form, do="save")).status_code == 302
    assert "电子发票24小时内" in (kb_copy / "aftersale.yaml").read_text()
    history = client.get("/console/kb/history").get_data(as_text=True)
    version = re.search(r'href="/console/kb/rollback/([0-9-]+)"', history).group(1)
    page = client.get(f"/console/kb/rollback/{version}").get_data(as_text=True)
    assert any("电子发票24小时内" in d for d in re.findall(r'<span class="d-del">([^<]*)</span>', page))
    assert "电子发票24小时内" in (kb_copy / "aftersale.yaml").read_text()  # not rolled back by looking
    client.post(f"/console/kb/rollback/{version}", data={"csrf_token": token})
    assert (kb_copy / "aftersale.yaml").read_text() == before
    assert client.get("/console/kb/rollback/1-1", follow_redirects=True).status_code == 200


def test_a_new_example_another_intent_already_answers_is_pointed_out_before_saving(client, accounts, kb_copy, svc):
    login(client, "root", "battery staple")
    token = csrf(client, "/console/kb/new")
    shown = client.post("/console/kb/new", data={
        "csrf_token": token, "id": "membership", "title": "会员", "version": "new", "do": "preview",
        "examples": "怎么办会员\n快递到哪了", "answer": "在「我的-会员」免费开通。"}).get_data(as_text=True)
    clashes = shown.split('id="clashes"')[1].split("</div>")[0]
    assert "快递到哪了" in clashes and "物流查询" in clashes  # the logistics intent answers it today
    assert "怎么办会员" not in clashes


def test_the_customer_panel_says_who_this_is(client, accounts, svc):
    login(client)
    h = svc.handoffs
    h.log("o_panel", "shopper", "你好")
    h.start("o_panel", "complaint", 3, via="worker")
    h.log("o_panel", "agent", "您好", agent="alice")
    h.end("o_panel", "已解决")
    h.log("o_panel", "shopper", "还有个问题")
    panel = client.get("/console/c/o_panel").get_data(as_text=True).split('id="customer"')[1].split("</aside>")[0]
    assert "小程序/公众号" in panel and "顾客消息 2 条" in panel and "转人工 1 次" in panel and "alice" in panel
    assert re.search(r"首次咨询：\d{4}-\d\d-\d\d \d\d:\d\d", panel)


def test_console_errors_are_said_in_chinese_without_server_details(client, accounts, svc):
    login(client)  # an agent
    forbidden = client.get("/console/kb")
    assert forbidden.status_code == 403 and "只有管理员能使用知识库页面" in forbidden.get_data(as_text=True)
    missing = client.get("/console/no-such-page")
    assert missing.status_code == 404 and "找不到这个页面" in missing.get_data(as_text=True)
    stale = client.post("/console/c/o_x/note", data={"csrf_token": "wrong", "text": "x"})
    assert stale.status_code == 400 and "请刷新页面后重试" in stale.get_data(as_text=True)
    for page in (forbidden, missing, stale):
        text = _visible_text(page.get_data(as_text=True))
        assert not re.search(r"[A-Za-z]{4,}", text.replace("wxkf", "").replace("CSRF", "").replace("alice", "")), text
    assert client.get("/wechat").status_code == 403  # outside the console: plain text as before
