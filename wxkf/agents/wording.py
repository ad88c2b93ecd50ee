"""The console's words for the system's codes, in one place: escalation reasons, handoff statuses,
transcript roles and reply sources. Codes stay English in Redis, logs and metrics; people read these."""

REASONS = {
    "urgent": "紧急情况",
    "complaint": "投诉",
    "anger": "情绪激动",
    "request": "要求转人工",
    "repeated_failure": "多次未能解答",
    "wecom_servicer": "企业微信客服接待中",
}

STATUSES = {"waiting": "等待接入", "claimed": "已接入"}

ROLES = {"shopper": "顾客", "bot": "机器人", "agent": "客服", "system": "系统", "note": "内部备注"}

SOURCES = {
    "knowledge": "知识库答案",
    "generated": "模型改写",
    "suggest": "推荐问题",
    "fallback": "兜底回复",
    "escalate": "转人工",
    "canned": "固定回复",
    "welcome": "欢迎语",
    "silent": "不回复",
    "human": "人工接待中",
}

HTTP_ERRORS = {400: "请求有误。", 401: "请先登录。", 403: "没有权限。", 404: "找不到这个页面。",
               405: "不支持这种请求方式。", 413: "内容太大。", 429: "请求太频繁，请稍后再试。",
               500: "服务器出错了，请稍后再试；问题已记录在日志中。"}
"""What a console page says for an HTTP error, unless the view gave its own (Chinese) reason."""

ACCOUNT_ROLES = {"agent": "客服", "admin": "管理员"}

ALL = {"reasons": REASONS, "statuses": STATUSES, "roles": ROLES, "sources": SOURCES, "account_roles": ACCOUNT_ROLES}


def reason(code):
    return REASONS.get(code or "", code or "—")


def status(code):
    return STATUSES.get(code or "", code or "—")


def role(code):
    return ROLES.get(code or "", code or "—")


def source(code):
    return SOURCES.get(code or "", code or "—")


def install(app):
    """Jinja filters (`|reason`, `|status`, `|role`, `|source`) and the tables for the pages' scripts."""
    app.jinja_env.filters.update(reason=reason, status=status, role=role, source=source)
    app.jinja_env.globals["wording"] = ALL
