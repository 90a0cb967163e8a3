// ltt serve's kernel: the widget's page (graph.js render()) driven over a WebSocket. A third
// transport next to the Jupyter comm and the report's offlineKernel: createSocketModel() is an
// anywidget-like model whose changes go to the server as {method: "update", state} and whose
// send() goes as {method: "custom", content}; the server's answers come back as change events.
// servePage() adds the serve toolbar (model, device, dtype, prompt list, queue) around it, and
// shows one view, or two side by side for a diff of two prompts (the views of a DiffWidget).
// Every string from the server reaches the page as textContent only.

import { createModel, h, render } from "./graph.js";

/** graph.js's createModel() over `transmit(msg)`: its changes go as {method: "update", state},
 *  its send() as {method: "custom", content}; apply(updates) takes the kernel's answers. */
export function createSocketModel(initial, transmit) {
  return createModel(initial, ({ changes, msg }) =>
    transmit(changes ? { method: "update", state: changes } : { method: "custom", content: msg }));
}

/** The WebSocket URL of this page's server (the page's ?token= travels along). */
export function socketURL(loc = window.location) {
  const token = new URLSearchParams(loc.search).get("token");
  const proto = loc.protocol === "https:" ? "wss:" : "ws:";
  return `${proto}//${loc.host}/ws${token ? `?token=${encodeURIComponent(token)}` : ""}`;
}

/** A connection: send(msg) as JSON; every message from the server goes to
 *  handlers[msg.method](msg); handlers.closed(ev) when it ends. */
export function connectKernel(url, handlers) {
  const ws = new WebSocket(url);
  const conn = {
    ws,
    send(msg) {
      if (ws.readyState === WebSocket.OPEN) ws.send(typeof msg === "string" ? msg : JSON.stringify(msg));
      else if (handlers.error) handlers.error({ message: "not connected to the server" });
    },
  };
  ws.addEventListener("message", (ev) => {
    let msg;
    try { msg = JSON.parse(ev.data); } catch (err) {
      if (handlers.error) handlers.error({ message: `the server sent something that is not JSON: ${err.message}` });
      return;
    }
    const f = msg && handlers[msg.method];
    if (f) f(msg);
  });
  ws.addEventListener("close", (ev) => handlers.closed && handlers.closed(ev));
  return conn;
}

const short = (p, n = 70) => (p.length > n ? `${p.slice(0, n - 1)}…` : p);

/** The serve page: the toolbar in `root`, the widget's view in `appEl` once a graph exists. */
export function servePage(root, appEl, url = socketURL()) {
  const modelSel = h("select", { class: "ltt-serve-model", "aria-label": "model" });
  const deviceSel = h("select", { class: "ltt-serve-device", "aria-label": "device" });
  const dtypeSel = h("select", { class: "ltt-serve-dtype", "aria-label": "dtype" });
  const deviceBox = h("label", { class: "ltt-serve-ctl" }, h("span", { text: "device" }), deviceSel);
  const dtypeBox = h("label", { class: "ltt-serve-ctl" }, h("span", { text: "dtype" }), dtypeSel);
  const listSel = h("select", { class: "ltt-serve-prompts", "aria-label": "prompt list" });
  // the page's one prompt bar (the view below shows no prompt box of its own: render({ promptBar: false }))
  const promptBox = h("input", { class: "ltt-serve-prompt ltt-prompt", type: "text", placeholder: "type a prompt, or pick one from the list…", "aria-label": "prompt" });
  // BOS for the prompt: indeterminate = the tokenizer's choice; checked/unchecked force it
  const bosBox = h("input", { class: "ltt-serve-bos ltt-bos", type: "checkbox", "aria-label": "prepend BOS" });
  bosBox.indeterminate = true;
  const bosLabel = h("label", { class: "ltt-serve-ctl", title: "BOS first (dash: as the tokenizer does)" }, bosBox, h("span", { text: "BOS" }));
  const runBtn = h("button", { class: "ltt-serve-run", text: "Run" });
  const addBtn = h("button", { class: "ltt-serve-add", text: "Add to list", title: "keep this prompt in the list for every page of this server" });
  const promptB = h("input", { class: "ltt-serve-prompt-b", type: "text", placeholder: "…and a second prompt to diff against it (any length; same length: compared token by token, else aligned at the last token)", "aria-label": "second prompt" });
  const diffBtn = h("button", { class: "ltt-serve-diff-run", text: "Diff" });
  const jobsBox = h("div", { class: "ltt-serve-jobs" });
  const errorBox = h("div", { class: "ltt-serve-error", role: "alert" });
  const limitsBox = h("div", { class: "ltt-serve-limits" });
  const connBox = h("span", { class: "ltt-serve-conn", text: "connecting…" });
  root.append(
    h("div", { class: "ltt-serve-bar" },
      h("label", { class: "ltt-serve-ctl" }, h("span", { text: "model" }), modelSel), deviceBox, dtypeBox, connBox),
    h("div", { class: "ltt-serve-bar ltt-serve-promptbar" }, listSel, promptBox, bosLabel, runBtn, addBtn),
    h("div", { class: "ltt-serve-bar" }, promptB, diffBtn),
    jobsBox, errorBox, limitsBox);

  let views = new Map(); // view name ("main", or "a" and "b" for a diff) -> {model, cleanup}
  const jobs = new Map(); // id -> {job, since}
  const first = () => (views.get("main") || views.get("a") || {}).model || null;
  const page = { conn: null, get model() { return first(); }, view: (name) => (views.get(name) || {}).model || null, jobs };
  appEl.append(h("div", { class: "ltt-serve-hint", text: "Pick a model, type or pick a prompt, and press Run (or give two prompts and press Diff)." }));
  let diffBox = null;

  const showError = (msg) => { errorBox.textContent = msg || ""; errorBox.style.display = msg ? "block" : "none"; };
  showError("");
  const options = (sel, items) => sel.replaceChildren(...items.map(([v, t]) => h("option", { value: v, text: t })));

  const rows = new Map(); // job id -> its row (kept while the job lives: a click never lands on a stale one)
  function drawJobs() {
    for (const [id, row] of rows) if (!jobs.has(id)) { row.remove(); rows.delete(id); }
    for (const { job, since } of jobs.values()) {
      let row = rows.get(job.id);
      if (!row) {
        row = h("div", { class: "ltt-serve-job", "data-job": job.id },
          h("span", { class: "ltt-serve-job-label" }), h("span", { class: "ltt-serve-job-state" }));
        const cancel = h("button", { class: "ltt-serve-cancel", text: "Cancel", "data-job": job.id });
        cancel.addEventListener("click", () => page.conn.send({ method: "cancel", job: job.id }));
        row.append(cancel);
        rows.set(job.id, row);
        jobsBox.append(row);
      }
      row.dataset.state = job.state;
      row.dataset.position = String(job.position);
      row.children[0].textContent = job.label;
      row.children[1].textContent = job.state === "queued"
        ? ` — waiting · position ${job.position} in the queue`
        : ` — running · ${((performance.now() - since) / 1000).toFixed(1)} s`;
      row.children[2].style.display = job.state === "queued" ? "" : "none"; // a running job runs to its end
    }
    root.classList.toggle("ltt-serve-busy", jobs.size > 0);
  }
  const ticker = setInterval(() => { if ([...jobs.values()].some((j) => j.job.state === "running")) drawJobs(); }, 250);

  const handlers = {
    hello(msg) {
      connBox.textContent = "connected";
      options(modelSel, msg.models.map((m) => [m.id, m.label]));
      options(deviceSel, msg.devices.map((d) => [d, d]));
      options(dtypeSel, msg.dtypes.map((d) => [d, d]));
      deviceBox.style.display = msg.devices.length > 1 ? "" : "none";
      dtypeBox.style.display = msg.dtypes.length > 1 ? "" : "none";
      handlers.prompts(msg);
      const L = msg.limits || {};
      limitsBox.textContent = `limits: prompts up to ${L.max_tokens} tokens · ${L.max_connections} pages at once · ${L.max_models} models kept loaded`;
    },
    prompts(msg) { // the whole list (hello), or a delta: {start, add} appended at start
      const keep = listSel.value;
      const list = msg.add ? JSON.parse(listSel.dataset.prompts || "[]").slice(0, msg.start).concat(msg.add) : msg.prompts;
      options(listSel, [["", `prompt list (${list.length})`]].concat(list.map((p, i) => [String(i), short(p)])));
      listSel.dataset.prompts = JSON.stringify(list);
      listSel.value = keep && Number(keep) < list.length ? keep : "";
    },
    evicted(msg) { showError(msg.message); }, // a kept trace dropped to stay within --max-memory
    state(msg) {
      for (const v of views.values()) v.cleanup();
      views = new Map();
      appEl.replaceChildren();
      diffBox = null;
      const names = Object.keys(msg.views);
      let row = null;
      if (names.length > 1) {
        row = h("div", { class: "ltt-serve-diffrow" });
        diffBox = h("div", { class: "ltt-serve-diff" });
        appEl.append(row, diffBox);
      }
      for (const name of names) {
        const model = createSocketModel(msg.views[name], (m) => page.conn.send({ ...m, view: name }));
        let target = appEl;
        if (row) {
          target = h("div", { class: `ltt-serve-side ltt-serve-side-${name}`, "data-view": name });
          row.append(h("div", { class: "ltt-serve-sidebox" }, h("div", { class: "ltt-serve-side-label", "data-view": name }), target));
        }
        views.set(name, { model, cleanup: render({ model, el: target, promptBar: false }) });
      }
      follow();
      if (msg.model) {
        modelSel.value = msg.model.id;
        deviceSel.value = msg.model.device;
        dtypeSel.value = msg.model.dtype;
      }
      root.dataset.model = msg.model ? msg.model.id : "";
      root.dataset.dtype = msg.model ? msg.model.dtype : "";
      root.dataset.views = names.join(",");
    },
    diff(msg) {
      if (!diffBox) return;
      (msg.labels || []).forEach((text, i) => {
        const label = appEl.querySelector(`.ltt-serve-side-label[data-view="${"ab"[i]}"]`);
        if (label) label.textContent = text;
      });
      const list = h("div", { class: "ltt-serve-changes" });
      (msg.changes || []).forEach((text, i) => {
        const item = h("div", { class: "ltt-serve-change", "data-index": i, text, title: "select this edge in both views" });
        item.addEventListener("click", () => page.conn.send({ method: "pick", index: i }));
        list.append(item);
      });
      diffBox.replaceChildren(h("div", { class: "ltt-serve-diff-summary", text: msg.summary || "" }),
        h("div", { class: "ltt-serve-sub", text: "top changes, flow b − a (click one to select it in both views):" }), list);
    },
    update(msg) { const v = views.get(msg.view || "main"); if (v) { v.model.apply(msg.state); follow(); } },
    job(msg) {
      const job = msg.job;
      if (job.state === "queued" || job.state === "running") {
        const prev = jobs.get(job.id);
        const since = prev && prev.job.state === "running" ? prev.since : performance.now() - 1000 * (job.elapsed || 0);
        jobs.set(job.id, { job, since });
      } else {
        jobs.delete(job.id);
        if (job.state === "failed") showError(job.error);
      }
      drawJobs();
    },
    error(msg) { showError(msg.message); },
    closed(ev) {
      connBox.textContent = `disconnected${ev.code ? ` (${ev.code}${ev.reason ? `: ${ev.reason}` : ""})` : ""}`;
      root.classList.add("ltt-serve-closed");
      clearInterval(ticker);
    },
  };

  // One prompt state: after any run or pick the one box shows the prompt on screen (unless the
  // user is typing in it).
  function follow() {
    const m = views.get("main") && views.get("main").model;
    if (!m || document.activeElement === promptBox) return;
    const p = (m.get("prompts") || [])[m.get("prompt_index") || 0];
    if (typeof p === "string") promptBox.value = p;
  }
  page.conn = connectKernel(url, handlers);
  listSel.addEventListener("change", () => {
    const list = JSON.parse(listSel.dataset.prompts || "[]");
    if (listSel.value !== "") promptBox.value = list[Number(listSel.value)];
  });
  const run = () => {
    const prompt = promptBox.value;
    if (!prompt.trim()) { showError("prompt: type a prompt or pick one from the list first"); return; }
    showError("");
    page.conn.send({ method: "open", model: modelSel.value, device: deviceSel.value, dtype: dtypeSel.value, prompt,
      bos: bosBox.indeterminate ? null : bosBox.checked });
  };
  runBtn.addEventListener("click", run);
  promptBox.addEventListener("keydown", (ev) => { if (ev.key === "Enter") run(); });
  const diffRun = () => {
    if (!promptBox.value.trim() || !promptB.value.trim()) { showError("diff: type two prompts (the first box and the second)"); return; }
    showError("");
    page.conn.send({ method: "diff", model: modelSel.value, device: deviceSel.value, dtype: dtypeSel.value, prompt_a: promptBox.value, prompt_b: promptB.value });
  };
  diffBtn.addEventListener("click", diffRun);
  promptB.addEventListener("keydown", (ev) => { if (ev.key === "Enter") diffRun(); });
  addBtn.addEventListener("click", () => {
    if (!promptBox.value.trim()) { showError("prompt: type a prompt to add first"); return; }
    showError("");
    page.conn.send({ method: "add_prompt", prompt: promptBox.value });
  });
  window.__ltt = page;
  return page;
}
