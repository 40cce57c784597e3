// Uploads from the page, the way a mount uploads (ARCHITECTURE.md, "Upload path"):
// cut the file into chunks, fingerprint each with Web Crypto SHA-256, ask the server
// which it lacks (POST /uploads/prepare), PUT only those to the signed URLs, commit
// (POST /files). The server verifies every chunk as for any device.
//
// Memory: a file is read one chunk at a time (Blob.slice), hashed and dropped; a PUT
// sends a slice of the file, which the browser reads from disk itself. So a 50 GB
// file costs a few chunks of memory, never the file.
//
// Resume: fingerprints computed so far are kept in localStorage under the file's name,
// size and date, and the server keeps what was PUT. After a dropped connection each
// request is retried until the network is back; after a page reload, picking the same
// file again skips the hashing and the server's answer to prepare skips what it has.
// Only the chunks still missing travel.
//
// Clashes: a new file never replaces one of the same name; it is committed beside it
// as `NAME (conflicted copy, web, DAY).EXT`, as a device would.
"use strict";

const uploads = (() => {
  const { api, ApiError } = cfs;
  const MiB = 1024 * 1024;
  const INLINE_MAX = 64 * 1024;      // wire.INLINE_MAX_BYTES: a small file travels in its commit
  const WINDOW = 8;                  // chunks fingerprinted, then prepared, at a time
  const PUT_PARALLEL = 4;            // PUTs in flight, all files together
  const FILE_PARALLEL = 3;
  const RESUME_PREFIX = "cloudfs-upload:";

  // The mount's rule (backend/chunker.py average_size): 4 MiB, doubling from 16 GiB on
  // until a file has at most ~4096 chunks, at most 16 MiB.
  function chunkSize(fileSize) {
    let avg = 4 * MiB;
    while (avg < 16 * MiB && Math.floor(fileSize / avg) > 4096) avg *= 2;
    return avg;
  }

  function hex(buffer) {
    const bytes = new Uint8Array(buffer);
    let out = "";
    for (let i = 0; i < bytes.length; i++) out += bytes[i].toString(16).padStart(2, "0");
    return out;
  }

  async function sha256(blob) {
    return hex(await crypto.subtle.digest("SHA-256", await blob.arrayBuffer()));
  }

  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

  function isNetworkError(err) {
    // 5xx but 507: the server or the store is away for a moment. 507 (over quota) is final.
    return err instanceof TypeError || err.name === "NetworkError"
      || (err instanceof ApiError && (err.status === 0 || (err.status >= 500 && err.status !== 507)));
  }

  // Retry `fn` while the network (or the server) is away; anything else is final.
  async function retrying(job, fn) {
    let wait = 250;
    for (let attempt = 0; ; attempt++) {
      try {
        const value = await fn();
        if (job.state === "offline") job.setState(job.resumeState || "uploading");
        return value;
      } catch (err) {
        if (!isNetworkError(err) || job.cancelled) throw err;
        if (job.state !== "offline") { job.resumeState = job.state; job.setState("offline"); }
        await sleep(wait);
        wait = Math.min(wait * 2, 5000);
      }
    }
  }

  // A global bound on PUTs in flight.
  let puts = 0;
  const waiters = [];
  async function acquire() { while (puts >= PUT_PARALLEL) await new Promise((r) => waiters.push(r)); puts++; }
  function release() { puts--; const next = waiters.shift(); if (next) next(); }

  function put(job, ticket, blob) {
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open(ticket.method, ticket.url);
      for (const [k, v] of Object.entries(ticket.headers || {})) xhr.setRequestHeader(k, v);
      let reported = 0;
      xhr.upload.onprogress = (ev) => { job.addSent(ev.loaded - reported); reported = ev.loaded; };
      xhr.onload = () => {
        if (xhr.status >= 200 && xhr.status < 300) { job.addSent(blob.size - reported); resolve(); return; }
        job.addSent(-reported);
        let body = null;
        try { body = JSON.parse(xhr.responseText); } catch (e) { /* not JSON */ }
        reject(new ApiError(xhr.status, body));
      };
      xhr.onerror = xhr.onabort = xhr.ontimeout = () => { job.addSent(-reported); reject(new TypeError("network error")); };
      job.xhrs.add(xhr);
      xhr.onloadend = () => job.xhrs.delete(xhr);
      xhr.send(blob);
    });
  }

  function resumeKey(job) {
    return RESUME_PREFIX + JSON.stringify([job.parentPath, job.relPath, job.file.size, job.file.lastModified]);
  }

  function loadResume(job) {
    try {
      const saved = JSON.parse(localStorage.getItem(resumeKey(job)) || "null");
      if (saved && saved.chunk === job.chunk) return saved.fps;
    } catch (e) { /* ignore a damaged entry */ }
    return [];
  }

  function saveResume(job, fps) {
    try {
      localStorage.setItem(resumeKey(job), JSON.stringify({ chunk: job.chunk, fps, name: job.relPath,
                                                            folder: job.parentPath, at: Date.now() }));
    } catch (e) { /* storage full: resume costs a second hashing pass, nothing else */ }
  }

  function unfinished() {
    const out = [];
    for (let i = 0; i < localStorage.length; i++) {
      const key = localStorage.key(i);
      if (!key.startsWith(RESUME_PREFIX)) continue;
      try { const v = JSON.parse(localStorage.getItem(key)); out.push({ key, name: v.name, folder: v.folder, at: v.at }); }
      catch (e) { /* skip */ }
    }
    return out;
  }

  function conflictedName(name, n) {
    const dot = name.lastIndexOf(".");
    const hasExt = dot > 0;
    const stem = hasExt ? name.slice(0, dot) : name;
    const ext = hasExt ? name.slice(dot) : "";
    const day = new Date().toISOString().slice(0, 10);
    const suffix = n === 1 ? "" : " " + n;
    let candidate = `${stem} (conflicted copy, web, ${day}${suffix})${ext}`;
    const over = new TextEncoder().encode(candidate).length - 255;
    if (over > 0) candidate = `${stem.slice(0, Math.max(1, stem.length - over - 1))} (conflicted copy, web, ${day}${suffix})${ext}`;
    return candidate;
  }

  // Same chunks as ours: a commit whose answer was lost, tried again.
  async function isOurs(node, refs) {
    if (node.kind !== "file" || node.size !== refs.reduce((a, c) => a + c.length, 0)) return false;
    const info = await api("GET", `/files/${node.id}` + cfs.query({ urls: false }));
    return info.chunks.length === refs.length && info.chunks.every((c, i) => c.fingerprint === refs[i].fingerprint);
  }

  async function commit(job, parentId, refs, inline) {
    const mtime = Math.max(0, Math.round(job.file.lastModified || Date.now())) * 1e6;
    for (let n = 0; n < 1000; n++) {
      const name = n === 0 ? job.name : conflictedName(job.name, n);
      const body = { parent_id: parentId, name, base_rev: 0, size: job.file.size, mtime_ns: mtime, chunks: refs };
      if (inline) body.inline = inline;
      try {
        return await retrying(job, () => api("POST", "/files", body));
      } catch (err) {
        if (!(err instanceof ApiError && err.status === 409 && err.body.node)) throw err;
        if (await isOurs(err.body.node, refs)) return { node: err.body.node };
        job.renamed = true;
      }
    }
    throw new Error("too many conflicted copies of " + job.name);
  }

  async function base64(buffer) {
    const blob = new Blob([buffer]);
    const url = await new Promise((resolve) => { const r = new FileReader(); r.onload = () => resolve(r.result); r.readAsDataURL(blob); });
    return url.slice(url.indexOf(",") + 1);
  }

  async function send(job, parentId) {
    const file = job.file;
    if (file.size <= INLINE_MAX) {
      const bytes = await file.arrayBuffer();
      if (bytes.byteLength === 0) return commit(job, parentId, [], null);
      const fp = hex(await crypto.subtle.digest("SHA-256", bytes));
      job.setState("uploading");
      const result = await commit(job, parentId, [{ fingerprint: fp, length: bytes.byteLength }],
                                  [{ fingerprint: fp, data: await base64(bytes) }]);
      job.addSent(bytes.byteLength);
      return result;
    }
    const size = job.chunk;
    const count = Math.ceil(file.size / size);
    const fps = loadResume(job);
    const refs = [];
    const inFlight = new Set();
    const sent = new Set();
    let failure = null;
    for (let w = 0; w < count && !failure; w += WINDOW) {
      const idx = [];
      for (let i = w; i < Math.min(count, w + WINDOW); i++) idx.push(i);
      job.setState("uploading");
      for (const i of idx) {
        if (job.cancelled) throw new Error("cancelled");
        if (!fps[i]) fps[i] = await sha256(file.slice(i * size, Math.min(file.size, (i + 1) * size)));
        job.hashed = Math.min(file.size, (i + 1) * size);
      }
      saveResume(job, fps);
      const chunks = idx.map((i) => ({ fingerprint: fps[i], length: Math.min(file.size, (i + 1) * size) - i * size }));
      refs.push(...chunks);
      const answer = await retrying(job, () => api("POST", "/uploads/prepare", { chunks }));
      const tickets = new Map(answer.missing.map((t) => [t.fingerprint, t.upload]));
      for (const [k, i] of idx.entries()) {
        const fp = fps[i];
        if (!tickets.has(fp) || sent.has(fp)) { job.addPresent(chunks[k].length); continue; }
        sent.add(fp);
        await acquire();
        if (failure) { release(); break; }
        const blob = file.slice(i * size, i * size + chunks[k].length);
        const p = putWithRetry(job, fp, chunks[k].length, tickets.get(fp), blob)
          .catch((err) => { failure = failure || err; })
          .finally(() => { release(); inFlight.delete(p); });
        inFlight.add(p);
      }
    }
    await Promise.all(inFlight);
    if (failure) throw failure;
    job.setState("committing");
    const result = await commit(job, parentId, refs, null);
    localStorage.removeItem(resumeKey(job));
    return result;
  }

  async function putWithRetry(job, fp, length, ticket, blob) {
    await retrying(job, async () => {
      try {
        await put(job, ticket, blob);
      } catch (err) {
        if (err instanceof ApiError && err.status === 403) {  // the signature expired: ask again
          const again = await api("POST", "/uploads/prepare", { chunks: [{ fingerprint: fp, length }] });
          if (!again.missing.length) return;
          ticket = again.missing[0].upload;
        }
        throw err;
      }
    });
  }

  // --- folders: created as needed, an existing folder of the same name is used ---

  const dirCache = new Map();
  async function ensureDir(parentId, name, job) {
    const key = parentId + "/" + name;
    if (dirCache.has(key)) return dirCache.get(key);
    const made = (async () => {
      try {
        return (await retrying(job, () => api("POST", "/dirs", { parent_id: parentId, name }))).node.id;
      } catch (err) {
        if (err instanceof ApiError && err.status === 409 && err.body.node && err.body.node.kind === "dir") return err.body.node.id;
        throw err;
      }
    })();
    dirCache.set(key, made);
    made.catch(() => dirCache.delete(key));
    return made;
  }

  // --- jobs and the batch ---

  class Job {
    constructor(batch, file, relPath, parentId, parentPath) {
      this.batch = batch;
      this.file = file;
      this.relPath = relPath;
      this.parts = relPath.split("/");
      this.name = this.parts[this.parts.length - 1];
      this.parentId = parentId;
      this.parentPath = parentPath;
      this.chunk = chunkSize(file.size);
      this.done = 0;        // bytes the server has: sent now, or already there
      this.hashed = 0;
      this.state = "queued";
      this.xhrs = new Set();
      this.cancelled = false;
      this.renamed = false;
      this.samples = [];
      this.started = null;
    }
    setState(state) { this.state = state; this.batch.changed(this); }
    addSent(n) { this.done += n; this.batch.done += n; this.sample(); this.batch.changed(this); }
    addPresent(n) { this.done += n; this.batch.done += n; this.batch.changed(this); }
    sample() {
      const now = performance.now();
      this.samples.push([now, this.done]);
      while (this.samples.length > 2 && now - this.samples[0][0] > 5000) this.samples.shift();
    }
    speed() {  // bytes per second over the last few seconds
      if (this.samples.length < 2) return 0;
      const [t0, b0] = this.samples[0], [t1, b1] = this.samples[this.samples.length - 1];
      return t1 > t0 ? (b1 - b0) / ((t1 - t0) / 1000) : 0;
    }
    async run() {
      this.started = performance.now();
      try {
        let parent = this.parentId;
        for (const dir of this.parts.slice(0, -1)) parent = await ensureDir(parent, dir, this);
        this.result = await send(this, parent);
        this.setState("done");
      } catch (err) {
        this.error = err;
        this.setState(this.cancelled ? "cancelled" : "failed");
      }
    }
    cancel() { this.cancelled = true; for (const x of this.xhrs) x.abort(); }
  }

  class Batch {
    constructor(onChange) {
      this.jobs = [];
      this.total = 0;
      this.done = 0;
      this.onChange = onChange;
      this.samples = [];
      this.running = 0;
      this.queue = [];
    }
    add(file, relPath, parentId, parentPath) {
      const job = new Job(this, file, relPath, parentId, parentPath);
      this.jobs.push(job);
      this.total += file.size;
      this.queue.push(job);
      this.pump();
      this.changed(job);
      return job;
    }
    pump() {
      while (this.running < FILE_PARALLEL && this.queue.length) {
        const job = this.queue.shift();
        this.running++;
        job.run().finally(() => { this.running--; this.pump(); });
      }
    }
    changed(job) {
      const now = performance.now();
      this.samples.push([now, this.done]);
      while (this.samples.length > 2 && now - this.samples[0][0] > 5000) this.samples.shift();
      this.onChange(job);
    }
    speed() {
      if (this.samples.length < 2) return 0;
      const [t0, b0] = this.samples[0], [t1, b1] = this.samples[this.samples.length - 1];
      return t1 > t0 ? (b1 - b0) / ((t1 - t0) / 1000) : 0;
    }
    get active() { return this.jobs.some((j) => !["done", "failed", "cancelled"].includes(j.state)); }
  }

  // Everything a drop holds, folders walked (webkitGetAsEntry works in Chromium and Firefox).
  async function filesFromDrop(dataTransfer) {
    const out = [];
    const entries = [...dataTransfer.items].map((item) => item.webkitGetAsEntry && item.webkitGetAsEntry()).filter(Boolean);
    if (!entries.length) return [...dataTransfer.files].map((f) => [f, f.name]);
    async function walk(entry, prefix) {
      if (entry.isFile) {
        const file = await new Promise((res, rej) => entry.file(res, rej));
        out.push([file, prefix + entry.name]);
      } else if (entry.isDirectory) {
        const reader = entry.createReader();
        for (;;) {
          const batch = await new Promise((res, rej) => reader.readEntries(res, rej));
          if (!batch.length) break;
          for (const e of batch) await walk(e, prefix + entry.name + "/");
        }
      }
    }
    for (const e of entries) await walk(e, "");
    return out;
  }

  function filesFromInput(input) {
    return [...input.files].map((f) => [f, f.webkitRelativePath || f.name]);
  }

  return { Batch, filesFromDrop, filesFromInput, unfinished, chunkSize, conflictedName };
})();
