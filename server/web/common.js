// Shared by the drive's page (app.js) and a share link's page (share.js).
//
// The one rule that keeps hostile names harmless: nothing from the server is ever
// parsed as markup. Every element is built with h(), which sets strings as text nodes
// and refuses event-handler attributes; no code here parses HTML (tests/web/test_page_source.py).
"use strict";

const cfs = (() => {
  function h(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "on") { for (const [ev, fn] of Object.entries(value)) node.addEventListener(ev, fn); continue; }
      if (/^on/i.test(key)) throw new Error("h(): no inline handlers: " + key);
      if (key === "class") node.className = value;
      else if (key === "dataset") Object.assign(node.dataset, value);
      else if (key === "value") node.value = value;
      else if (value === true) node.setAttribute(key, "");
      else node.setAttribute(key, String(value));
    }
    append(node, children);
    return node;
  }

  function append(node, children) {
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
    return node;
  }

  const UNITS = ["B", "KB", "MB", "GB", "TB", "PB"];
  function size(bytes) {
    if (bytes === null || bytes === undefined) return "";
    let n = bytes, i = 0;
    while (n >= 1000 && i < UNITS.length - 1) { n /= 1000; i++; }
    return (i === 0 ? String(n) : n.toFixed(n < 10 ? 1 : 0)) + " " + UNITS[i];
  }

  function date(seconds) {
    if (!seconds) return "";
    const d = new Date(seconds * 1000);
    const now = new Date();
    const sameDay = d.toDateString() === now.toDateString();
    return sameDay ? d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
                   : d.toLocaleDateString([], { year: "numeric", month: "short", day: "numeric" }) + " " +
                     d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  }

  function duration(seconds) {
    if (!isFinite(seconds) || seconds < 0) return "…";
    if (seconds < 60) return Math.ceil(seconds) + " s";
    if (seconds < 3600) return Math.floor(seconds / 60) + " min " + Math.round(seconds % 60) + " s";
    return Math.floor(seconds / 3600) + " h " + Math.round((seconds % 3600) / 60) + " min";
  }

  class ApiError extends Error {
    constructor(status, body) {
      super((body && body.detail) || ("HTTP " + status));
      this.status = status;
      this.body = body || {};
      this.code = this.body.error;
    }
  }

  // JSON requests to the server. `csrf` is sent with every change (auth.py).
  const session = { csrf: null, device: "web" };

  async function api(method, path, body, options) {
    const headers = { "X-Cloudfs-Device": session.device };
    if (method !== "GET" && method !== "HEAD" && session.csrf) headers["X-CSRF-Token"] = session.csrf;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(path, {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "same-origin", signal: options && options.signal,
    });
    let data = null;
    const text = await response.text();
    if (text) { try { data = JSON.parse(text); } catch (e) { data = { detail: text.slice(0, 200) }; } }
    if (!response.ok) throw new ApiError(response.status, data);
    return data;
  }

  function query(params) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null) q.set(k, String(v));
    const s = q.toString();
    return s ? "?" + s : "";
  }

  const PREVIEW = {
    image: /\.(png|jpe?g|gif|webp|avif|bmp)$/i,
    video: /\.(mp4|m4v|webm|ogv|mov)$/i,
    audio: /\.(mp3|m4a|aac|ogg|oga|opus|wav|flac)$/i,
    pdf: /\.pdf$/i,
    text: /(\.(txt|md|markdown|rst|log|csv|tsv|json|ya?ml|toml|ini|cfg|conf|xml|html?|svg|css|js|mjs|ts|tsx|jsx|py|rb|go|rs|c|h|cc|cpp|hpp|java|kt|swift|sh|bash|zsh|sql|php|pl|lua|r|tex|diff|patch)|^(readme|license|makefile|dockerfile)[^/]*)$/i,
  };

  function previewKind(name) {
    for (const [kind, re] of Object.entries(PREVIEW)) if (re.test(name)) return kind;
    return null;
  }

  function toast(message, kind) {
    let box = document.getElementById("toasts");
    if (!box) { box = h("div", { id: "toasts", role: "status", "aria-live": "polite" }); document.body.append(box); }
    const item = h("div", { class: "toast " + (kind || "") }, message);
    box.append(item);
    setTimeout(() => item.remove(), kind === "error" ? 8000 : 4000);
  }

  // A modal built from <dialog>: resolves with the form's values, or null when cancelled.
  function dialog(title, fields, submitLabel, extra) {
    return new Promise((resolve) => {
      const inputs = {};
      const form = h("form", { method: "dialog", class: "dialog-form" },
        h("h2", {}, title),
        extra || null,
        fields.map((f) => {
          let input;
          if (f.type === "select") {
            input = h("select", { name: f.name }, f.options.map(([v, label]) => h("option", { value: v }, label)));
            if (f.value !== undefined) input.value = f.value;
          } else {
            input = h("input", { name: f.name, type: f.type || "text", value: f.value || "", placeholder: f.placeholder,
                                 required: f.required, autocomplete: f.autocomplete || "off", min: f.min, step: f.step,
                                 spellcheck: "false" });
          }
          inputs[f.name] = input;
          return h("label", {}, h("span", {}, f.label), input);
        }),
        h("div", { class: "dialog-buttons" },
          h("button", { type: "button", class: "secondary", value: "cancel", on: { click: () => close(null) } }, "Cancel"),
          submitLabel ? h("button", { type: "submit", value: "ok" }, submitLabel) : null));
      const box = h("dialog", { class: "modal" }, form);
      function close(value) { box.close(); box.remove(); resolve(value); }
      form.addEventListener("submit", (ev) => {
        ev.preventDefault();
        const values = {};
        for (const [name, input] of Object.entries(inputs)) values[name] = input.value;
        close(values);
      });
      box.addEventListener("cancel", (ev) => { ev.preventDefault(); close(null); });
      document.body.append(box);
      box.showModal();
      const first = Object.values(inputs)[0];
      if (first) { first.focus(); if (first.select) first.select(); }
    });
  }

  return { h, append, clear, size, date, duration, api, query, session, ApiError, previewKind, toast, dialog };
})();
