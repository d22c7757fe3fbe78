// ref2video web page: plain JavaScript, no build step, no dependencies.
// It talks to the API of the same origin with `Authorization: Bearer <key>`; the key lives in
// localStorage. Everything from the server is shown with textContent, never parsed as HTML.
"use strict";

(() => {
  const KEY_STORE = "ref2video.apiKey";
  const PROMPT_STORE = "ref2video.prompts"; // {task_id: prompt} of tasks created in this browser
  const MAX_PROMPTS_KEPT = 200;
  const MAX_REFS = 5;
  const MAX_VIDEOS = 3;
  const MAX_UPLOAD_BYTES = 100 * 1024 * 1024;
  const MAX_SEED = 2147483647;
  const POLL_MS = 1000;
  const PAGE_SIZE = 20;
  const PROMPT_SHOWN = 100; // characters of a prompt shown on its card; the title has all of it
  const ACTIVE = new Set(["PENDING", "RUNNING"]);
  // wan2.7-r2v takes the media form: input.media, parameters.resolution and ratio, always sound.
  const MEDIA_MODELS = new Set(["wan2.7-r2v"]);
  const reduceMotion = window.matchMedia("(prefers-reduced-motion: reduce)").matches;

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

  const tasks = new Map(); // task_id -> {id, status, model, created, ended, prompt, output, usage, node}
  let order = []; // task ids of the page shown, newest first
  let watched = new Set(); // tasks created here: announce their end, play their video
  let pollTimer = null;
  let pollFailures = 0;
  let pageNo = 1;
  let totalPage = 0;
  let totalTasks = 0;
  let listStale = false; // a task ended since the list was read: read it again for its end time

  let prompts = {};
  try {
    prompts = JSON.parse(localStorage.getItem(PROMPT_STORE) || "{}") || {};
  } catch (_) {
    prompts = {};
  }

  function rememberPrompt(id, prompt) {
    prompts[id] = prompt;
    const ids = Object.keys(prompts);
    for (const old of ids.slice(0, Math.max(0, ids.length - MAX_PROMPTS_KEPT))) delete prompts[old];
    try {
      localStorage.setItem(PROMPT_STORE, JSON.stringify(prompts));
    } catch (_) {
      // Full or forbidden: the prompt is still shown until the page is reloaded.
    }
  }

  // ---------------------------------------------------------------- messages

  // The status line may speak of one task (`task`): then it is said again whenever that task's
  // state changes, from the same answer that updates its card, so the two never disagree.
  let statusTimer = null;
  let statusTask = null;
  let statusState = null;
  function say(text, task = null) {
    const status = $("status");
    status.textContent = text;
    statusTask = task ? task.id : null;
    statusState = task ? task.status : null;
    clearTimeout(statusTimer);
    statusTimer = setTimeout(() => {
      status.textContent = "";
      statusTask = null;
      statusState = null;
    }, 10000);
  }

  function inView(node) {
    const box = node.getBoundingClientRect();
    return box.top >= 0 && box.bottom <= window.innerHeight;
  }

  // The bar is in the page's flow, so it can be scrolled away from what the user is doing. An
  // error about a control (`near`: an id or an element) is also written under that control,
  // where the user is looking; any other error that answers what the user just did scrolls the
  // bar into view (background ones, from polling, do not).
  let note = null; // {node, control, describedBy}
  function showError(text, { reveal = true, near = null } = {}) {
    $("error").textContent = text;
    $("error-dismiss").hidden = false;
    const row = $("error").parentElement;
    row.classList.add("has-error");
    clearNote();
    const control = typeof near === "string" ? $(near) : near;
    if (control) {
      const node = el("p", { class: "field-error", id: "error-note", text });
      (control.closest(".submit-row, .actions") || control).insertAdjacentElement("afterend", node);
      note = { node, control, describedBy: control.getAttribute("aria-describedby") };
      if (control.matches("input, textarea, select")) {
        control.setAttribute("aria-invalid", "true");
        control.setAttribute("aria-describedby", `error-note ${note.describedBy || ""}`.trim());
      }
    } else if (reveal && !inView(row)) {
      row.scrollIntoView({ block: "nearest" });
    }
  }

  function clearNote() {
    if (!note) return;
    note.node.remove();
    note.control.removeAttribute("aria-invalid");
    if (note.describedBy) note.control.setAttribute("aria-describedby", note.describedBy);
    else note.control.removeAttribute("aria-describedby");
    note = null;
  }

  function clearError() {
    $("error").textContent = "";
    $("error-dismiss").hidden = true;
    $("error").parentElement.classList.remove("has-error");
    clearNote();
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

  async function api(method, path, { json, form, key = apiKey } = {}) {
    if (!key) throw new ApiFailure("NoApiKey", "paste your API key above and choose “Save key” first.");
    const headers = { Authorization: `Bearer ${key}` };
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
    pageNo = 1;
    totalPage = 0;
    totalTasks = 0;
    resetPlayer();
    renderTasks();
    renderKey();
  }

  // A key is tried (one task listed) before it is saved: a refused one is said so, not kept.
  let keyCheck = 0;
  $("key-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const input = $("api-key");
    const value = input.value.trim();
    if (!value) {
      showError("Paste an API key first (ref2video writes the first one to ref2video-data/first-api-key.txt).");
      input.focus();
      return;
    }
    if (!/^[\x21-\x7e]+$/.test(value)) { // a header cannot carry it: fetch would fail, not the server
      showError("That is not an API key: a key is printable ASCII with no spaces. It was not saved.");
      input.focus();
      return;
    }
    clearError();
    const myCheck = ++keyCheck;
    const myEpoch = epoch;
    const save = $("key-save");
    save.disabled = true;
    say("Checking the key…");
    let unchecked = null;
    try {
      await api("GET", "/api/v1/tasks?page_size=1", { key: value });
    } catch (err) {
      if (myCheck !== keyCheck || myEpoch !== epoch) return;
      if (err instanceof ApiFailure && err.httpStatus === 401) {
        say("");
        showError(`That key was refused (${describe(err)}); it was not saved.`
          + (apiKey ? " The key saved before is still used." : "")
          + " Check that you pasted the whole key.");
        input.focus();
        return;
      }
      unchecked = err; // the server could not say: keep the key, and tell
    } finally {
      if (myCheck === keyCheck) save.disabled = false;
    }
    if (myCheck !== keyCheck || myEpoch !== epoch) return;
    setKey(value);
    input.value = "";
    if (unchecked) {
      say("Key saved, not checked.");
      showError(`The key is saved, but the server could not check it. ${describe(unchecked)}`);
    } else {
      say("Key saved: the server accepts it.");
    }
    loadTasks();
  });

  $("key-forget").addEventListener("click", () => {
    keyCheck += 1;
    setKey("");
    prompts = {};
    try {
      localStorage.removeItem(PROMPT_STORE);
    } catch (_) {
      // nothing was stored
    }
    clearError();
    say("Key forgotten: it is no longer stored in this browser, nor are the prompts of its tasks.");
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

  const mediaForm = () => MEDIA_MODELS.has($("model").value);

  // What the prompt calls each reference: character1, character2, ... in the urls form; Image 1,
  // Video 1, ... (images and videos counted apart) in the media form.
  function refLabels() {
    if (!mediaForm()) return refs.map((_, index) => `character${index + 1}`);
    const seen = { image: 0, video: 0 };
    return refs.map((r) => (r.kind === "video" ? `Video ${++seen.video}` : `Image ${++seen.image}`));
  }
  const labelOf = (ref) => refLabels()[refs.indexOf(ref)];

  function roomFor(kind, near) {
    if (refs.length >= MAX_REFS) {
      showError(`At most ${MAX_REFS} references: remove one before adding another.`, { near });
      return false;
    }
    if (kind === "video" && !mediaForm() && refs.filter((r) => r.kind === "video").length >= MAX_VIDEOS) {
      showError(`At most ${MAX_VIDEOS} of the references may be videos.`, { near });
      return false;
    }
    return true;
  }

  function addUrl() {
    const input = $("ref-url");
    const url = input.value.trim();
    if (!url) {
      showError("Type or paste a reference URL first.", { near: input });
      input.focus();
      return;
    }
    if (!/^(https?|oss):\/\/\S+$/i.test(url)) {
      showError("A reference URL must start with http://, https:// or oss:// (upload local files below).",
        { near: input });
      input.focus();
      return;
    }
    const kind = kindOfUrl(url);
    if (!roomFor(kind, input)) return;
    clearError();
    const ref = {
      id: nextRefId++, kind, name: url, url,
      preview: /^https?:/i.test(url) ? url : null, objectUrl: null, state: "ready", error: "",
    };
    refs.push(ref);
    input.value = "";
    renderRefs();
    say(`Added ${url} as ${labelOf(ref)}.`);
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
      if (!roomFor(kind, "file-input")) break;
      if (file.size > MAX_UPLOAD_BYTES) {
        showError(`${file.name} is ${(file.size / 1048576).toFixed(1)} MB; uploads are limited to 100 MB.`,
          { near: "file-input" });
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
      if (refs.includes(ref)) say(`Uploaded ${file.name} as ${labelOf(ref)}.`);
    } catch (err) {
      ref.state = "failed";
      ref.error = describe(err);
      if (refs.includes(ref)) showError(`Upload of ${file.name} failed. ${describe(err)}`, { near: "file-input" });
    }
    renderRefs();
  }

  function moveRef(index, delta) {
    const target = index + delta;
    if (target < 0 || target >= refs.length) return;
    const [ref] = refs.splice(index, 1);
    refs.splice(target, 0, ref);
    renderRefs({ id: ref.id, action: delta < 0 ? "up" : "down" });
    say(`${ref.name} is now ${labelOf(ref)}.`);
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
    const labels = refLabels();
    refs.forEach((ref, index) => {
      const label = labels[index];
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
    syncDuration();
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

  // The longest video: 10 s in the urls form, and in the media form with a reference video; else
  // 15 s (docs/protocol.md sections 2 and 3).
  function maxDuration() {
    return mediaForm() && !refs.some((r) => r.kind === "video") ? 15 : 10;
  }
  function syncDuration() {
    $("duration").max = String(maxDuration());
  }

  // wan2.6-r2v always has sound (docs/protocol.md section 2); only the flash model can be silent.
  // wan2.7-r2v takes the media form: resolution and ratio instead of size, and neither audio
  // (always on) nor shot type (shots are laid out in the prompt).
  let audioChoice = $("audio").checked;
  function syncModel() {
    const model = $("model").value;
    const media = mediaForm();
    for (const node of document.querySelectorAll("#create-form [data-form]")) {
      node.hidden = node.dataset.form !== (media ? "media" : "urls");
    }
    const audio = $("audio");
    const alwaysSound = model === "wan2.6-r2v";
    if (alwaysSound && !audio.disabled) audioChoice = audio.checked;
    audio.disabled = alwaysSound;
    audio.checked = alwaysSound ? true : audioChoice;
    const hint = $("audio-hint");
    hint.textContent = media || alwaysSound ? `${model} always has sound.` : "";
    hint.hidden = !hint.textContent;
    $("prompt").maxLength = media ? 5000 : 1500;
    $("prompt").setAttribute("aria-describedby", media ? "prompt-hint-media" : "prompt-hint");
    $("refs-rule").textContent = media ? "(1 to 5 images and videos)" : "(1 to 5: images, at most 3 videos)";
    renderRefs();
  }
  $("model").addEventListener("change", syncModel);

  function readForm() {
    const prompt = $("prompt").value.trim();
    if (!prompt) return { error: "Write a prompt first.", focus: "prompt" };
    if (!refs.length) return { error: "Add at least one reference (a URL or an uploaded file).", focus: "ref-url" };
    const labels = refLabels();
    const uploading = refs.findIndex((r) => r.state === "uploading");
    if (uploading >= 0) return { error: `${labels[uploading]} is still uploading; submit again when it is done.` };
    const failed = refs.findIndex((r) => r.state === "failed");
    if (failed >= 0) return { error: `${labels[failed]} did not upload; remove it or upload it again.` };
    const durationInput = $("duration");
    const duration = Number(durationInput.value);
    const longest = maxDuration();
    if (durationInput.value.trim() === "" || !Number.isInteger(duration) || duration < 2 || duration > longest) {
      return { error: `Duration must be a whole number of seconds from 2 to ${longest}.`, focus: "duration" };
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
    const model = $("model").value;
    const body = mediaForm()
      ? {
        model,
        input: {
          prompt,
          media: refs.map((r) => ({ type: r.kind === "video" ? "reference_video" : "reference_image", url: r.url })),
        },
        parameters: {
          resolution: $("resolution").value,
          ratio: $("ratio").value,
          duration,
          watermark: $("watermark").checked,
        },
      }
      : {
        model,
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
      showError(error, { near: focus || "submit" });
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
      rememberPrompt(id, body.input.prompt);
      if (pageNo !== 1) { // the new task is on the first page
        pageNo = 1;
        stopPolling();
        order = [];
      }
      const task = upsert(id);
      task.status = data.output.task_status || "PENDING";
      task.model = body.model;
      task.created = Date.now(); // until the list gives the server's time
      if (!order.includes(id)) order.unshift(id);
      renderTasks();
      task.node.scrollIntoView({ block: "nearest", behavior: reduceMotion ? "auto" : "smooth" });
      say(`Task ${id} created; it is ${task.status}.`, task);
      await loadTasks();
    } catch (err) {
      showError(`Could not create the task. ${describe(err)}`, { near: "submit" });
    } finally {
      submit.disabled = false;
      submit.textContent = "Create video";
    }
  });

  // ---------------------------------------------------------------- tasks

  function upsert(id) {
    let task = tasks.get(id);
    if (!task) {
      task = {
        id, status: "PENDING", model: "", created: null, ended: null, prompt: prompts[id] || "",
        output: null, usage: null, node: null,
      };
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
    const myPage = pageNo;
    let data;
    try {
      data = await api("GET", `/api/v1/tasks?page_no=${myPage}&page_size=${PAGE_SIZE}`);
    } catch (err) {
      if (myEpoch === epoch) showError(`Could not load your tasks. ${describe(err)}`, { reveal: false });
      return;
    }
    if (myEpoch !== epoch || myPage !== pageNo) return;
    totalTasks = Number(data.total) || 0;
    totalPage = Number(data.total_page) || 0;
    if (!(data.data || []).length && pageNo > 1 && totalPage >= 1) {
      pageNo = Math.min(pageNo - 1, totalPage); // tasks expired under this page: show the last one
      await loadTasks();
      return;
    }
    listStale = false;
    const listed = [];
    for (const item of data.data || []) {
      const task = upsert(item.task_id);
      task.status = item.status;
      task.model = item.model_name || task.model;
      task.created = item.gmt_create || task.created;
      task.ended = item.end_time || null;
      if (item.prompt && !task.prompt) task.prompt = item.prompt; // ref2video's extension
      listed.push(task.id);
    }
    order = listed;
    for (const id of Array.from(tasks.keys())) if (!order.includes(id)) tasks.delete(id);
    renderTasks();
    const stale = order.filter((id) => {
      const task = tasks.get(id);
      return !task.output || task.output.task_status !== task.status || ACTIVE.has(task.status);
    });
    const results = await Promise.allSettled(stale.map((id) => refreshTask(id, myEpoch)));
    const failure = results.find((r) => r.status === "rejected");
    if (failure && myEpoch === epoch) showError(`Could not query a task. ${describe(failure.reason)}`, { reveal: false });
    if (listStale && myEpoch === epoch && myPage === pageNo) {
      await loadTasks(); // a task ended between the list and its query: its end time
      return;
    }
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
    if (out.orig_prompt && !task.prompt) task.prompt = out.orig_prompt;
    if (!ACTIVE.has(task.status) && !task.ended && task.status !== "UNKNOWN") listStale = true;
    // Said before the card is updated, so that the card does not say it a second time.
    if (before !== null && before !== task.status && !ACTIVE.has(task.status)) announceEnd(task);
    else if (before === null && watched.has(id) && !ACTIVE.has(task.status)) announceEnd(task);
    updateTask(task);
  }

  function announceEnd(task) {
    const out = task.output;
    if (task.status === "SUCCEEDED") {
      say(`Task ${task.id} SUCCEEDED.`, task);
      if (watched.has(task.id)) play(task);
    } else if (task.status === "FAILED") {
      const text = `Task ${task.id} FAILED. ${out.code || "InternalError"}: ${out.message || "no message"}`;
      if (watched.has(task.id)) {
        say(`Task ${task.id} FAILED.`, task);
        showError(text, { reveal: false });
      } else {
        say(text, task);
      }
    } else {
      say(`Task ${task.id} is ${task.status}.`, task);
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
    const myPage = pageNo;
    const active = order.filter((id) => ACTIVE.has(tasks.get(id).status));
    const results = await Promise.allSettled(active.map((id) => refreshTask(id, myEpoch)));
    if (myEpoch !== epoch || myPage !== pageNo) return;
    const failure = results.find((r) => r.status === "rejected");
    if (failure) {
      pollFailures += 1;
      showError(`Could not update the task list. ${describe(failure.reason)}`, { reveal: false });
      const code = failure.reason && failure.reason.code;
      if (code === "InvalidApiKey" || code === "NoApiKey") return; // retrying will not help
    } else if (pollFailures) {
      pollFailures = 0;
      clearError();
    }
    if (listStale && !failure) {
      await loadTasks(); // it polls again while a task is active
      return;
    }
    schedulePoll(Math.min(POLL_MS * 2 ** pollFailures, 15000));
  }

  async function cancelTask(task, button) {
    button.disabled = true;
    try {
      await api("POST", `/api/v1/tasks/${encodeURIComponent(task.id)}/cancel`);
      say(`Cancel requested for task ${task.id}.`, task);
      await refreshTask(task.id);
    } catch (err) {
      showError(`Could not cancel task ${task.id}. ${describe(err)}`, { near: button });
    } finally {
      button.disabled = false;
    }
    schedulePoll();
  }

  // One format for every date on the page, in the browser's zone: YYYY-MM-DD HH:mm. The list's
  // epoch milliseconds are used, never the query's strings (those are in the server's zone).
  function formatTime(ms) {
    if (!ms) return "";
    const date = new Date(ms);
    if (Number.isNaN(date.getTime())) return "";
    const two = (n) => String(n).padStart(2, "0");
    return `${date.getFullYear()}-${two(date.getMonth() + 1)}-${two(date.getDate())} `
      + `${two(date.getHours())}:${two(date.getMinutes())}`;
  }

  function shorten(text, most) {
    const chars = Array.from(text.replace(/\s+/g, " ").trim()); // by code point: no split emoji
    return chars.length > most ? `${chars.slice(0, most - 1).join("").trimEnd()}…` : chars.join("");
  }

  function progressText(task) {
    const out = task.output || {};
    if (task.status === "PENDING") {
      return Number.isFinite(out.queue_position) && out.queue_position > 0
        ? `queued, position ${out.queue_position}` : "queued";
    }
    const progress = Number.isFinite(out.progress) ? Math.max(0, Math.min(100, out.progress)) : 0;
    return `${Math.round(progress)}%`;
  }

  function buildTask(task) {
    const badge = el("span", { class: "badge" });
    const progress = el("progress", { max: 100, value: 0, "aria-label": `Progress of task ${task.id}` });
    const pct = el("span", { class: "pct" });
    const prompt = el("p", { class: "prompt" });
    const detail = el("p", { class: "detail" });
    const cancel = el("button", { type: "button", class: "small danger", text: "Cancel" });
    cancel.addEventListener("click", () => cancelTask(task, cancel));
    const playButton = el("button", { type: "button", class: "small", text: "Play" });
    playButton.addEventListener("click", async () => {
      try {
        await refreshTask(task.id); // a fresh signed link
      } catch (err) {
        showError(`Could not query task ${task.id}. ${describe(err)}`, { near: playButton });
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
      prompt,
      el("div", { class: "progress-row" }, progress, pct),
      detail,
      el("div", { class: "actions" }, cancel, playButton, download));
    task.node = node;
    task.parts = { badge, progress, pct, prompt, detail, cancel, playButton, download, meta: node.querySelector(".meta") };
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

    p.prompt.textContent = task.prompt ? shorten(task.prompt, PROMPT_SHOWN) : "";
    p.prompt.title = task.prompt || "";
    p.prompt.hidden = !task.prompt;

    p.progress.parentElement.hidden = !active;
    p.progress.value = Number.isFinite(out.progress) ? Math.max(0, Math.min(100, out.progress)) : 0;
    p.pct.textContent = progressText(task);
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
      else if (u.ratio) bits.push(`${u.SR ? `${u.SR}P ` : ""}${u.ratio}`); // the media form's usage
      if (out.seed !== undefined && out.seed !== null) bits.push(`seed ${out.seed}`);
      if (task.ended) bits.push(`finished ${formatTime(task.ended)}`);
      text = bits.join(" · ");
    } else if (status === "UNKNOWN") {
      text = "Unknown task: it expired, or belongs to another key's owner.";
    } else if (status === "CANCELED") {
      text = "Canceled.";
    }
    p.detail.textContent = text;
    p.detail.hidden = !text;
    // The status line speaks of this task: it follows the card.
    if (statusTask === task.id && statusState !== status) say(`Task ${task.id} is ${status}.`, task);
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
    renderPager();
  }

  function renderPager() {
    const pages = Math.max(totalPage, 1);
    $("pager").hidden = !apiKey || totalPage <= 1;
    $("page-info").textContent = `Page ${Math.min(pageNo, pages)} of ${pages} · ${totalTasks} tasks`;
    $("page-prev").disabled = pageNo <= 1;
    $("page-next").disabled = pageNo >= totalPage;
  }

  async function turnPage(delta, button) {
    const target = pageNo + delta;
    if (target < 1 || target > totalPage) return;
    pageNo = target;
    stopPolling();
    renderPager();
    await loadTasks();
    $("tasks-heading").scrollIntoView({ block: "nearest" });
    if (button.disabled) (delta < 0 ? $("page-next") : $("page-prev")).focus(); // the first or last page
  }
  $("page-prev").addEventListener("click", (event) => turnPage(-1, event.currentTarget));
  $("page-next").addEventListener("click", (event) => turnPage(1, event.currentTarget));

  $("refresh").addEventListener("click", async () => {
    clearError();
    stopPolling();
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
    const caption = $("player-caption");
    caption.textContent = `Task ${task.id}${out.orig_prompt ? ` · ${shorten(out.orig_prompt, 200)}` : ""}`;
    caption.title = out.orig_prompt || "";
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
  syncModel(); // also renders the references
  renderTasks();
  loadTasks();
})();
