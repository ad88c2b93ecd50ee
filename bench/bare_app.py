"""The baseline for bench/webhook_load.py: Flask under gunicorn that only answers `success`."""
from flask import Flask

app = Flask(__name__)


@app.post("/wechat")
def wechat():
    return "success", 200, {"Content-Type": "text/plain; charset=utf-8"}
