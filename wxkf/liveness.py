"""Which workers are alive: a small sorted set of names scored by when their liveness expires.

Read by /healthz and /metrics (one range query, never a scan of the keyspace) and by the workers
themselves to share the shards evenly. No Flask here: the worker process imports it.
"""
import time

from . import keys


def alive_workers(r, now=None):
    """Names of the workers whose liveness has not expired: one range query on a small sorted set."""
    return sorted(r.zrangebyscore(keys.WORKERS, now or time.time(), "+inf"))


def beat(r, name, seconds, now=None):
    """Mark `name` alive for `seconds`; forget workers that expired long ago."""
    now = now or time.time()
    pipe = r.pipeline(transaction=False)
    pipe.zadd(keys.WORKERS, {name: now + seconds})
    pipe.zremrangebyscore(keys.WORKERS, "-inf", now - 3600)
    pipe.execute()


def gone(r, name):
    r.zrem(keys.WORKERS, name)
