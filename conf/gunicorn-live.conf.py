# gunicorn for the wxkf live process (`wxkf.wsgi:live`): requests that wait. The console's
# server-sent events (/console/events) and the Mini Program chat page's API (/api/chat waits up to
# api_wait for the answer, /api/messages long-polls up to 25 s). Used by conf/systemd/wxkf-live.service:
#
#   /opt/wxkf/.venv/bin/gunicorn -c /opt/wxkf/conf/gunicorn-live.conf.py wxkf.wsgi:live
#
# It does what `wxkf live` does. Kept apart from the webhook's sync workers so an open page or a
# waiting shopper never holds a process that must acknowledge WeChat within 5 s. nginx routes
# /console/events and /api/ here, unbuffered (conf/nginx/wxkf.conf).
import os

# Loopback only, behind nginx. WXKF_LIVE_BIND is also what wxkf itself reads as live_bind.
bind = os.environ.get("WXKF_LIVE_BIND", "127.0.0.1:8002")

# Threads, not processes: a waiting request costs one idle thread (a stack, no CPU), and one thread
# per process reads Redis's event stream for all of them.
worker_class = "gthread"

# One process: the work here is waiting, not computing, and a single process shares one Redis
# reader among all its pages. Measured: 60 open pages, 62 MiB (README "Live updates").
workers = 1

# Each open console page (queue or conversation) and each waiting /api/chat or long poll holds one
# thread; beyond this many at once, new ones queue. Raise it (WXKF_LIVE_THREADS, the same name as
# wxkf's live_threads) when many shoppers use the chat page at once: threads are cheap.
threads = int(os.environ.get("WXKF_LIVE_THREADS") or 64)

# The arbiter's liveness check of the worker process (not a per-request limit: gthread's main loop
# keeps the heartbeat while streams stay open for an hour).
timeout = 30

# On stop, open streams get 5 s and are then cut; pages reconnect by themselves (EventSource) and
# poll every 3 s meanwhile, long polls are simply repeated by the page.
graceful_timeout = 5

# Keep idle connections from nginx (upstream keepalive) longer than nginx does (60 s), so nginx is
# never the one to reuse a connection gunicorn has just closed (a 502 on a POST /api/chat).
keepalive = 75

# No max_requests here: recycling the process would cut every open stream and waiting request.

# Trust X-Forwarded-Proto only from the local nginx (see gunicorn.conf.py).
forwarded_allow_ips = "127.0.0.1"

# Access log off: stream URLs carry the console's signed tickets (?t=...). WXKF_ACCESS_LOG=- turns it on.
accesslog = os.environ.get("WXKF_ACCESS_LOG") or None
errorlog = "-"
loglevel = os.environ.get("WXKF_LOG_LEVEL", "info").lower()

proc_name = "wxkf-live"

if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
    worker_tmp_dir = "/dev/shm"

# Its own control socket (gunicorn 25.1+), apart from the webhook's: /run/wxkf-live/gunicorn.ctl.
if os.environ.get("RUNTIME_DIRECTORY"):
    control_socket = os.path.join(os.environ["RUNTIME_DIRECTORY"].split(":")[0], "gunicorn.ctl")
