#!/usr/bin/env bash
# wxkf in two commands:
#   ./run.sh         set up (venv, install, model, embedded Redis) and run the webhook + worker
#   ./run.sh test    the same set-up, then the whole test suite
# Environment: WXKF_CONFIG (default conf/wxkf.toml), WXKF_REDIS_URL (unset: embedded Redis under var/),
# any WXKF_<KEY> config override, PYTHON (interpreter for the venv, default python3).
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$PWD
VENV=$ROOT/.venv
PY=${PYTHON:-python3}

# llama.cpp's default -march=native build also compiles AMX kernels, which die with SIGILL on
# machines whose CPU reports AMX but whose kernel or hypervisor does not grant it (seen on this
# project's 2-core VMs). Build for a portable x86-64 baseline instead (AVX2/FMA, plus AVX-512 where
# present); elsewhere (ARM) the native build is fine.
llama_cmake_args() {
  local args="-DLLAVA_BUILD=OFF"
  if [ "$(uname -m)" = x86_64 ]; then
    args="$args -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
    if grep -qw avx512f /proc/cpuinfo && grep -qw avx512bw /proc/cpuinfo && grep -qw avx512vl /proc/cpuinfo; then
      args="$args -DGGML_AVX512=ON"
    fi
  fi
  echo "${CMAKE_ARGS:-$args}"
}

say() { printf '\033[1mwxkf:\033[0m %s\n' "$*" >&2; }

setup() {
  if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    say "Python 3.11 or newer is required (found: $("$PY" --version 2>&1)). Set PYTHON=/path/to/python3.11."
    exit 1
  fi
  if [ ! -x "$VENV/bin/python" ]; then
    say "creating $VENV"
    "$PY" -m venv "$VENV"
  fi
  # Reinstall only when the dependencies changed; llama-cpp-python compiles for ~10 minutes the
  # first time on a small machine (pip keeps the built wheel for next time).
  local want have
  want=$(cat setup.cfg pyproject.toml | sha256sum | cut -d' ' -f1)
  have=$(cat "$VENV/.wxkf-installed" 2>/dev/null || true)
  if [ "$want" != "$have" ] || ! "$VENV/bin/python" -c 'import wxkf, llama_cpp' 2>/dev/null; then
    say "installing wxkf and its dependencies (the first time compiles llama.cpp: ~10 minutes on 2 cores)"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip setuptools wheel
    CMAKE_ARGS="$(llama_cmake_args)" "$VENV/bin/python" -m pip install --progress-bar off -e ".[test]"
    echo "$want" > "$VENV/.wxkf-installed"
  fi
  "$VENV/bin/wxkf" config >/dev/null  # stops here naming every bad config key
  "$VENV/bin/wxkf" model
  local rc=0
  "$VENV/bin/wxkf" model --check >/dev/null 2>&1 || rc=$?
  if [ "$rc" -eq 132 ]; then
    # SIGILL: a llama-cpp-python wheel built for another CPU (e.g. -march=native elsewhere, then
    # reused from pip's cache). Drop the cached wheel and rebuild it for this machine.
    say "the installed llama-cpp-python cannot run on this CPU; rebuilding it (~10 minutes)"
    "$VENV/bin/python" -m pip cache remove llama_cpp_python >/dev/null 2>&1 || true
    CMAKE_ARGS="$(llama_cmake_args)" "$VENV/bin/python" -m pip install --progress-bar off \
      --force-reinstall --no-deps "llama-cpp-python==$(llama_version)"
    rc=0
  fi
  [ "$rc" -eq 0 ] || { say "the model does not load:"; "$VENV/bin/wxkf" model --check; }
}

llama_version() { "$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("llama-cpp-python"))'; }

PIDS=()
# SIGTERM, and SIGKILL if the process has not stopped 30 s later (a worker finishes the message in
# hand within seconds), so the script never hangs on the way out.
stop_process() {
  local pid=$1 n=0
  kill "$pid" 2>/dev/null || return 0
  while kill -0 "$pid" 2>/dev/null && [ $n -lt 300 ]; do sleep 0.1; n=$((n + 1)); done
  if kill -0 "$pid" 2>/dev/null; then
    say "process $pid did not stop within 30 s of SIGTERM; killing it"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  # Ignored, not reset: a second Ctrl-C (or `timeout -s INT`, which signals the script and then its
  # whole process group) would otherwise kill the script half-way, leaving Redis and the sandbox
  # running. Each process below stops within seconds.
  trap '' INT TERM
  trap - EXIT
  if [ ${#PIDS[@]} -gt 0 ]; then
    say "stopping"
    # Newest first: the worker and web server finish with Redis still there; Redis stops last.
    local i
    for (( i=${#PIDS[@]}-1; i>=0; i-- )); do
      stop_process "${PIDS[i]}"
    done
  fi
}

serve() {
  local wxkf="$VENV/bin/wxkf" bind sandbox
  bind=$("$wxkf" config --get bind)
  sandbox=$("$wxkf" config --get sandbox)
  trap cleanup INT TERM EXIT
  if [ -z "${WXKF_REDIS_URL:-}" ] && [ -z "$("$wxkf" config --get redis_url)" ]; then
    "$wxkf" redis & PIDS+=($!)
  fi
  if [ "$sandbox" = "true" ]; then
    "$wxkf" sandbox & PIDS+=($!)
  fi
  "$wxkf" serve & PIDS+=($!)
  "$wxkf" live & PIDS+=($!)
  "$wxkf" worker & PIDS+=($!)
  say "webhook:  http://$bind/wechat     health: http://$bind/healthz   metrics: http://$bind/metrics"
  say "console:  http://$bind/console/   (accounts: .venv/bin/wxkf user add NAME --role agent|admin)"
  say "live:     http://$("$wxkf" config --get live_bind)   (the console's live updates, the chat page's /api/chat)"
  if [ "$sandbox" = "true" ]; then
    local sb; sb=$("$wxkf" config --get sandbox_bind)
    say "demo mode: WeChat is simulated by the sandbox at http://$sb. Try:"
    say "  curl -s http://$sb/sandbox/push -d '{\"openid\":\"o_demo\",\"text\":\"我的快递到哪了\"}'"
    say "  curl -s http://$sb/sandbox/messages"
  fi
  say "Ctrl-C stops everything."
  wait -n "${PIDS[@]}"
  say "a process exited; stopping the rest"
}

case "${1:-run}" in
  test)
    setup
    shift || true
    exec "$VENV/bin/python" -m pytest "$@"
    ;;
  run|"")
    setup
    serve
    ;;
  *)
    echo "usage: ./run.sh [test [pytest args...]]" >&2
    exit 2
    ;;
esac
