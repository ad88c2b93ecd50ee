"""The WeCom 微信客服 channel (kf.weixin.qq.com): callback, pull, send, session state (protocol ref. 5)."""
