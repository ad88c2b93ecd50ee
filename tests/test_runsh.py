"""`./run.sh` itself: it starts every process, and however it is stopped it leaves none behind.

Ctrl-C sends SIGINT to the whole foreground process group; `timeout -s INT` signals the script and
then its group again; an impatient user presses Ctrl-C twice. Before the fix the second SIGINT
killed the script half-way through its clean-up and left the embedded Redis and the sandbox running.
"""
import os
import signal
import subprocess
from pathlib import Path

import pytest
import requests

from conftest import ROOT, free_port, wait_for


def _processes():
    """{pid: (session id, state, command line)} of every process on the machine."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone meanwhile
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        out[int(entry.name)] = (int(fields[3]), fields[0], cmdline)
    return out


def _left(session, var_dir):
    """Processes still running that the script started: in its session, or (the embedded Redis,
    which gets a session of its own) naming its var directory."""
    return [cmd for pid, (sid, state, cmd) in _processes().items()
            if state != "Z" and (sid == session or str(var_dir) in cmd)]


@pytest.fixture
def run_sh(tmp_path):
    sandbox = f"127.0.0.1:{free_port()}"
    env = dict(os.environ, WXKF_VAR_DIR=str(tmp_path / "var"), WXKF_BIND=f"127.0.0.1:{free_port()}",
               WXKF_LIVE_BIND=f"127.0.0.1:{free_port()}", WXKF_SANDBOX="true", WXKF_SANDBOX_BIND=sandbox,
               WXKF_API_BASE=f"http://{sandbox}", WXKF_WECOM_API_BASE=f"http://{sandbox}",
               WXKF_MODEL=str(ROOT / "var" / "models" / "gemma-3-270m-q4_k_m.gguf"))
    env.pop("WXKF_REDIS_URL", None)  # the embedded Redis, as a new user runs it
    log = (tmp_path / "run.log").open("w")
    proc = subprocess.Popen(["./run.sh"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    healthz = f"http://{env['WXKF_BIND']}/healthz"

    def healthy():
        try:
            return requests.get(healthz, timeout=1).status_code == 200
        except requests.RequestException:
            return False
    assert wait_for(healthy, timeout=120), (tmp_path / "run.log").read_text()[-3000:]
    assert len(_left(proc.pid, tmp_path / "var")) >= 6  # redis, sandbox, serve, live, worker, the script
    yield proc, tmp_path / "var"
    for pid, (sid, state, cmd) in _processes().items():  # whatever a failed test left
        if state != "Z" and (sid == proc.pid or str(tmp_path / "var") in cmd):
            os.kill(pid, signal.SIGKILL)
    proc.wait(10)
    log.close()


@pytest.mark.parametrize("how", ["ctrl-c", "ctrl-c twice", "sigterm"])
def test_run_sh_stops_everything_it_started(run_sh, how):
    proc, var_dir = run_sh
    if how == "sigterm":
        proc.terminate()
    else:
        os.killpg(proc.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
        if how == "ctrl-c twice":
            wait_for(lambda: "stopping" in (var_dir.parent / "run.log").read_text(), timeout=10)
            os.killpg(proc.pid, signal.SIGINT)
    assert wait_for(lambda: proc.poll() is not None, timeout=120)
    assert wait_for(lambda: not _left(proc.pid, var_dir), timeout=30), _left(proc.pid, var_dir)
    assert "did not stop" not in (var_dir.parent / "run.log").read_text()  # each stopped on its own
