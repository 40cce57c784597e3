// A share link's public page (/s/LINK): no account, only what the link covers.
// Asks for the password when the link has one, then downloads the file, or browses
// the folder and downloads any file or the whole folder as a zip. The server checks
// every request against the link (share_links.py); this page only shows what it is given.
"use strict";

(() => {
  const { h, clear, size, date, api, query, ApiError } = cfs;
  const main = document.getElementById("main");
  const link = decodeURIComponent(location.pathname.split("/")[2] || "");
  const base = "/s/" + encodeURIComponent(link);
  function show(...nodes) { cfs.append(clear(main), nodes); }

  function gone(err) {
    const words = err.status === 410
      ? (err.code === "download_limit_reached" ? "This link has been used as often as its owner allowed." : "This link has expired.")
      : err.status === 404 ? "This link does not exist, or its owner revoked it." : (err.message || "Something went wrong.");
    show(h("div", { class: "share-box", id: "share-error", dataset: { status: err.status || 0 } },
      h("h1", {}, err.status === 410 ? "Link expired" : err.status === 404 ? "Link not found" : "Cannot open the link"),
      h("p", {}, words)));
  }

  async function start() {
    let info;
    try { info = await api("GET", base + "/info"); } catch (err) { return gone(err); }
    if (info.needs_password) return askPassword(info);
    if (info.kind === "dir") return showDir(info, null);
    showFile(info);
  }

  function askPassword(info, message) {
    const input = h("input", { type: "password", id: "share-password", autocomplete: "off", required: true });
    const error = h("p", { class: "error", id: "share-password-error" }, message || "");
    const form = h("form", { class: "share-box signin" },
      h("h1", {}, info.name), h("p", {}, "This link is protected by a password."),
      h("label", {}, h("span", {}, "Password"), input), h("button", { type: "submit" }, "Open"), error);
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      try {
        await api("POST", base + "/unlock", { password: input.value });
        start();
      } catch (err) {
        if (err.status === 401 || err.status === 429) askPassword(info, err.status === 429 ? err.message : "Wrong password.");
        else gone(err);
      }
    });
    show(form);
    input.focus();
  }

  function showFile(info) {
    show(h("div", { class: "share-box", id: "share-file" },
      h("h1", {}, info.name),
      h("p", {}, size(info.size), " · ", date(info.mtime_ns / 1e9),
        info.expires_at ? " · link expires " + date(info.expires_at) : "",
        info.downloads_left !== null ? ` · ${info.downloads_left} download${info.downloads_left === 1 ? "" : "s"} left` : ""),
      h("a", { class: "button", id: "share-download", href: `${base}/file/${info.node_id}`, download: "" }, "Download")));
  }

  async function showDir(info, dirId) {
    let listing;
    try { listing = await api("GET", base + "/list" + query({ dir: dirId })); } catch (err) { return gone(err); }
    const crumbs = h("nav", { class: "crumbs" }, listing.crumbs.map((c, i) => [i ? h("span", { class: "sep" }, "/") : null,
      i === listing.crumbs.length - 1 ? h("span", { class: "crumb current" }, c.name)
        : h("button", { type: "button", class: "link crumb", on: { click: () => showDir(info, c.id) } }, c.name)]));
    const rows = listing.entries.sort((a, b) => (a.kind === "dir") !== (b.kind === "dir") ? (a.kind === "dir" ? -1 : 1) : a.name.localeCompare(b.name))
      .map((node) => h("tr", { dataset: { id: node.id, name: node.name } },
        h("td", { class: "col-name" }, h("span", { class: "icon " + node.kind, "aria-hidden": "true" }), node.kind === "dir"
          ? h("button", { type: "button", class: "link name", on: { click: () => showDir(info, node.id) } }, node.name)
          : h("a", { class: "name", href: `${base}/file/${node.id}`, download: "" }, node.name)),
        h("td", { class: "col-size" }, node.kind === "file" ? size(node.size) : ""),
        h("td", { class: "col-mtime_ns" }, date(node.mtime_ns / 1e9))));
    show(crumbs,
      h("div", { class: "toolbar" }, h("a", { class: "button", id: "share-zip", href: base + "/zip" + query({ dir: listing.dir.id }) }, "Download all as zip"),
        info.expires_at ? h("span", { class: "note" }, "link expires " + date(info.expires_at)) : null),
      h("table", { class: "listing", id: "share-listing" }, h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { class: "empty" }, "This folder is empty.")))));
  }

  start().catch((err) => gone(err instanceof ApiError ? err : { message: String(err) }));
})();
