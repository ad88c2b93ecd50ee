"""wxkf: a self-hosted AI customer-service agent for WeChat."""


def create_app(config=None, services=None):
    """The Flask app: webhook, ops endpoints; services built once per process."""
    from flask import Flask

    from . import ops
    from .agents import console
    from .services import Services
    from .wechat import webhook
    from .wecom import callback

    app = Flask(__name__, template_folder="../templates")
    svc = services or Services(config)
    app.config["WXKF"] = svc.config
    app.extensions["wxkf"] = svc
    app.config["MAX_CONTENT_LENGTH"] = None  # the webhook enforces its own limit with a clear 413
    app.register_blueprint(webhook.bp)
    app.register_blueprint(callback.bp)
    app.register_blueprint(ops.bp)
    console.init_app(app, svc.config)
    if svc.config.trusted_proxies:
        # Behind nginx every request comes from the proxy: take the client's address from the last
        # `trusted_proxies` X-Forwarded-For hops (werkzeug's ProxyFix), never from an untrusted one.
        from werkzeug.middleware.proxy_fix import ProxyFix
        n = svc.config.trusted_proxies
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n, x_host=0)

    @app.errorhandler(Exception)
    def _unexpected(exc):
        from werkzeug.exceptions import HTTPException
        if isinstance(exc, HTTPException):
            if exc.code < 400:
                return exc
            return exc.description or exc.name, exc.code, {"Content-Type": "text/plain; charset=utf-8"}
        app.logger.exception("unhandled error")
        return "internal error", 500, {"Content-Type": "text/plain"}

    return app
