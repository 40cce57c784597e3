// The drive's page: sign-in, folders, uploads, previews, history, trash, devices, links.
// Views are picked by location.hash (#/f/ID, #/search/Q, #/trash, #/devices, #/links).
// Every name is set as text (common.js h()); the page holds no secret but the CSRF
// value it gets from GET /auth/session (the session itself is an HttpOnly cookie).
"use strict";

(() => {
  const { h, clear, size, date, api, query, session, ApiError, toast, dialog } = cfs;
  const main = document.getElementById("main");
  const nav = document.getElementById("nav");
  const state = { me: null, dirId: null, dir: null, entries: [], sort: { key: "name", dir: 1 }, cursor: 0,
                  crumbs: [], batch: null, feed: null, lastListing: 0, linkedIds: new Set() };

  function show(...nodes) { cfs.append(clear(main), nodes); }

  // --- sign-in ---

  async function start() {
    try {
      state.me = await api("GET", "/auth/session");
      session.csrf = state.me.csrf;
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) return showSignIn();
      throw err;
    }
    document.body.classList.add("signed-in");
    document.getElementById("who").textContent = state.me.name;
    if (!state.feed) follow();
    route();
  }

  function showSignIn(message) {
    document.body.classList.remove("signed-in");
    const error = h("p", { class: "error", id: "signin-error" }, message || "");
    const name = h("input", { name: "name", id: "signin-name", autocomplete: "username", required: true, spellcheck: "false" });
    const password = h("input", { name: "password", id: "signin-password", type: "password", autocomplete: "current-password", required: true });
    const form = h("form", { class: "signin", id: "signin" },
      h("h1", {}, "Sign in to your drive"),
      h("label", {}, h("span", {}, "User name"), name),
      h("label", {}, h("span", {}, "Password"), password),
      h("button", { type: "submit" }, "Sign in"), error);
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      error.textContent = "";
      try {
        const s = await api("POST", "/auth/login", { name: name.value, password: password.value });
        session.csrf = s.csrf;
        password.value = "";
        await start();
      } catch (err) {
        error.textContent = err.status === 429 ? err.message : "Wrong user name or password.";
      }
    });
    show(form);
    name.focus();
  }

  async function signOut() {
    try { await api("POST", "/auth/logout"); } catch (e) { /* signed out anyway */ }
    session.csrf = null;
    state.me = null;
    if (state.feed) { state.feed.abort(); state.feed = null; }
    location.hash = "";
    showSignIn("Signed out.");
  }

  // --- routing ---

  function route() {
    if (!state.me) return;
    const parts = location.hash.replace(/^#\/?/, "").split("/");
    for (const a of nav.querySelectorAll("a")) a.classList.toggle("current", a.dataset.view === (parts[0] || "f"));
    if (parts[0] === "trash") return showTrash();
    if (parts[0] === "devices") return showDevices();
    if (parts[0] === "links") return showLinks();
    if (parts[0] === "search") return showSearch(decodeURIComponent(parts.slice(1).join("/")));
    const id = parseInt(parts[1], 10);
    return showFolder(Number.isFinite(id) ? id : state.me.root_id);
  }

  function failed(err) {
    if (err instanceof ApiError && err.status === 401) return showSignIn(err.code === "token_revoked" ? err.message : "Please sign in again.");
    toast(err.message || String(err), "error");
  }

  // --- folders ---

  async function crumbsOf(node) {
    const crumbs = [node];
    let walk = node;
    for (let i = 0; i < 64 && walk.parent_id; i++) {
      walk = (await api("GET", `/nodes/${walk.parent_id}`)).node;
      crumbs.unshift(walk);
    }
    return crumbs;
  }

  // A hard link is a name of its own (kind "link") that stands for a file: it is shown
  // as that file under its own name (size, dates, preview, versions are the file's) and
  // every name of a file with several says how many it has. Names act on themselves
  // (rename, move, delete); content acts on the file (download, versions, restore, share).
  function asShown(entries, linked) {
    const files = new Map(linked.map((l) => [l.node.id, l]));
    return entries.map((e) => {
      if (e.kind === "link") {
        const l = files.get(e.link_to);
        if (!l) return { ...e, broken: true };
        return { ...l.node, id: e.id, parent_id: e.parent_id, name: e.name, link_to: e.link_to, fileId: l.node.id, names: l.names };
      }
      const l = files.get(e.id);
      return l ? { ...e, fileId: e.id, names: l.names } : e;
    });
  }

  async function loadEntries(dirId) {
    const entries = [];
    const linked = [];
    let after = null;
    for (let page = 0; page < 100; page++) {
      const listing = await api("GET", `/nodes/${dirId}/children` + query({ after, limit: 1000, linked: true }));
      entries.push(...listing.entries);
      linked.push(...listing.linked);
      if (!listing.next_after) break;
      after = listing.next_after;
    }
    // The files named here by hard links: their edits elsewhere show here too.
    return { entries: asShown(entries, linked), linkedIds: new Set(linked.map((l) => l.node.id)) };
  }

  // Loads of a listing overlap: the feed's refresh of the open folder may still be out
  // when another folder is opened. Each load takes the next turn and only the newest
  // is shown; a late answer drawn anyway put the folder left behind under the crumbs
  // of the one opened, until the next change there.
  let listingTurn = 0;
  let opening = 0;  // showFolder calls under way: a refresh waits for them (refreshSoon)

  function showListing(dirId, listing) {
    state.dirId = dirId;
    state.entries = listing.entries;
    state.linkedIds = listing.linkedIds;
    state.lastListing = performance.now();
    renderFolder();
  }

  async function showFolder(dirId) {
    const turn = ++listingTurn;
    opening++;
    try {
      const node = (await api("GET", `/nodes/${dirId}`)).node;
      if (node.kind !== "dir") return await showFolder(node.parent_id);
      const crumbs = await crumbsOf(node);
      const listing = await loadEntries(dirId);
      if (turn !== listingTurn) return;
      state.dir = node;
      state.crumbs = crumbs;
      showListing(dirId, listing);
    } catch (err) {
      if (turn !== listingTurn) return;
      if (err instanceof ApiError && err.status === 404 && dirId !== state.me.root_id) { location.hash = "#/f/" + state.me.root_id; return; }
      failed(err);
    } finally {
      opening--;
    }
  }

  function pathOf(crumbs) {
    return "/" + crumbs.slice(1).map((c) => c.name).join("/");
  }

  function sorted(entries) {
    const { key, dir } = state.sort;
    return [...entries].sort((a, b) => {
      if ((a.kind === "dir") !== (b.kind === "dir")) return a.kind === "dir" ? -1 : 1;
      let x = a[key], y = b[key];
      if (key === "name") { x = x.toLowerCase(); y = y.toLowerCase(); }
      return (x < y ? -1 : x > y ? 1 : 0) * dir || a.name.localeCompare(b.name);
    });
  }

  function header(label, key) {
    const active = state.sort.key === key;
    return h("th", { class: "sortable col-" + key, "aria-sort": active ? (state.sort.dir > 0 ? "ascending" : "descending") : "none" },
      h("button", { type: "button", class: "link", on: { click: () => {
        state.sort = { key, dir: active ? -state.sort.dir : 1 };
        renderFolder();
      } } }, label, active ? (state.sort.dir > 0 ? " ▲" : " ▼") : ""));
  }

  function renderFolder() {
    const crumbs = h("nav", { class: "crumbs", "aria-label": "folder path" },
      state.crumbs.map((c, i) => [i ? h("span", { class: "sep" }, "/") : null,
        i === state.crumbs.length - 1 ? h("span", { class: "crumb current" }, i ? c.name : "My drive")
                                      : h("a", { href: "#/f/" + c.id, class: "crumb" }, i ? c.name : "My drive")]));
    const picker = h("input", { type: "file", multiple: true, id: "pick-files", class: "hidden" });
    const folderPicker = h("input", { type: "file", id: "pick-folder", class: "hidden", webkitdirectory: true });
    picker.addEventListener("change", () => { startUploads(uploads.filesFromInput(picker)); picker.value = ""; });
    folderPicker.addEventListener("change", () => { startUploads(uploads.filesFromInput(folderPicker)); folderPicker.value = ""; });
    const toolbar = h("div", { class: "toolbar" },
      h("button", { type: "button", id: "upload-files", on: { click: () => picker.click() } }, "Upload files"),
      h("button", { type: "button", class: "secondary", id: "upload-folder", on: { click: () => folderPicker.click() } }, "Upload folder"),
      h("button", { type: "button", class: "secondary", id: "new-folder", on: { click: newFolder } }, "New folder"),
      state.dir.parent_id ? h("a", { class: "button secondary", href: `/dirs/${state.dirId}/zip`, id: "download-zip" }, "Download as zip") : null,
      h("button", { type: "button", class: "secondary", id: "restore-folder", on: { click: restoreFolder } }, "Restore to a moment…"),
      picker, folderPicker);
    const rows = sorted(state.entries).map(row);
    const table = h("table", { class: "listing", id: "listing" },
      h("thead", {}, h("tr", {}, header("Name", "name"), header("Size", "size"), header("Modified", "mtime_ns"), h("th", { class: "col-actions" }, ""))),
      h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: 4, class: "empty" }, "This folder is empty. Drop files here to upload them."))));
    show(crumbs, toolbar, unfinishedNote(), table);
  }

  function unfinishedNote() {
    const left = uploads.unfinished().filter((u) => !(state.batch && state.batch.active));
    if (!left.length) return null;
    return h("p", { class: "note", id: "unfinished" },
      `${left.length} upload${left.length > 1 ? "s" : ""} did not finish (${left.map(uploadPath).join(", ")}). ` +
      "Pick or drop the same files again: only what is missing is sent.",
      h("button", { type: "button", class: "link", on: { click: () => {
        for (const u of left) localStorage.removeItem(u.key);
        renderFolder();
      } } }, "Forget them"));
  }

  // Where an unfinished upload was going: the same file picked again resumes only in the
  // same folder, so a name alone did not say why a note outlived the upload just finished.
  function uploadPath(u) {
    return !u.folder || u.folder === "/" ? u.name : u.folder.slice(1) + "/" + u.name;
  }

  // The note follows the uploads as well as the listing's loads: a refresh of the listing
  // after a batch may fail or be overtaken, and the note then said for good that an upload
  // which had just finished did not.
  function renderUnfinished() {
    const old = document.getElementById("unfinished");
    const note = unfinishedNote();
    const listing = document.getElementById("listing");
    if (old) { if (note) old.replaceWith(note); else old.remove(); }
    else if (note && listing) listing.before(note);
  }

  function icon(node) {
    return h("span", { class: "icon " + node.kind, "aria-hidden": "true" });
  }

  function namesBadge(node) {
    if (node.broken) return h("span", { class: "badge warn", title: "the file this name stood for is gone" }, "broken link");
    if (!node.names || node.names < 2) return null;
    return h("span", { class: "badge names", title: `Hard link: one file under ${node.names} names; a change through any of them is a change of all` },
      `${node.names} names`);
  }

  function row(node) {
    const open = node.kind === "dir" ? h("a", { href: "#/f/" + node.id, class: "name" }, node.name)
      : node.broken ? h("span", { class: "name" }, node.name)
      : h("button", { type: "button", class: "link name", on: { click: () => preview(node) } }, node.name);
    const actions = h("div", { class: "actions" },
      node.kind === "file" ? h("a", { href: `/files/${node.id}/content`, class: "action", title: "Download", download: "" }, "Download") : null,
      menuButton(node));
    return h("tr", { dataset: { id: node.id, name: node.name, kind: node.kind } },
      h("td", { class: "col-name" }, h("div", { class: "namecell" }, icon(node), open, namesBadge(node))),
      h("td", { class: "col-size" }, node.kind === "file" ? size(node.size) : ""),
      h("td", { class: "col-mtime_ns" }, date(node.mtime_ns / 1e9)),
      h("td", { class: "col-actions" }, actions));
  }

  function menuButton(node) {
    const select = h("select", { class: "menu", "aria-label": "actions for " + node.name },
      h("option", { value: "" }, "More…"),
      h("option", { value: "rename" }, "Rename"),
      h("option", { value: "move" }, "Move"),
      node.kind === "file" ? h("option", { value: "versions" }, "Versions") : null,
      node.broken ? null : h("option", { value: "share" }, "Share link"),
      h("option", { value: "delete" }, "Delete"));
    select.addEventListener("change", () => {
      const what = select.value;
      select.value = "";
      ({ rename, move, versions, share: shareDialog, delete: remove })[what](node);
    });
    return select;
  }

  async function newFolder() {
    const values = await dialog("New folder", [{ name: "name", label: "Name", required: true }], "Create");
    if (!values) return;
    try {
      await api("POST", "/dirs", { parent_id: state.dirId, name: values.name });
      await showFolder(state.dirId);
    } catch (err) { failed(err); }
  }

  async function rename(node) {
    const values = await dialog("Rename", [{ name: "name", label: "New name", value: node.name, required: true }], "Rename");
    if (!values || values.name === node.name) return;
    try {
      await api("POST", `/nodes/${node.id}/move`, { parent_id: node.parent_id, name: values.name });
      await showFolder(state.dirId);
    } catch (err) { failed(err); }
  }

  async function move(node) {
    const values = await dialog("Move " + node.name, [{ name: "path", label: "To folder (a path, / is the drive)", value: pathOf(state.crumbs), required: true }], "Move");
    if (!values) return;
    try {
      const target = (await api("GET", "/resolve" + query({ path: values.path.startsWith("/") ? values.path : "/" + values.path }))).node;
      if (target.kind !== "dir") throw new Error(values.path + " is not a folder");
      await api("POST", `/nodes/${node.id}/move`, { parent_id: target.id, name: node.name });
      toast(`Moved ${node.name} to ${values.path}`);
      await showFolder(state.dirId);
    } catch (err) { failed(err); }
  }

  async function remove(node) {
    const others = (node.names || 1) - 1;
    const values = await dialog(`Delete ${node.name}?`, [], others ? "Remove this name" : "Move to trash",
      h("p", {}, others ? `Only this name goes: the file keeps its ${others === 1 ? "other name" : others + " other names"}, with its content and versions. Nothing goes to the trash.`
                        : "It goes to the trash, where it can be restored until it is emptied."));
    if (!values) return;
    try {
      const gone = await api("DELETE", `/nodes/${node.id}` + query({ recursive: true }));
      const onlyName = gone.node.kind === "link" || !gone.node.deleted;  // an alias, or a file moved to its other name
      toast(onlyName ? `${node.name} removed; the file keeps its other names` : `${node.name} moved to the trash`);
      await showFolder(state.dirId);
    } catch (err) { failed(err); }
  }

  // The folder as it was at a moment: the server's point-in-time restore (POST /restore,
  // as `cloudfs restore DIR --at`): old content back, deleted files back, moves undone,
  // what was made since into the trash. Undone by another restore to just before it.
  function localInput(seconds) {
    const d = new Date(seconds * 1000);
    const pad = (n) => String(n).padStart(2, "0");
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }

  async function restoreFolder() {
    const path = pathOf(state.crumbs);
    const name = state.dir.parent_id ? state.dir.name : "My drive";
    const values = await dialog(`Restore ${name} to a moment`, [
      { name: "at", label: "As it was at", type: "datetime-local", step: 1, value: localInput(Date.now() / 1000 - 3600), required: true },
    ], "Restore", h("p", {}, "Files go back to their content of then, deleted ones come back, moves are undone; what was made since goes to the trash."));
    if (!values) return;
    const at = new Date(values.at).getTime() / 1000;
    if (!Number.isFinite(at)) return toast("Not a date and time: " + values.at, "error");
    const before = Date.now() / 1000;
    try {
      const r = await api("POST", "/restore", { path, at });
      toast(`${name} is as it was at ${date(at)}: ${r.reverted} reverted, ${r.undeleted} brought back, ${r.moved} moved back, ` +
            `${r.trashed} made since moved to the trash. (Undo: restore to ${localInput(before).replace("T", " ")}.)`);
      await showFolder(state.dirId);
    } catch (err) { failed(err); }
  }

  // --- previews and versions ---

  function overlay(title, body, actions) {
    const box = h("dialog", { class: "modal wide", id: "preview" },
      h("div", { class: "overlay-head" }, h("h2", {}, title), h("div", { class: "overlay-actions" }, actions,
        h("button", { type: "button", class: "secondary", id: "close-overlay", on: { click: () => { box.close(); box.remove(); } } }, "Close"))),
      body);
    box.addEventListener("close", () => box.remove());
    document.body.append(box);
    box.showModal();
    return box;
  }

  async function preview(node) {
    const url = `/files/${node.id}/content`;
    const kind = cfs.previewKind(node.name);
    let body;
    if (kind === "image") body = h("img", { src: url + "?inline=1", alt: node.name, class: "preview-media" });
    else if (kind === "video") body = h("video", { src: url + "?inline=1", controls: true, class: "preview-media" });
    else if (kind === "audio") body = h("audio", { src: url + "?inline=1", controls: true });
    else if (kind === "pdf") body = h("iframe", { src: url + "?inline=1", class: "preview-pdf", title: node.name });
    else if (kind === "text" || node.size <= 256 * 1024) body = await textPreview(url, node);
    else body = h("p", {}, "No preview for this kind of file.");
    overlay(node.name, h("div", { class: "preview-body" }, body),
      [h("a", { class: "button", href: url, download: "" }, "Download"),
       h("button", { type: "button", class: "secondary", on: { click: () => versions(node) } }, "Versions")]);
  }

  async function textPreview(url, node) {
    const limit = 1024 * 1024;
    const response = await fetch(url, { headers: { Range: `bytes=0-${limit - 1}` }, credentials: "same-origin" });
    if (!response.ok && response.status !== 206) return h("p", { class: "error" }, "Could not read the file (" + response.status + ").");
    const bytes = new Uint8Array(await response.arrayBuffer());
    const binary = bytes.slice(0, 8000).some((b) => b === 0);
    if (binary) return h("p", {}, "This file is not text: download it to open it.");
    const text = new TextDecoder("utf-8", { fatal: false }).decode(bytes);
    return h("div", {}, h("pre", { class: "preview-text", id: "preview-text" }, text),
      node.size > limit ? h("p", { class: "note" }, `The first ${size(limit)} of ${size(node.size)}.`) : null);
  }

  async function versions(node) {
    let list;
    try { list = await api("GET", `/files/${node.id}/versions`); } catch (err) { return failed(err); }
    const rows = list.versions.map((v, i) => h("tr", { dataset: { rev: v.rev } },
      h("td", {}, "rev " + v.rev, i === 0 ? h("span", { class: "badge" }, "current") : null),
      h("td", {}, size(v.size)),
      h("td", {}, date(v.created_at)),
      h("td", {}, `${state.me.name} on ${v.device}`),
      h("td", {}, h("a", { href: `/files/${node.id}/content` + query({ rev: v.rev }), download: "", class: "action" }, "Download"),
        i === 0 ? null : h("button", { type: "button", class: "link restore", on: { click: async () => {
          try {
            await api("POST", `/files/${node.id}/restore`, { rev: v.rev });
            toast(`${node.name}: rev ${v.rev} is current again`);
            document.getElementById("preview")?.close();
            await showFolder(state.dirId);
          } catch (err) { failed(err); }
        } } }, "Restore"))));
    const old = document.getElementById("preview");
    if (old) { old.close(); old.remove(); }
    overlay("Versions of " + node.name, h("table", { class: "listing", id: "versions" },
      h("thead", {}, h("tr", {}, ["Version", "Size", "Saved", "By", ""].map((t) => h("th", {}, t)))), h("tbody", {}, rows)), []);
  }

  // --- share links ---

  async function shareDialog(node) {
    const values = await dialog("Share " + node.name, [
      { name: "expires", label: "Expires", type: "select", value: "", options: [["", "never"], ["3600", "in an hour"], ["86400", "in a day"], ["604800", "in a week"], ["2592000", "in 30 days"]] },
      { name: "password", label: "Password (optional)", type: "password", autocomplete: "new-password" },
      { name: "max", label: "Download limit (optional)", type: "number", min: 1 },
    ], "Create link", h("p", {}, "Anyone with the link can download it (read-only)."));
    if (!values) return;
    try {
      const link = await api("POST", "/share-links", {
        node_id: node.id,
        expires_at: values.expires ? Date.now() / 1000 + Number(values.expires) : null,
        password: values.password || null,
        max_downloads: values.max ? Number(values.max) : null,
      });
      const field = h("input", { readonly: true, value: link.url, id: "share-url", class: "wide" });
      overlay("Link to " + node.name, h("div", {}, field,
        h("p", { class: "note" }, "Manage your links under Links.")),
        [h("button", { type: "button", on: { click: () => copy(link.url) } }, "Copy")]);
      field.select();
    } catch (err) { failed(err); }
  }

  async function copy(text) {
    try { await navigator.clipboard.writeText(text); toast("Copied"); } catch (e) { toast("Select the link and copy it"); }
  }

  async function showLinks() {
    try {
      const { links } = await api("GET", "/share-links");
      const rows = links.map((l) => h("tr", { dataset: { id: l.id } },
        h("td", {}, h("a", { href: l.url, target: "_blank", rel: "noopener noreferrer" }, l.path)),
        h("td", {}, l.expired ? "expired" : l.expires_at ? "until " + date(l.expires_at) : "never expires"),
        h("td", {}, (l.has_password ? "password · " : "") + (l.max_downloads ? `${l.downloads}/${l.max_downloads} downloads` : `${l.downloads} downloads`)),
        h("td", {}, h("button", { type: "button", class: "link", on: { click: () => copy(l.url) } }, "Copy"),
          h("button", { type: "button", class: "link danger revoke", on: { click: async () => {
            try { await api("DELETE", `/share-links/${encodeURIComponent(l.id)}`); toast("Link revoked"); showLinks(); } catch (err) { failed(err); }
          } } }, "Revoke"))));
      show(h("h1", {}, "Share links"),
        h("table", { class: "listing", id: "links" }, h("thead", {}, h("tr", {}, ["Shared", "Expiry", "Use", ""].map((t) => h("th", {}, t)))),
          h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: 4, class: "empty" }, "No links yet: share a file from its menu.")))));
    } catch (err) { failed(err); }
  }

  // --- trash ---

  async function showTrash() {
    try {
      const { entries } = await api("GET", "/trash");
      const rows = entries.map((e) => h("tr", { dataset: { id: e.node.id, name: e.node.name } },
        h("td", { class: "col-name" }, icon(e.node), h("span", { class: "name" }, e.path)),
        h("td", {}, e.inside ? `${e.inside} inside` : e.node.kind === "file" ? size(e.node.size) : ""),
        h("td", {}, date(e.deleted_at), e.device ? " on " + e.device : ""),
        h("td", {}, h("button", { type: "button", class: "link restore", on: { click: async () => {
          try {
            const back = await api("POST", `/trash/${e.node.id}/undelete`);
            toast(`${back.node.name} is back`);
            showTrash();
          } catch (err) { failed(err); }
        } } }, "Restore"))));
      show(h("h1", {}, "Trash"),
        h("div", { class: "toolbar" }, h("button", { type: "button", class: "danger", id: "empty-trash", disabled: !entries.length, on: { click: async () => {
          const ok = await dialog("Empty the trash?", [], "Empty it", h("p", {}, "What is in the trash is deleted for good."));
          if (!ok) return;
          try { const r = await api("DELETE", "/trash"); toast(`${r.purged} deleted for good`); showTrash(); } catch (err) { failed(err); }
        } } }, "Empty trash")),
        h("table", { class: "listing", id: "trash" }, h("thead", {}, h("tr", {}, ["Deleted", "Size", "When", ""].map((t) => h("th", {}, t)))),
          h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: 4, class: "empty" }, "The trash is empty.")))));
    } catch (err) { failed(err); }
  }

  // --- devices ---

  async function showDevices() {
    try {
      const { devices } = await api("GET", "/devices");
      const rows = devices.map((d) => h("tr", { dataset: { id: d.id, label: d.label || "" } },
        h("td", {}, d.kind === "session" ? "Browser" : "Device", " ", h("strong", {}, d.label || (d.kind === "device" ? "first token" : "")),
          d.current ? h("span", { class: "badge" }, "this browser") : null),
        h("td", {}, d.last_device || ""),
        h("td", {}, d.last_seen_at ? date(d.last_seen_at) : "never"),
        h("td", {}, date(d.created_at)),
        h("td", {}, h("button", { type: "button", class: "link danger revoke", on: { click: async () => {
          const ok = await dialog(`Revoke ${d.label || d.kind}?`, [], "Revoke", h("p", {}, d.kind === "device"
            ? "The device is refused from now on; it must be mounted again with a new token." : "That browser is signed out."));
          if (!ok) return;
          try {
            await api("DELETE", `/devices/${d.id}`);
            if (d.current) return signOut();
            toast("Revoked"); showDevices();
          } catch (err) { failed(err); }
        } } }, "Revoke"))));
      show(h("h1", {}, "Devices and sessions"),
        h("div", { class: "toolbar" }, h("button", { type: "button", id: "add-device", on: { click: addDevice } }, "Add a device")),
        h("table", { class: "listing", id: "devices" }, h("thead", {}, h("tr", {}, ["Name", "Last seen as", "Last seen", "Since", ""].map((t) => h("th", {}, t)))),
          h("tbody", {}, rows)));
    } catch (err) { failed(err); }
  }

  async function addDevice() {
    const values = await dialog("Add a device", [{ name: "label", label: "Device name", required: true, placeholder: "laptop" }], "Make a token");
    if (!values) return;
    try {
      const t = await api("POST", "/devices", { label: values.label });
      const command = `cloudfs mount ${location.origin} ~/cloudfs --device '${values.label}' --token ${t.token}`;
      overlay("Token for " + values.label, h("div", {}, h("p", {}, "Shown once. On the device, run:"),
        h("pre", { class: "preview-text", id: "new-token" }, command)), [h("button", { type: "button", on: { click: () => copy(command) } }, "Copy")]);
      showDevices();
    } catch (err) { failed(err); }
  }

  // --- search ---

  async function showSearch(q) {
    document.getElementById("search-q").value = q;
    if (!q) return;
    try {
      const result = await api("GET", "/search" + query({ q, limit: 200 }));
      const shown = asShown(result.hits.map((hit) => hit.node), result.linked);
      const rows = result.hits.map((hit, i) => ({ ...hit, node: shown[i] })).map((hit) => h("tr", { dataset: { id: hit.node.id, name: hit.node.name } },
        h("td", { class: "col-name" }, icon(hit.node),
          hit.node.kind === "dir" ? h("a", { href: "#/f/" + hit.node.id, class: "name" }, hit.path)
            : hit.node.broken ? h("span", { class: "name" }, hit.path)
            : h("button", { type: "button", class: "link name", on: { click: () => preview(hit.node) } }, hit.path), namesBadge(hit.node)),
        h("td", { class: "col-size" }, hit.node.kind === "file" ? size(hit.node.size) : ""),
        h("td", { class: "col-mtime_ns" }, date(hit.node.mtime_ns / 1e9)),
        h("td", {}, h("a", { href: "#/f/" + hit.node.parent_id, class: "action" }, "Open folder"))));
      show(h("h1", {}, `Search: ${q}`),
        h("table", { class: "listing", id: "results" }, h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { class: "empty" }, "Nothing by that name.")))),
        result.more ? h("p", { class: "note" }, "More match: narrow the search.") : null);
    } catch (err) { failed(err); }
  }

  // --- uploads ---

  function startUploads(files) {
    if (!files.length) return;
    if (!state.batch || !state.batch.active) state.batch = new uploads.Batch(renderUploads);
    const path = pathOf(state.crumbs);
    for (const [file, rel] of files) state.batch.add(file, rel, state.dirId, path);
    renderUploads();
  }

  let uploadsTimer = null;
  function renderUploads() {
    if (uploadsTimer) return;
    uploadsTimer = setTimeout(() => { uploadsTimer = null; drawUploads(); }, 150);
  }

  const STATES = { queued: "waiting", uploading: "uploading", committing: "saving", offline: "connection lost: retrying",
                   done: "done", failed: "failed", cancelled: "cancelled" };

  function drawUploads() {
    const batch = state.batch;
    const panel = document.getElementById("uploads");
    if (!batch) { panel.hidden = true; return; }
    panel.hidden = false;
    const speed = batch.speed();
    const left = batch.total - batch.done;
    const done = batch.jobs.filter((j) => j.state === "done").length;
    const items = batch.jobs.slice(-50).map((j) => {
      const jobSpeed = j.speed();
      return h("li", { class: "upload " + j.state, dataset: { name: j.relPath, state: j.state } },
        h("div", { class: "upload-name" }, j.relPath, j.renamed && j.result ? h("span", { class: "badge" }, "saved as " + j.result.node.name) : null),
        h("progress", { max: Math.max(j.file.size, 1), value: j.state === "done" ? Math.max(j.file.size, 1) : j.done }),
        h("div", { class: "upload-meta" }, STATES[j.state] || j.state,
          j.state === "uploading" || j.state === "offline"
            ? ` · ${size(j.done)} of ${size(j.file.size)} · ${size(jobSpeed)}/s · ${cfs.duration((j.file.size - j.done) / jobSpeed)} left` : "",
          j.state === "failed" ? " · " + (j.error && j.error.message) : ""));
    });
    clear(panel).append(
      h("div", { class: "uploads-head" },
        h("strong", { id: "batch-status" }, batch.active ? `Uploading ${batch.jobs.length - done} of ${batch.jobs.length}` : `${done} of ${batch.jobs.length} uploaded`),
        h("progress", { id: "batch-progress", max: Math.max(batch.total, 1), value: batch.active ? batch.done : Math.max(batch.total, 1) }),
        h("span", { id: "batch-meta" }, `${size(batch.done)} of ${size(batch.total)}`,
          batch.active ? ` · ${size(speed)}/s · ${cfs.duration(left / speed)} left` : ""),
        batch.active ? null : h("button", { type: "button", class: "link", on: { click: () => { state.batch = null; drawUploads(); } } }, "Close")),
      h("ul", { class: "upload-list" }, items));
    renderUnfinished();
    if (!batch.active && state.dirId) refreshSoon();
  }

  // Drop anywhere on the page.
  document.addEventListener("dragover", (ev) => { if (state.me && state.dirId) { ev.preventDefault(); document.body.classList.add("dropping"); } });
  document.addEventListener("dragleave", (ev) => { if (!ev.relatedTarget) document.body.classList.remove("dropping"); });
  document.addEventListener("drop", async (ev) => {
    document.body.classList.remove("dropping");
    if (!state.me || !state.dirId) return;
    ev.preventDefault();
    try { startUploads(await uploads.filesFromDrop(ev.dataTransfer)); } catch (err) { failed(err); }
  });

  // --- the change feed: the open folder follows what devices do ---

  let refreshTimer = null;
  let refreshDue = 0;
  let refreshFailures = 0;
  function refreshSoon(delay = 200) {
    const due = performance.now() + delay;
    if (refreshTimer) {
      if (refreshDue <= due) return;
      clearTimeout(refreshTimer);  // a change meanwhile does not wait for a retry's back-off
    }
    refreshDue = due;
    refreshTimer = setTimeout(async () => {
      refreshTimer = null;
      const view = location.hash.replace(/^#\/?/, "").split("/")[0];
      if (view === "" || view === "f") {
        if (opening || document.querySelector("dialog[open]")) return refreshSoon();  // not under someone's feet
        const turn = ++listingTurn, dirId = state.dirId;
        try {
          const listing = await loadEntries(dirId);
          refreshFailures = 0;
          if (turn === listingTurn) showListing(dirId, listing);
        } catch (err) {
          // Tried again a few times: waiting for the next change left a folder without
          // the file just uploaded to it for as long as nothing else changed there.
          if (++refreshFailures <= 6) refreshSoon(500 * 2 ** refreshFailures);
        }
      } else if (view === "trash") showTrash();
    }, delay);
  }

  async function follow() {
    const controller = new AbortController();
    state.feed = controller;
    try { state.cursor = (await api("GET", "/me")).cursor; } catch (err) { /* asked again below */ }
    let wait = 500;
    while (state.feed === controller) {
      try {
        const page = await api("GET", "/changes" + query({ cursor: state.cursor, wait: 25, limit: 1000 }), undefined, { signal: controller.signal });
        state.cursor = page.cursor;
        wait = 500;
        const watched = state.dirId;
        if (page.changes.some((c) => c.node.parent_id === watched || c.old_parent_id === watched || c.node.id === watched ||
                                     state.linkedIds.has(c.node.id) || state.linkedIds.has(c.node.link_to))) refreshSoon();
        else if (page.changes.length && location.hash.startsWith("#/trash")) refreshSoon();
      } catch (err) {
        if (controller.signal.aborted) return;
        if (err instanceof ApiError && err.status === 410) { state.cursor = (await api("GET", "/me").catch(() => ({ cursor: 0 }))).cursor; refreshSoon(); continue; }
        if (err instanceof ApiError && err.status === 401) { state.feed = null; return showSignIn("Your session ended: sign in again."); }
        await new Promise((r) => setTimeout(r, wait));
        wait = Math.min(wait * 2, 10000);
      }
    }
  }

  // --- wiring ---

  document.getElementById("sign-out").addEventListener("click", signOut);
  document.getElementById("search").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const q = document.getElementById("search-q").value.trim();
    if (q) location.hash = "#/search/" + encodeURIComponent(q);
  });
  window.addEventListener("hashchange", route);
  window.addEventListener("beforeunload", (ev) => { if (state.batch && state.batch.active) { ev.preventDefault(); ev.returnValue = ""; } });
  start().catch(failed);
})();
