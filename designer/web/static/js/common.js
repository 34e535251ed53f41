/* Shared by every page: the API client (session cookie + CSRF header), the live
 * connection (/live Socket.IO namespace), small DOM helpers and notices.
 * No framework and no build step: plain browser JavaScript. */
"use strict";

window.Flowmill = (() => {
  const state = { user: null, csrf: null, socket: null, handlers: [] };

  class ApiError extends Error {
    constructor(status, body) {
      super((body && body.error) || `HTTP ${status}`);
      this.status = status;
      this.details = (body && body.details) || [];
    }
  }

  /** Call the REST API; throws ApiError with the server's message and details. */
  async function api(method, path, body) {
    const headers = { Accept: "application/json" };
    const init = { method, headers, credentials: "same-origin" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    if (method !== "GET" && state.csrf) headers["X-CSRF-Token"] = state.csrf;
    const reply = await fetch(path, init);
    let data = null;
    const text = await reply.text();
    if (text) {
      try { data = JSON.parse(text); } catch (e) { data = { error: text }; }
    }
    if (reply.status === 401 && document.body.classList.contains("page-login") === false) {
      location.href = "/login?next=" + encodeURIComponent(location.pathname + location.search);
      throw new ApiError(401, data);
    }
    if (!reply.ok) throw new ApiError(reply.status, data);
    return data;
  }

  /** Who is logged in (and the CSRF token); sends the browser to /login otherwise. */
  async function init() {
    const me = await api("GET", "/api/me");
    state.user = me.user;
    state.csrf = me.csrf_token;
    const who = document.getElementById("whoami");
    if (who) who.textContent = `${me.user.name} (${me.user.role})`;
    const out = document.getElementById("logout");
    if (out) out.addEventListener("click", async () => {
      await api("POST", "/api/logout");
      location.href = "/login";
    });
    return me.user;
  }

  /** May the user do this? Mirrors engine/access/users.py PERMISSIONS via /api/me. */
  function can(permission) {
    return !!(state.user && (state.user.permissions || []).includes(permission));
  }

  /** Subscribe to live events; handler(event) is called for each, in order. */
  function live(handler) {
    state.handlers.push(handler);
    if (state.socket) return state.socket;
    const badge = document.getElementById("live-state");
    const socket = io("/live", { transports: ["websocket", "polling"] });
    socket.on("connect", () => {
      if (badge) { badge.textContent = "live"; badge.classList.add("on"); }
      state.handlers.forEach((h) => h({ event: "Connected" }));
    });
    socket.on("disconnect", () => {
      if (badge) { badge.textContent = "offline"; badge.classList.remove("on"); }
    });
    socket.on("events", (batch) => {
      for (const event of batch) {
        for (const h of state.handlers) {
          try { h(event); } catch (e) { console.error("live handler failed", e); }
        }
      }
    });
    state.socket = socket;
    return socket;
  }

  /** el("div", {class: "x", onclick: f}, "text", child) */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key.startsWith("on") && typeof value === "function") {
        node.addEventListener(key.slice(2), value);
      } else if (key === "dataset") {
        Object.assign(node.dataset, value);
      } else if (value === true) {
        node.setAttribute(key, "");
      } else {
        node.setAttribute(key, String(value));
      }
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  /** A short notice in the corner; kind: info | ok | error. Returns the element. */
  function toast(message, kind = "info", options = {}) {
    const box = document.getElementById("toasts");
    const item = el("div", { class: `toast ${kind}`, role: kind === "error" ? "alert" : "status" },
      el("span", {}, message));
    if (options.action) {
      item.append(el("button", { type: "button", onclick: () => { options.action.run(); item.remove(); } },
        options.action.label));
    }
    item.append(el("button", { type: "button", class: "close", "aria-label": "close", onclick: () => item.remove() }, "×"));
    box.append(item);
    if (!options.sticky) setTimeout(() => item.remove(), options.ms || 6000);
    return item;
  }

  function fmtTime(iso) {
    if (!iso) return "";
    const d = new Date(iso);
    return isNaN(d) ? iso : d.toLocaleString();
  }

  function fmtSeconds(s) {
    if (s === null || s === undefined) return "";
    if (s < 1) return `${Math.round(s * 1000)} ms`;
    if (s < 120) return `${s.toFixed(1)} s`;
    return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
  }

  // every page but the login page: who is logged in, and the live connection
  // a flow's notify.broadcast node: a notice on every open page
  function onBroadcast(event) {
    if (event.event === "CustomEvent" && event.name === "broadcast" && event.data) {
      const kind = ["ok", "error"].includes(event.data.level) ? event.data.level : "info";
      toast(String(event.data.message || ""), kind, { ms: 10000 }).classList.add("broadcast");
    }
  }

  const ready = document.body.classList.contains("page-login")
    ? Promise.resolve(null)
    : init().then((user) => { live(onBroadcast); return user; });

  return { api, init, can, live, el, toast, fmtTime, fmtSeconds, ApiError, state, ready };
})();
