// ref2video web page: plain JavaScript, no build step, no dependencies.
// It talks to the API of the same origin with `Authorization: Bearer <key>`; the key lives in
// localStorage. Everything from the server is shown with textContent, never parsed as HTML.
"use strict";

(() => {
  const KEY_STORE = "ref2video.apiKey";
  const MAX_REFS = 5;
  const MAX_VIDEOS = 3;
  const MAX_UPLOAD_BYTES = 100 * 1024 * 1024;
  const MAX_SEED = 2147483647;
  const POLL_MS = 1000;
  const ACTIVE = new Set(["PENDING", "RUNNING"]);

  const $ = (id) => document.getElementById(id);
  const el = (tag, props = {}, ...children) => {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(props)) {
      if (name === "class") node.className = value;
      else if (name === "text") node.textContent = value;
      else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else if (name in node && typeof value !== "string") node[name] = value;
      else node.setAttribute(name, value);
    }
    for (const child of children) if (child) node.append(child);
    return node;
  };

  // ---------------------------------------------------------------- state

  let apiKey = "";
  try {
    apiKey = localStorage.getItem(KEY_STORE) || "";
  } catch (_) {
    apiKey = "";
  }
  let epoch = 0; // bumped when the key changes: answers from before are dropped

  const refs = []; // {id, kind, name, url, preview, objectUrl, state, error}
  let nextRefId = 1;

  const tasks = new Map(); // task_id -> {id, status, model, created, output, usage, node}
  let order = []; // task ids, newest first
  let watched = new Set(); // tasks created here: announce their end, play their video
  let pollTimer = null;
  let pollFailures = 0;

  // ---------------------------------------------------------------- messages

  let statusTimer = null;
  function say(text) {
    const status = $("status");
    status.textContent = text;
    clearTimeout(statusTimer);
    statusTimer = setTimeout(() => { status.textContent = ""; }, 10000);
  }

  function showError(text) {
    $("error").textContent = text;
    $("error-dismiss").hidden = false;
    $("error").parentElement.classList.add("has-error");
  }

  function clearError() {
    $("error").textContent = "";
    $("error-dismiss").hidden = true;
    $("error").parentElement.classList.remove("has-error");
  }

  class ApiFailure extends Error {
    constructor(code, message, httpStatus = 0) {
      super(message);
      this.code = code;
      this.httpStatus = httpStatus;
    }
  }

  // "InvalidApiKey: Invalid API-key provided." for the API's envelope, and the same shape
  // for what the browser itself reports.
  function describe(err) {
    if (err instanceof ApiFailure) return `${err.code}: ${err.message}`;
    return `Error: ${err && err.message ? err.message : String(err)}`;
  }

  // ---------------------------------------------------------------- API

  async function api(method, path, { json, form } = {}) {
    if (!apiKey) throw new ApiFailure("NoApiKey", "paste your API key above and choose “Save key” first.");
    const headers = { Authorization: `Bearer ${apiKey}` };
    let body;
    if (json !== undefined) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(json);
    } else if (form) {
      body = form;
    }
    let response;
    try {
      response = await fetch(path, { method, headers, body, cache: "no-store", credentials: "omit" });
    } catch (err) {
      throw new ApiFailure("NetworkError",
        `could not reach the server (${err.message || err}). Check the connection and that ref2video is running.`);
    }
    const text = await response.text().catch(() => "");
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch (_) {
      data = null;
    }
    if (!response.ok) {
      const code = data && typeof data.code === "string" && data.code ? data.code : `HTTP ${response.status}`;
      let message = data && typeof data.message === "string" && data.message
        ? data.message
        : (response.statusText || "the server answered with an error") + (text && !data ? ` (${text.slice(0, 200)})` : "");
      const retry = response.headers.get("Retry-After");
      if (retry) message += ` Retry after ${retry} s.`;
      throw new ApiFailure(code, message, response.status);
    }
    if (!data || typeof data !== "object") {
      throw new ApiFailure("BadResponse", `the server answered HTTP ${response.status} without a JSON body.`);
    }
    return data;
  }

  // ---------------------------------------------------------------- key

  function renderKey() {
    const state = $("key-state");
    if (apiKey) {
      const match = /^(r2v-[A-Za-z0-9_]+)-/.exec(apiKey);
      state.textContent = `A key${match ? ` (${match[1]}-…)` : ""} is saved in this browser; every request uses it.`;
    } else {
      state.textContent = "No key saved. Paste one above; it is kept in this browser only (localStorage).";
    }
    $("key-forget").disabled = !apiKey;
  }

  function setKey(value) {
    apiKey = value;
    epoch += 1;
    try {
      if (value) localStorage.setItem(KEY_STORE, value);
      else localStorage.removeItem(KEY_STORE);
    } catch (_) {
      showError("This browser does not allow localStorage; the key is kept for this page only.");
    }
    stopPolling();
    tasks.clear();
    order = [];
    watched = new Set();
    resetPlayer();
    renderTasks();
    renderKey();
  }

  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = $("api-key");
    const value = input.value.trim();
    if (!value) {
      showError("Paste an API key first (ref2video writes the first one to ref2video-data/first-api-key.txt).");
      input.focus();
      return;
    }
    clearError();
    setKey(value);
    input.value = "";
    say("Key saved.");
    loadTasks();
  });

  $("key-forget").addEventListener("click", () => {
    setKey("");
    clearError();
    say("Key forgotten: it is no longer stored in this browser.");
    $("api-key").focus();
  });

  $("error-dismiss").addEventListener("click", () => {
    clearError();
  });

  // ---------------------------------------------------------------- references

  const VIDEO_EXT = /\.(mp4|mov|m4v)$/i;

  function kindOfUrl(url) {
    return VIDEO_EXT.test(url.split(/[?#]/)[0]) ? "video" : "image";
  }

  function kindOfFile(file) {
    if (file.type.startsWith("video/") || VIDEO_EXT.test(file.name)) return "video";
    return "image";
  }

  function roomFor(kind) {
    if (refs.length >= MAX_REFS) {
      showError(`At most ${MAX_REFS} references: remove one before adding another.`);
      return false;
    }
    if (kind === "video" && refs.filter((r) => r.kind === "video").length >= MAX_VIDEOS) {
      showError(`At most ${MAX_VIDEOS} of the references may be videos.`);
      return false;
    }
    return true;
  }

  function addUrl() {
    const input = $("ref-url");
    const url = input.value.trim();
    if (!url) {
      showError("Type or paste a reference URL first.");
      input.focus();
      return;
    }
    if (!/^(https?|oss):\/\/\S+$/i.test(url)) {
      showError("A reference URL must start with http://, https:// or oss:// (upload local files below).");
      input.focus();
      return;
    }
    const kind = kindOfUrl(url);
    if (!roomFor(kind)) return;
    clearError();
    refs.push({
      id: nextRefId++, kind, name: url, url,
      preview: /^https?:/i.test(url) ? url : null, objectUrl: null, state: "ready", error: "",
    });
    input.value = "";
    renderRefs();
    say(`Added ${url} as character${refs.length}.`);
  }

  async function uploadFiles(fileList) {
    const files = Array.from(fileList || []);
    if (!files.length) return;
    if (!apiKey) {
      showError("Save your API key before uploading: uploads belong to the key's owner.");
      $("api-key").focus();
      return;
    }
    clearError();
    const started = [];
    for (const file of files) {
      const kind = kindOfFile(file);
      if (!roomFor(kind)) break;
      if (file.size > MAX_UPLOAD_BYTES) {
        showError(`${file.name} is ${(file.size / 1048576).toFixed(1)} MB; uploads are limited to 100 MB.`);
        continue;
      }
      const objectUrl = URL.createObjectURL(file);
      const ref = {
        id: nextRefId++, kind, name: file.name, url: null,
        preview: objectUrl, objectUrl, state: "uploading", error: "",
      };
      refs.push(ref);
      started.push(upload(ref, file));
    }
    renderRefs();
    await Promise.all(started);
  }

  async function upload(ref, file) {
    const form = new FormData();
    form.append("file", file, file.name);
    const myEpoch = epoch;
    try {
      const data = await api("POST", "/api/v1/uploads", { form });
      if (myEpoch !== epoch) throw new ApiFailure("KeyChanged", "the key changed during the upload; upload again.");
      ref.url = data.output && data.output.url;
      ref.state = "ready";
      const index = refs.indexOf(ref);
      if (index >= 0) say(`Uploaded ${file.name} as character${index + 1}.`);
    } catch (err) {
      ref.state = "failed";
      ref.error = describe(err);
      if (refs.includes(ref)) showError(`Upload of ${file.name} failed. ${describe(err)}`);
    }
    renderRefs();
  }

  function moveRef(index, delta) {
    const target = index + delta;
    if (target < 0 || target >= refs.length) return;
    const [ref] = refs.splice(index, 1);
    refs.splice(target, 0, ref);
    renderRefs({ id: ref.id, action: delta < 0 ? "up" : "down" });
    say(`${ref.name} is now character${target + 1}.`);
  }

  function removeRef(index) {
    const [ref] = refs.splice(index, 1);
    if (ref.objectUrl) URL.revokeObjectURL(ref.objectUrl);
    const next = refs[Math.min(index, refs.length - 1)];
    renderRefs(next ? { id: next.id, action: "remove" } : null);
    if (!next) $("ref-url").focus();
    say(`Removed ${ref.name}.`);
  }

  function thumbnail(ref, label) {
    const box = el("div", { class: "thumb" });
    const fallback = () => {
      box.replaceChildren(el("span", { text: ref.kind === "video" ? "▶ video" : "image" }));
    };
    if (!ref.preview) {
      fallback();
    } else if (ref.kind === "video") {
      const video = el("video", { muted: true, preload: "metadata", playsInline: true, "aria-label": `${label} preview` });
      video.addEventListener("error", fallback);
      video.src = ref.preview;
      box.append(video);
    } else {
      const img = el("img", { alt: `${label} preview`, decoding: "async" });
      img.addEventListener("error", fallback);
      img.src = ref.preview;
      box.append(img);
    }
    return box;
  }

  function renderRefs(focus = null) {
    const list = $("refs");
    list.replaceChildren();
    refs.forEach((ref, index) => {
      const label = `character${index + 1}`;
      const nameId = `ref-name-${ref.id}`;
      const stateText = ref.state === "uploading" ? "Uploading…"
        : ref.state === "failed" ? `Upload failed. ${ref.error}`
          : ref.objectUrl ? "Uploaded" : (ref.kind === "video" ? "Video URL" : "Image URL");
      const button = (text, action, handler, disabled = false) => el("button", {
        type: "button", class: action === "remove" ? "small danger" : "small secondary",
        text, disabled, "data-ref": String(ref.id), "data-action": action,
        "aria-describedby": nameId, onclick: handler,
      });
      list.append(el("li", { class: "ref", "data-kind": ref.kind },
        thumbnail(ref, label),
        el("div", { class: "info" },
          el("div", { class: "name", id: nameId, text: label }),
          el("div", { class: "source", text: ref.name }),
          el("div", { class: `state ${ref.state === "failed" ? "bad" : ref.state === "ready" ? "ok" : ""}`, text: stateText })),
        el("div", { class: "buttons" },
          button("Up", "up", () => moveRef(index, -1), index === 0),
          button("Down", "down", () => moveRef(index, 1), index === refs.length - 1),
          button("Remove", "remove", () => removeRef(index)))));
    });
    $("refs-empty").hidden = refs.length > 0;
    if (focus) {
      const buttons = list.querySelectorAll(`button[data-ref="${focus.id}"]`);
      const wanted = Array.from(buttons).find((b) => b.dataset.action === focus.action && !b.disabled)
        || Array.from(buttons).find((b) => !b.disabled);
      if (wanted) wanted.focus();
    }
  }

  $("ref-add").addEventListener("click", addUrl);
  $("ref-url").addEventListener("keydown", (event) => {
    if (event.key === "Enter") {
      event.preventDefault();
      addUrl();
    }
  });
  $("file-input").addEventListener("change", async (event) => {
    const input = event.target;
    const files = Array.from(input.files || []);
    input.value = ""; // the same file may be chosen again
    await uploadFiles(files);
  });

  const zone = $("drop-zone");
  const hasFiles = (event) => event.dataTransfer && Array.from(event.dataTransfer.types || []).includes("Files");
  zone.addEventListener("dragenter", (event) => { if (hasFiles(event)) zone.classList.add("over"); });
  zone.addEventListener("dragleave", (event) => { if (!zone.contains(event.relatedTarget)) zone.classList.remove("over"); });
  // Files dropped anywhere on the page are uploaded, rather than opened in place of it.
  window.addEventListener("dragover", (event) => {
    if (hasFiles(event)) {
      event.preventDefault();
      event.dataTransfer.dropEffect = "copy";
    }
  });
  window.addEventListener("drop", (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault();
    zone.classList.remove("over");
    uploadFiles(event.dataTransfer.files);
  });

  // ---------------------------------------------------------------- create

  // wan2.6-r2v always has sound (PROTOCOL.md section 2); only the flash model can be silent.
  let audioChoice = $("audio").checked;
  function syncAudio() {
    const audio = $("audio");
    const alwaysSound = $("model").value === "wan2.6-r2v";
    if (alwaysSound && !audio.disabled) audioChoice = audio.checked;
    audio.disabled = alwaysSound;
    audio.checked = alwaysSound ? true : audioChoice;
    $("audio-hint").hidden = !alwaysSound;
  }
  $("model").addEventListener("change", syncAudio);
  syncAudio();

  function readForm() {
    const prompt = $("prompt").value.trim();
    if (!prompt) return { error: "Write a prompt first.", focus: "prompt" };
    if (!refs.length) return { error: "Add at least one reference (a URL or an uploaded file).", focus: "ref-url" };
    const uploading = refs.findIndex((r) => r.state === "uploading");
    if (uploading >= 0) return { error: `character${uploading + 1} is still uploading; submit again when it is done.` };
    const failed = refs.findIndex((r) => r.state === "failed");
    if (failed >= 0) return { error: `character${failed + 1} did not upload; remove it or upload it again.` };
    const durationInput = $("duration");
    const duration = Number(durationInput.value);
    if (durationInput.value.trim() === "" || !Number.isInteger(duration) || duration < 2 || duration > 10) {
      return { error: "Duration must be a whole number of seconds from 2 to 10.", focus: "duration" };
    }
    const seedInput = $("seed");
    let seed = null;
    if (seedInput.validity.badInput) return { error: "Seed must be a whole number.", focus: "seed" };
    if (seedInput.value.trim() !== "") {
      seed = Number(seedInput.value);
      if (!Number.isInteger(seed) || seed < 0 || seed > MAX_SEED) {
        return { error: `Seed must be a whole number from 0 to ${MAX_SEED}, or empty for a random one.`, focus: "seed" };
      }
    }
    const body = {
      model: $("model").value,
      input: { prompt, reference_urls: refs.map((r) => r.url) },
      parameters: {
        size: $("size").value,
        duration,
        shot_type: $("shot-type").value,
        audio: $("audio").checked,
        watermark: $("watermark").checked,
      },
    };
    const negative = $("negative-prompt").value.trim();
    if (negative) body.input.negative_prompt = negative;
    if (seed !== null) body.parameters.seed = seed;
    return { body };
  }

  $("create-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    clearError();
    const { body, error, focus } = readForm();
    if (error) {
      showError(error);
      if (focus) $(focus).focus();
      return;
    }
    const submit = $("submit");
    submit.disabled = true;
    submit.textContent = "Creating…";
    const myEpoch = epoch;
    try {
      const data = await api("POST", "/task/bailian/ref2video", { json: body });
      if (myEpoch !== epoch) return;
      const id = data.output.task_id;
      watched.add(id);
      const task = upsert(id);
      task.status = data.output.task_status || "PENDING";
      task.model = body.model;
      task.created = Date.now();
      if (!order.includes(id)) order.unshift(id);
      renderTasks();
      say(`Task ${id} created; it is ${task.status}.`);
      await loadTasks();
    } catch (err) {
      showError(`Could not create the task. ${describe(err)}`);
    } finally {
      submit.disabled = false;
      submit.textContent = "Create video";
    }
  });

  // ---------------------------------------------------------------- tasks

  function upsert(id) {
    let task = tasks.get(id);
    if (!task) {
      task = { id, status: "PENDING", model: "", created: null, output: null, usage: null, node: null };
      tasks.set(id, task);
    }
    return task;
  }

  async function loadTasks() {
    if (!apiKey) {
      renderTasks();
      return;
    }
    const myEpoch = epoch;
    let data;
    try {
      data = await api("GET", "/api/v1/tasks?page_size=20");
    } catch (err) {
      if (myEpoch === epoch) showError(`Could not load your tasks. ${describe(err)}`);
      return;
    }
    if (myEpoch !== epoch) return;
    const listed = [];
    for (const item of data.data || []) {
      const task = upsert(item.task_id);
      task.status = item.status;
      task.model = item.model_name || task.model;
      task.created = item.gmt_create || task.created;
      listed.push(task.id);
    }
    // Tasks created here stay listed even if the page of 20 has moved past them.
    const kept = order.filter((id) => !listed.includes(id) && watched.has(id));
    order = [...kept, ...listed];
    for (const id of Array.from(tasks.keys())) if (!order.includes(id)) tasks.delete(id);
    renderTasks();
    const stale = order.filter((id) => {
      const task = tasks.get(id);
      return !task.output || task.output.task_status !== task.status || ACTIVE.has(task.status);
    });
    const results = await Promise.allSettled(stale.map((id) => refreshTask(id, myEpoch)));
    const failure = results.find((r) => r.status === "rejected");
    if (failure && myEpoch === epoch) showError(`Could not query a task. ${describe(failure.reason)}`);
    schedulePoll();
  }

  async function refreshTask(id, myEpoch = epoch) {
    const data = await api("GET", `/api/v1/tasks/${encodeURIComponent(id)}`);
    if (myEpoch !== epoch || !tasks.has(id)) return;
    const task = tasks.get(id);
    const out = data.output || {};
    const before = task.output ? task.output.task_status : null;
    task.status = out.task_status || "UNKNOWN";
    task.output = out;
    task.usage = data.usage || null;
    updateTask(task);
    if (before !== null && before !== task.status && !ACTIVE.has(task.status)) announceEnd(task);
    else if (before === null && watched.has(id) && !ACTIVE.has(task.status)) announceEnd(task);
  }

  function announceEnd(task) {
    const out = task.output;
    if (task.status === "SUCCEEDED") {
      say(`Task ${task.id} SUCCEEDED.`);
      if (watched.has(task.id)) play(task);
    } else if (task.status === "FAILED") {
      const text = `Task ${task.id} FAILED. ${out.code || "InternalError"}: ${out.message || "no message"}`;
      if (watched.has(task.id)) showError(text);
      else say(text);
    } else {
      say(`Task ${task.id} is ${task.status}.`);
    }
    watched.delete(task.id);
  }

  function schedulePoll(delay = POLL_MS) {
    if (pollTimer !== null || !apiKey) return;
    if (!order.some((id) => ACTIVE.has(tasks.get(id).status))) return;
    pollTimer = setTimeout(poll, delay);
  }

  function stopPolling() {
    clearTimeout(pollTimer);
    pollTimer = null;
  }

  async function poll() {
    pollTimer = null;
    const myEpoch = epoch;
    const active = order.filter((id) => ACTIVE.has(tasks.get(id).status));
    const results = await Promise.allSettled(active.map((id) => refreshTask(id, myEpoch)));
    if (myEpoch !== epoch) return;
    const failure = results.find((r) => r.status === "rejected");
    if (failure) {
      pollFailures += 1;
      showError(`Could not update the task list. ${describe(failure.reason)}`);
      const code = failure.reason && failure.reason.code;
      if (code === "InvalidApiKey" || code === "NoApiKey") return; // retrying will not help
    } else if (pollFailures) {
      pollFailures = 0;
      clearError();
    }
    schedulePoll(Math.min(POLL_MS * 2 ** pollFailures, 15000));
  }

  async function cancelTask(task, button) {
    button.disabled = true;
    try {
      await api("POST", `/api/v1/tasks/${encodeURIComponent(task.id)}/cancel`);
      say(`Cancel requested for task ${task.id}.`);
      await refreshTask(task.id);
    } catch (err) {
      showError(`Could not cancel task ${task.id}. ${describe(err)}`);
    } finally {
      button.disabled = false;
    }
    schedulePoll();
  }

  function formatTime(ms) {
    if (!ms) return "";
    const date = new Date(ms);
    return Number.isNaN(date.getTime()) ? "" : date.toLocaleString();
  }

  function buildTask(task) {
    const badge = el("span", { class: "badge" });
    const progress = el("progress", { max: 100, value: 0, "aria-label": `Progress of task ${task.id}` });
    const pct = el("span", { class: "pct" });
    const detail = el("p", { class: "detail" });
    const cancel = el("button", { type: "button", class: "small danger", text: "Cancel" });
    cancel.addEventListener("click", () => cancelTask(task, cancel));
    const playButton = el("button", { type: "button", class: "small", text: "Play" });
    playButton.addEventListener("click", async () => {
      try {
        await refreshTask(task.id); // a fresh signed link
      } catch (err) {
        showError(`Could not query task ${task.id}. ${describe(err)}`);
        return;
      }
      play(task, true);
    });
    const download = el("a", { text: "Download" });
    const node = el("li", { class: "task", "data-task-id": task.id },
      el("div", { class: "head" },
        badge,
        el("code", { class: "id", text: task.id }),
        el("span", { class: "meta" })),
      el("div", { class: "progress-row" }, progress, pct),
      detail,
      el("div", { class: "actions" }, cancel, playButton, download));
    task.node = node;
    task.parts = { badge, progress, pct, detail, cancel, playButton, download, meta: node.querySelector(".meta") };
    cancel.setAttribute("aria-label", `Cancel task ${task.id}`);
    playButton.setAttribute("aria-label", `Play the video of task ${task.id}`);
    download.setAttribute("aria-label", `Download the video of task ${task.id}`);
    updateTask(task);
    return node;
  }

  function updateTask(task) {
    if (!task.node) return;
    const p = task.parts;
    const out = task.output || {};
    const status = task.status;
    const active = ACTIVE.has(status);
    p.badge.textContent = status;
    p.badge.className = `badge ${status}`;
    task.node.dataset.status = status;
    const meta = [task.model, formatTime(task.created)].filter(Boolean);
    if (out.engine) meta.push(`engine ${out.engine}`);
    p.meta.textContent = meta.join(" · ");

    p.progress.parentElement.hidden = !active;
    const progress = Number.isFinite(out.progress) ? Math.max(0, Math.min(100, out.progress)) : 0;
    p.progress.value = progress;
    p.pct.textContent = status === "PENDING"
      ? (Number.isFinite(out.queue_position) && out.queue_position > 0 ? `queued, position ${out.queue_position}` : "queued")
      : `${Math.round(progress)}%`;
    p.cancel.hidden = !active;

    const url = status === "SUCCEEDED" ? out.video_url : null;
    p.playButton.hidden = !url;
    p.download.hidden = !url;
    if (url) {
      p.download.href = url;
      p.download.setAttribute("download", `ref2video-${task.id}.mp4`);
    } else {
      p.download.removeAttribute("href");
    }

    let text = "";
    p.detail.classList.toggle("bad", status === "FAILED" || status === "UNKNOWN");
    if (status === "FAILED") {
      text = `${out.code || "InternalError"}: ${out.message || "no message"}`;
    } else if (status === "SUCCEEDED") {
      const u = task.usage || {};
      const bits = [];
      if (u.output_video_duration !== undefined) bits.push(`${u.output_video_duration} s`);
      if (u.size) bits.push(String(u.size).replace("*", "×"));
      if (out.seed !== undefined && out.seed !== null) bits.push(`seed ${out.seed}`);
      if (out.end_time) bits.push(`finished ${out.end_time}`);
      text = bits.join(" · ");
    } else if (status === "UNKNOWN") {
      text = "Unknown task: it expired, or belongs to another key's owner.";
    } else if (status === "CANCELED") {
      text = "Canceled.";
    }
    p.detail.textContent = text;
    p.detail.hidden = !text;
  }

  function renderTasks() {
    const list = $("tasks");
    const nodes = order.map((id) => {
      const task = tasks.get(id);
      if (!task.node) return buildTask(task);
      updateTask(task);
      return task.node;
    });
    // Keep existing nodes (and the focus inside them) in place; only reorder.
    nodes.forEach((node, index) => {
      if (list.children[index] !== node) list.insertBefore(node, list.children[index] || null);
    });
    while (list.children.length > nodes.length) list.lastElementChild.remove();
    const empty = $("tasks-empty");
    empty.hidden = nodes.length > 0;
    empty.textContent = apiKey ? "No tasks yet." : "Save your API key to see your tasks.";
  }

  $("refresh").addEventListener("click", async () => {
    clearError();
    await loadTasks();
    if (apiKey) say("Task list refreshed.");
  });

  // ---------------------------------------------------------------- player

  const player = $("player");

  function play(task, focus = false) {
    const out = task.output || {};
    if (!out.video_url) return;
    player.src = out.video_url;
    $("download").href = out.video_url;
    $("download").setAttribute("download", `ref2video-${task.id}.mp4`);
    $("player-caption").textContent = `Task ${task.id}${out.orig_prompt ? ` · ${out.orig_prompt}` : ""}`;
    $("player-figure").hidden = false;
    $("player-links").hidden = false;
    $("player-empty").hidden = true;
    if (focus) {
      $("player-section").scrollIntoView({ block: "nearest", behavior: "smooth" });
      player.focus();
    }
  }

  function resetPlayer() {
    player.removeAttribute("src");
    player.load();
    $("player-figure").hidden = true;
    $("player-links").hidden = true;
    $("player-empty").hidden = false;
  }

  player.addEventListener("error", () => {
    if (!player.getAttribute("src")) return;
    const code = player.error ? player.error.code : 0;
    const why = code === 4 ? "the link has expired or the format is not supported by this browser"
      : code === 2 ? "a network error stopped the download" : "it could not be decoded";
    showError(`The video could not be played: ${why}. Choose “Play” on the task again for a fresh link.`);
  });

  // ---------------------------------------------------------------- start

  renderKey();
  renderRefs();
  renderTasks();
  loadTasks();
})();
