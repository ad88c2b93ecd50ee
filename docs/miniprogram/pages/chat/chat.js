// A Mini Program's own chat page, talking to wxkf (README: "A Mini Program's own chat page").
// Copy pages/chat/ into your Mini Program, set globalData.wxkfBase in app.js to the address of
// wxkf's live process (behind the proxy `wxkf nginx-conf` prints: your HTTPS domain), and add that
// domain to the Mini Program's request domains (request合法域名).
//
// What it shows:
//   - login: wx.login's code -> POST /api/session -> a 2-hour token, refreshed before it expires;
//   - chat: POST /api/chat with the token; the answer comes back in the same request;
//   - agents: GET /api/messages long polls (wait=25) bring a human agent's replies and late answers;
//   - weak networks: the last 3 answers are kept (wx.setStorageSync) and shown again for the same
//     question when the network fails; otherwise an offline answer with the contact button.
// Error codes map to what the shopper sees (FALLBACK below); the page never shows raw errors.

const CACHE_KEY = "wxkf_last_replies";
const TOKEN_KEY = "wxkf_token";
const KEEP = 3;

const FALLBACK = {
  ERR_RATE_LIMITED: "您发得太快了，请稍等一分钟再问。",
  ERR_AI_TIMEOUT: "正在为您查询，请稍候…",
  ERR_UNAVAILABLE: "客服系统暂时忙，请稍后再试，或点下方按钮联系人工客服。",
  ERR_TOO_LONG: "消息太长了，请分几次发送。",
  OFFLINE: "网络不太好，请稍后再试，或点下方按钮联系人工客服。",
};

function base() {
  const app = typeof getApp === "function" ? getApp() : null;
  return (app && app.globalData && app.globalData.wxkfBase) || "https://kf.example.com";
}

// wx.request as a promise: resolves {status, data}; rejects only when the network failed.
function request(method, path, data, token) {
  return new Promise((resolve, reject) => {
    wx.request({
      url: base() + path,
      method,
      data,
      header: Object.assign({"content-type": "application/json"}, token ? {Authorization: "Bearer " + token} : {}),
      timeout: 30000,
      success: (res) => resolve({status: res.statusCode, data: res.data}),
      fail: (err) => reject(err),
    });
  });
}

function newId() {
  return "m" + Date.now().toString(36) + Math.random().toString(36).slice(2, 10);
}

Page({
  data: {messages: [], input: "", escalated: false, offline: false},

  onLoad() {
    this.after = "";
    this.shown = {};       // message ids already on screen (answers come by /api/chat and by the poll)
    this.polling = false;
    this.ready = this.session().then(() => this.poll()).catch(() => this.setData({offline: true}));
  },

  onUnload() {
    this.polling = false;
  },

  // -- login ------------------------------------------------------------------------------------
  session(force) {
    const saved = wx.getStorageSync(TOKEN_KEY);
    if (!force && saved && saved.expires > Date.now() + 10 * 60 * 1000) {
      this.token = saved.token;
      return Promise.resolve(saved.token);
    }
    if (!force && saved && saved.expires > Date.now()) {  // close to expiry: exchange it for a new one
      return request("POST", "/api/session/refresh", {}, saved.token)
        .then((res) => (res.status === 200 ? this.keep(res.data) : this.session(true)));
    }
    return new Promise((resolve, reject) => wx.login({success: (r) => resolve(r.code), fail: reject}))
      .then((code) => request("POST", "/api/session", {code}))
      .then((res) => {
        if (res.status !== 200) throw new Error((res.data && res.data.error && res.data.error.code) || "ERR_AUTH");
        return this.keep(res.data);
      });
  },

  keep(got) {
    this.token = got.token;
    wx.setStorageSync(TOKEN_KEY, {token: got.token, expires: Date.now() + got.expires_in * 1000});
    return got.token;
  },

  // -- chat -------------------------------------------------------------------------------------
  onInput(e) {
    this.setData({input: e.detail.value});
  },

  onSend() {
    const query = (this.data.input || "").trim();
    if (!query) return Promise.resolve();
    this.setData({input: ""});
    return this.send(query);
  },

  send(query, retried) {
    const msgid = newId();
    if (!retried) this.show({who: "me", text: query});
    return (this.ready || Promise.resolve())
      .then(() => request("POST", "/api/chat", {query, msgid}, this.token))
      .then((res) => {
        this.setData({offline: false});
        if (res.status === 200) {
          this.answered(query, res.data);
          return;
        }
        const code = res.data && res.data.error ? res.data.error.code : "ERR_UNAVAILABLE";
        if (code === "ERR_AUTH" && !retried) {  // the token expired or was refreshed elsewhere
          this.ready = this.session(true);
          return this.send(query, true);
        }
        if (code === "ERR_AI_TIMEOUT" && res.data.id) this.shown[res.data.id] = false;  // the poll brings it
        this.show({who: "bot", text: FALLBACK[code] || FALLBACK.ERR_UNAVAILABLE, notice: true});
      })
      .catch(() => this.offline(query));
  },

  answered(query, body) {
    if (body.reply) {  // kept for weak networks: the last 3 answers, by question
      const cache = (wx.getStorageSync(CACHE_KEY) || []).filter((c) => c.query !== query);
      cache.unshift({query, reply: body.reply});
      wx.setStorageSync(CACHE_KEY, cache.slice(0, KEEP));
    }
    if (body.escalated) this.setData({escalated: true});
    if (this.shown[body.id] === true) return;  // the poll was faster and showed it already
    this.shown[body.id] = true;
    if (body.reply) this.show({who: "bot", text: body.reply, suggestions: body.suggestions || []});
  },

  offline(query) {
    this.setData({offline: true});
    const hit = (wx.getStorageSync(CACHE_KEY) || []).find((c) => c.query === query);
    this.show(hit ? {who: "bot", text: hit.reply, cached: true} : {who: "bot", text: FALLBACK.OFFLINE, notice: true});
  },

  onSuggestion(e) {
    return this.send(e.currentTarget.dataset.title);
  },

  show(message) {
    this.setData({messages: this.data.messages.concat([message])});
  },

  // -- what agents say, and answers that came late -----------------------------------------------
  poll() {
    if (this.polling) return;
    this.polling = true;
    const loop = () => {
      if (!this.polling) return;
      const asked = Date.now();
      request("GET", "/api/messages?wait=25" + (this.after ? "&after=" + this.after : ""), undefined, this.token)
        .then((res) => {
          if (res.status === 401) return this.session(true);
          if (res.status !== 200) return new Promise((r) => setTimeout(r, 5000));
          this.after = res.data.next;
          if (!res.data.messages.length && Date.now() - asked < 1000) {
            return new Promise((r) => setTimeout(r, 3000));  // answered without waiting: do not hammer
          }
          for (const m of res.data.messages) {
            if (m.type === "agent") this.show({who: "agent", text: m.text});
            else if (m.type === "reply" && this.shown[m.reply_to] !== true) {
              this.shown[m.reply_to] = true;
              if (m.escalated) this.setData({escalated: true});
              if (m.reply) this.show({who: "bot", text: m.reply, suggestions: m.suggestions || []});
            }
          }
        })
        .catch(() => new Promise((r) => setTimeout(r, 5000)))  // offline: try again shortly
        .then(loop);
    };
    loop();
  },
});
