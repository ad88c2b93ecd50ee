"""gunicorn entry point: `gunicorn wxkf.wsgi:app`."""
from . import create_app
from .services import setup_logging
from .config import load

_cfg = load()
setup_logging(_cfg.log_level)
app = create_app(_cfg)
