"""gunicorn entry point: `gunicorn wxkf.wsgi:app`."""
from . import create_app
from .services import setup_logging
from .config import load

_cfg = load()
setup_logging(_cfg.log_level)
app = create_app(_cfg)


def __getattr__(name):
    """`gunicorn wxkf.wsgi:live`: the same app in the live role (`wxkf live`), built on first use."""
    if name == "live":
        globals()["live"] = create_app(_cfg, role="live")
        return globals()["live"]
    raise AttributeError(name)
