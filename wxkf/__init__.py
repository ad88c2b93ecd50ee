"""wxkf: a self-hosted AI customer-service agent for WeChat."""


def create_app(config=None, services=None, role="web"):
    """The Flask app: webhook, console, ops endpoints; services built once per process.

    `role` "live" is the thread-worker process that serves requests which wait (`wxkf.live`); the
    webhook's sync workers ("web") answer those at once with 503."""
    from flask import Flask

    from . import live, ops, pageapi
    from .agents import console
    from .services import Services
    from .wechat import webhook
    from .wecom import callback

    app = Flask(__name__, template_folder="../templates")
    svc = services or Services(config)
    app.config["WXKF"] = svc.config
    app.config["WXKF_ROLE"] = role
    app.extensions["wxkf"] = svc
    app.config["MAX_CONTENT_LENGTH"] = None  # the webhook enforces its own limit with a clear 413
    app.register_blueprint(webhook.bp)
    app.register_blueprint(callback.bp)
    app.register_blueprint(ops.bp)
    app.register_blueprint(pageapi.bp)
    app.register_blueprint(live.bp)
    console.init_app(app, svc.config)
    if svc.config.trusted_proxies:
        # Behind nginx every request comes from the proxy: take the client's address from the last
        # `trusted_proxies` X-Forwarded-For hops (werkzeug's ProxyFix), never from an untrusted one.
        from werkzeug.middleware.proxy_fix import ProxyFix
        n = svc.config.trusted_proxies
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n, x_host=0)
    app.wsgi_app = webhook.wsgi(app.wsgi_app, svc)  # pushes skip Flask's per-request machinery

    @app.errorhandler(Exception)
    def _unexpected(exc):
        from flask import request
        from werkzeug.exceptions import HTTPException
        console = request.path.startswith("/console") and not request.path.startswith("/console/api/")
        if isinstance(exc, HTTPException):
            if exc.code < 400:
                return exc
            if console:
                return _console_error(exc.code, exc.description)
            return exc.description or exc.name, exc.code, {"Content-Type": "text/plain; charset=utf-8"}
        app.logger.exception("unhandled error")
        if console:
            return _console_error(500, None)
        return "internal error", 500, {"Content-Type": "text/plain"}

    return app


def _console_error(code, description):
    """An error page in the console's language: the view's own reason when it gave one in Chinese,
    else the standard words for the code; never a server path or an English default."""
    from flask import render_template

    from .agents.wording import HTTP_ERRORS
    own = description if description and any("\u4e00" <= ch <= "\u9fff" for ch in description) else None
    message = own or HTTP_ERRORS.get(code, "出错了。")
    return render_template("error.html", code=code, message=message), code
