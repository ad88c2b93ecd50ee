// Runs docs/miniprogram/pages/chat/chat.js under Node with a `wx` that does what the WeChat client
// does (wx.request over HTTP, wx.login returning a code from the sandbox's jscode2session, storage
// in memory), driven line by line from stdin: load | send TEXT | wait_agent SECONDS | base URL | state.
// Each command answers one JSON line with the page's data and storage.
const http = require("http");
const readline = require("readline");
const path = require("path");

const [pagePath, baseUrl, sandboxUrl, openid] = process.argv.slice(2);
const storage = {};
const globalData = {wxkfBase: baseUrl};
let page = null;

function httpJson(method, url, body, headers) {
  return new Promise((resolve, reject) => {
    const u = new URL(url);
    const data = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    const req = http.request({hostname: u.hostname, port: u.port, path: u.pathname + u.search, method,
                              headers: Object.assign({}, headers, data ? {"content-length": data.length} : {})},
      (res) => {
        let text = "";
        res.setEncoding("utf8");
        res.on("data", (c) => (text += c));
        res.on("end", () => {
          let parsed = text;
          try { parsed = JSON.parse(text); } catch (e) { /* not JSON: as the client gives it */ }
          resolve({statusCode: res.statusCode, data: parsed});
        });
      });
    req.on("error", reject);
    req.setTimeout(35000, () => req.destroy(new Error("timeout")));
    if (data) req.write(data);
    req.end();
  });
}

global.wx = {
  request(o) {
    httpJson(o.method || "GET", o.url, o.method === "GET" ? undefined : o.data, o.header || {})
      .then((res) => o.success && o.success(res), (err) => o.fail && o.fail({errMsg: "request:fail " + err.message}));
  },
  login(o) {
    httpJson("POST", sandboxUrl + "/sandbox/login", {openid}, {"content-type": "application/json"})
      .then((res) => o.success({code: res.data.code}), (err) => o.fail && o.fail(err));
  },
  getStorageSync: (k) => (k in storage ? JSON.parse(storage[k]) : ""),
  setStorageSync: (k, v) => { storage[k] = JSON.stringify(v); },
};
global.getApp = () => ({globalData});
global.Page = (def) => {
  page = Object.assign({}, def, {data: JSON.parse(JSON.stringify(def.data))});
  page.setData = (d) => Object.assign(page.data, d);
};
require(path.resolve(pagePath));

function state() {
  return {data: page.data, cache: wx.getStorageSync("wxkf_last_replies"), token: !!page.token};
}

const rl = readline.createInterface({input: process.stdin});
rl.on("line", async (line) => {
  const [cmd, ...rest] = line.split(" ");
  const arg = rest.join(" ");
  try {
    if (cmd === "load") { page.onLoad(); await page.ready; }
    else if (cmd === "send") { await page.send(arg); }
    else if (cmd === "wait_agent") {
      const end = Date.now() + Number(arg) * 1000;
      while (Date.now() < end && !page.data.messages.some((m) => m.who === "agent")) {
        await new Promise((r) => setTimeout(r, 50));
      }
    }
    else if (cmd === "base") { globalData.wxkfBase = arg; }
    else if (cmd === "quit") { page.onUnload(); process.stdout.write(JSON.stringify(state()) + "\n"); process.exit(0); }
    process.stdout.write(JSON.stringify(state()) + "\n");
  } catch (e) {
    process.stdout.write(JSON.stringify({error: String(e && e.stack || e)}) + "\n");
  }
});
