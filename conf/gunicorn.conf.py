# gunicorn for the wxkf webhook (`wxkf.wsgi:app`): WeChat's and WeCom's pushes, the console's pages,
# /healthz and /metrics. Used by conf/systemd/wxkf-web.service:
#
#   /opt/wxkf/.venv/bin/gunicorn -c /opt/wxkf/conf/gunicorn.conf.py wxkf.wsgi:app
#
# It does what `wxkf serve` does (sync workers, timeout 30, graceful 10) plus what a long-running
# production service wants. Always behind nginx (conf/nginx/wxkf.conf): sync workers read requests
# themselves, so without a buffering proxy a few slow clients hold them all (README "Behind a proxy").
#
# Settings come from the environment, under the names wxkf's own config uses (WXKF_BIND,
# WXKF_WEB_WORKERS, WXKF_LOG_LEVEL), so the unit's Environment= lines are the one place to change them.
# Note: this file does not read wxkf.toml; `bind` / `web_workers` written there are only used by
# `wxkf serve`, not by this gunicorn.
import os


def _cores():
    """CPUs this process may run on (honours taskset/cpuset, unlike os.cpu_count())."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


# Loopback only: nginx is the sole client. Never bind a public address (the sync workers are not
# safe facing the internet directly, see above).
bind = os.environ.get("WXKF_BIND", "127.0.0.1:8000")

# Sync workers: one request at a time per process. A push costs ~1 ms of CPU plus a Redis round
# trip and never waits on WeChat or the model (the worker processes do that), so plain processes
# are the fastest and simplest choice; nothing slow runs here. Requests that wait (the console's
# live updates, /api/chat, long polls) are served by the separate live process (gunicorn-live.conf.py).
worker_class = "sync"

# 2 per core: part of each push is spent waiting on Redis, so two processes keep a core busy
# (the figure README "Configuration" gives for web_workers). Override with WXKF_WEB_WORKERS.
workers = int(os.environ.get("WXKF_WEB_WORKERS") or 2 * _cores())

# A worker silent for 30 s is killed and replaced. Nothing legitimate takes that long here:
# WeChat itself gives up on a push after 5 s and retries it (dedup drops the duplicate).
timeout = 30

# On stop/reload, requests in flight get 10 s to finish; they take milliseconds. Keep systemd's
# TimeoutStopSec above this (wxkf-web.service: 20 s).
graceful_timeout = 10

# Replace each worker after ~20,000 requests, so a slow leak (in a library, or in ours) can never
# grow without bound. The jitter spreads the restarts so the workers never recycle all at once;
# a fresh worker imports the app (about a second), while its siblings keep acknowledging.
max_requests = 20000
max_requests_jitter = 2000

# Trust X-Forwarded-Proto (the request came in over HTTPS) only from the local nginx. The client's
# address, for login throttling, is read by wxkf itself from X-Forwarded-For once `trusted_proxies = 1`
# is set in wxkf.toml; nginx replaces that header with $remote_addr, so a client cannot forge it.
forwarded_allow_ips = "127.0.0.1"

# No preloading: each worker imports the app after the fork and opens its own Redis connections
# (a connection shared across a fork is corrupted by concurrent use).
preload_app = False

# Access log off: nginx keeps one already, and request lines carry WeChat's signatures and the
# console's stream tickets. Set WXKF_ACCESS_LOG=- (stderr, i.e. the journal) or a file to turn it on.
accesslog = os.environ.get("WXKF_ACCESS_LOG") or None
# gunicorn's own messages (worker boots, timeouts) go to stderr, i.e. the systemd journal. wxkf's
# application log is set up by wxkf from its log_level.
errorlog = "-"
loglevel = os.environ.get("WXKF_LOG_LEVEL", "info").lower()

# Shown in ps/top: tells the webhook's gunicorn from the live process's.
proc_name = "wxkf-web"

# The worker heartbeat file on tmpfs rather than disk, so a busy disk cannot stall the heartbeat
# and get healthy workers killed as "timed out".
if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
    worker_tmp_dir = "/dev/shm"

# gunicorn 25.1+ opens a control socket, by default under $HOME/.gunicorn/ - the same path for the
# web and the live gunicorn of the same user. Under systemd put it in the unit's own
# RuntimeDirectory (/run/wxkf-web); older gunicorn ignores this setting.
if os.environ.get("RUNTIME_DIRECTORY"):
    control_socket = os.path.join(os.environ["RUNTIME_DIRECTORY"].split(":")[0], "gunicorn.ctl")
