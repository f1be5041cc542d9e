// wanserve's page: make videos, watch them denoise, play and keep them. Plain JavaScript, no build step.
// It talks to nothing but this API (its own origin) and keeps nothing but the API key (local storage).
// Media is fetched with the Authorization header and shown through blob: URLs, since <img src> and
// <video src> cannot send one; the event stream is read with fetch() for the same reason (EventSource
// cannot send headers either).
"use strict";

const KEY_STORAGE = "wanserve.apiKey";
const PAGE_SIZE = 10;
const MAX_RECONNECT_MS = 30000;
// Browsers open at most 6 HTTP/1.1 connections to a host, and each open event stream holds one: past this
// many, a video waits for a free stream (in_progress ones first), so lists, media and buttons always get one.
const MAX_STREAMS = 4;
const ACTIVE = new Set(["queued", "in_progress"]);
const STATUS_NAMES = {
  queued: "queued",
  in_progress: "in progress",
  completed: "completed",
  failed: "failed",
  cancelled: "cancelled",
};
const STAGE_NAMES = {
  queued: "waiting in the queue",
  no_worker: "waiting for a worker",
  text_encode: "encoding the prompt",
  denoise: "denoising",
  vae_decode: "decoding the frames",
  encode: "encoding the MP4",
  store: "storing",
  done: "done",
};
// The create parameters, each the name of its form field: the API's error `param` names one of them.
const PARAMS = [
  "prompt", "size", "seconds", "num_frames", "num_inference_steps",
  "guidance_scale", "fps", "seed", "cache", "negative_prompt",
];

const $ = (id) => document.getElementById(id);

class ApiError extends Error {
  constructor(status, body) {
    const error = (body && body.error) || {};
    super(error.message || `The server answered ${status}.`);
    this.status = status;
    this.param = error.param || null;
    this.code = error.code || null;
  }
}

const state = {
  model: null,
  key: readStoredKey(),
  items: new Map(),     // video id -> {video, element, stream (AbortController), thumbnail (blob: URL)}
  player: {id: null, url: null, loading: null, picked: false},  // picked: by the person, not by the page
  streams: 0,           // event streams open
  waiting: new Set(),   // ids of active videos waiting for a stream
  clockOffsetS: 0,      // the server's clock minus ours (from the Date header), for the time-left estimate
};

// ---- storage ------------------------------------------------------------------------------------------

function readStoredKey() {
  try {
    return localStorage.getItem(KEY_STORAGE) || "";
  } catch {
    return "";  // storage disabled: the key lives for this page only
  }
}

function storeKey(key) {
  try {
    if (key) localStorage.setItem(KEY_STORAGE, key);
    else localStorage.removeItem(KEY_STORAGE);
  } catch {
    // storage disabled: nothing to keep
  }
}

// ---- the API ------------------------------------------------------------------------------------------

function authHeaders(key = state.key) {
  return key ? {Authorization: `Bearer ${key}`} : {};
}

async function request(path, {method = "GET", body, key, signal, headers = {}} = {}) {
  const options = {method, signal, cache: "no-store", headers: {...authHeaders(key), ...headers}};
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(path, options);
  noteServerClock(response);
  if (!response.ok) {
    let parsed = null;
    try {
      parsed = await response.json();
    } catch {
      // not JSON (a proxy's page): the status says enough
    }
    throw new ApiError(response.status, parsed);
  }
  return response;
}

async function api(path, options) {
  return (await request(path, options)).json();
}

function noteServerClock(response) {
  const date = Date.parse(response.headers.get("Date") || "");
  // The Date header has whole seconds: its middle is the best guess of the server's time.
  if (!Number.isNaN(date)) state.clockOffsetS = (date + 500 - Date.now()) / 1000;
}

function serverNow() {
  return Date.now() / 1000 + state.clockOffsetS;
}

// ---- the model and the form ---------------------------------------------------------------------------

async function loadModel() {
  try {
    const models = await api("/v1/models");
    const model = models.data[0];
    if (!model) throw new Error("This server serves no model.");
    state.model = model;
    $("model-line").textContent = `${model.id} · ${model.sizes.join(", ")} · up to ${model.max_frames} frames`;
    $("model-notes").textContent = model.notes || "";
    fillDefaults(model);
  } catch (error) {
    $("model-line").textContent = `Could not load the model: ${error.message}`;
    $("model-line").classList.add("bad");
  }
}

function setOptions(select, values, selected) {
  select.replaceChildren(...values.map((value) => new Option(value, value, false, value === selected)));
}

function fillDefaults(model) {
  const limits = model.limits || {};
  $("prompt").maxLength = limits.max_prompt_chars || 2000;
  $("negative_prompt").maxLength = limits.max_prompt_chars || 2000;
  setOptions($("size"), model.sizes, model.default_size);
  setOptions($("cache"), model.cache_presets || ["none"], "none");
  $("fps").value = model.default_fps;
  $("seconds").value = model.default_seconds;
  $("num_frames").value = model.default_seconds * model.default_fps + 1;
  $("num_frames").max = model.max_frames;
  $("num_inference_steps").value = model.default_steps;
  if (limits.max_steps) $("num_inference_steps").max = limits.max_steps;
  $("guidance_scale").value = model.default_guidance_scale;
  if (limits.max_guidance_scale !== undefined) $("guidance_scale").max = limits.max_guidance_scale;
  if (limits.max_seed !== undefined) $("seed").max = limits.max_seed;
  updateLength();
}

function updateLength() {
  const model = state.model;
  if (!model) return;
  const fps = Number($("fps").value) || model.default_fps;
  const maxSeconds = Math.floor((model.max_frames - 1) / fps);
  $("seconds").max = Math.max(1, Math.min(maxSeconds, (model.limits || {}).max_seconds || maxSeconds));
  const frames = Number($("num_frames").value);
  $("num_frames-hint").textContent = frames
    ? `4k+1 · ${(Math.max(frames - 1, 0) / fps).toFixed(2)} s at ${fps} fps`
    : "4k+1";
  updateWork();
}

function updateWork() {
  const model = state.model;
  const max = model && model.limits && model.limits.max_work;
  const frames = Number($("num_frames").value);
  const steps = Number($("num_inference_steps").value);
  const [width, height] = ($("size").value || "0x0").split("x").map(Number);
  const work = frames * width * height * steps;
  const line = $("work-line");
  line.classList.toggle("bad", Boolean(max && work > max));
  line.textContent = max && work > max
    ? `${frames} frames × ${width}×${height} × ${steps} steps is more work than this server takes.`
    : "";
}

function secondsChanged() {
  const seconds = Number($("seconds").value);
  const fps = Number($("fps").value) || state.model.default_fps;
  if (seconds > 0) $("num_frames").value = seconds * fps + 1;
  updateLength();
}

function framesChanged() {
  const frames = Number($("num_frames").value);
  const fps = Number($("fps").value) || state.model.default_fps;
  const seconds = (frames - 1) / fps;
  $("seconds").value = Number.isInteger(seconds) && seconds > 0 ? seconds : "";
  updateLength();
}

function requestBody() {
  const body = {prompt: $("prompt").value};
  const number = (id) => ($(id).value === "" ? undefined : Number($(id).value));
  if ($("size").value) body.size = $("size").value;
  // The frame count is the exact one; seconds only when frames were cleared.
  if (number("num_frames") !== undefined) body.num_frames = number("num_frames");
  else if (number("seconds") !== undefined) body.seconds = number("seconds");
  for (const id of ["fps", "num_inference_steps", "guidance_scale", "seed"]) {
    if (number(id) !== undefined) body[id] = number(id);
  }
  if ($("negative_prompt").value) body.negative_prompt = $("negative_prompt").value;
  if ($("cache").value) body.cache = $("cache").value;
  return body;
}

function clearErrors() {
  for (const name of PARAMS) {
    const slot = $(`${name}-error`);
    slot.hidden = true;
    slot.textContent = "";
    $(name).removeAttribute("aria-invalid");
  }
  $("form-error").hidden = true;
  $("form-error").textContent = "";
}

function showError(error) {
  const param = (error.param || "").split(".")[0];
  if (PARAMS.includes(param)) {
    const slot = $(`${param}-error`);
    slot.textContent = error.message;
    slot.hidden = false;
    const input = $(param);
    input.setAttribute("aria-invalid", "true");
    if (input.closest("details")) input.closest("details").open = true;
    input.focus();
  } else {
    $("form-error").textContent = error.message;
    $("form-error").hidden = false;
  }
}

let submitting = false;

async function submit(event) {
  event.preventDefault();
  if (submitting) return;
  clearErrors();
  submitting = true;
  $("generate").disabled = true;
  $("form-status").textContent = "Sending…";
  try {
    const video = await api("/v1/videos", {method: "POST", body: requestBody()});
    $("form-status").textContent = `Queued ${video.id}.`;
    addItem(video, {first: true});
  } catch (error) {
    $("form-status").textContent = "";
    if (error.status === 401) askForKey(error);
    showError(error);
  } finally {
    submitting = false;
    $("generate").disabled = false;
  }
}

function fillFromVideo(video) {
  $("prompt").value = video.prompt;
  $("negative_prompt").value = video.negative_prompt || "";
  if ([...$("size").options].some((option) => option.value === video.size)) $("size").value = video.size;
  $("fps").value = video.fps;
  $("num_frames").value = video.num_frames;
  framesChanged();
  $("num_inference_steps").value = video.num_inference_steps;
  $("guidance_scale").value = video.guidance_scale;
  const cache = video.cache || {};
  const preset = cache.preset || (cache.method === "adaptive" ? "adaptive" : "none");
  if ([...$("cache").options].some((option) => option.value === preset)) $("cache").value = preset;
  const maxSeed = Number($("seed").max) || 2 ** 32 - 1;
  $("seed").value = crypto.getRandomValues(new Uint32Array(1))[0] % (maxSeed + 1);
  clearErrors();
  updateWork();
  $("form-status").textContent = `Settings of ${video.id}, with a new seed.`;
  $("prompt").focus();
  $("prompt").scrollIntoView({block: "nearest", behavior: "smooth"});
}

// ---- the API key --------------------------------------------------------------------------------------

// The key panel, with why it shows: `error` is the API's 401 (no key, or a refused one), or a message of our own.
function askForKey(error, message = "Enter another API key.") {
  if (error) {
    $("key-message").textContent = state.key
      ? `The server refused the saved API key (${error.message}) Enter a valid key.`
      : "This server needs an API key. Enter yours to see and make videos.";
    $("list-message").textContent = "Enter an API key to see your videos.";
  } else {
    $("key-message").textContent = message;
  }
  $("key-forget").hidden = !state.key;
  $("key-panel").hidden = false;
  $("key-status").hidden = true;
  $("api-key").focus();
}

function showKeyStatus() {
  if (!state.key) return;
  $("key-panel").hidden = true;
  $("key-status").hidden = false;
  $("key-status-text").textContent = `API key …${state.key.slice(-4)}`;
}

async function useKey(event) {
  event.preventDefault();
  const key = $("api-key").value.trim();
  if (!key) return;
  try {
    await api("/v1/videos?limit=1", {key});  // tried before it is kept
  } catch (error) {
    $("key-message").textContent = error.status === 401
      ? `This key was refused: ${error.message} Check it and try again.`
      : `Could not check the key: ${error.message}`;
    $("api-key").select();
    return;
  }
  state.key = key;
  storeKey(key);
  $("api-key").value = "";
  showKeyStatus();
  await loadList({reset: true});
}

function forgetKey() {
  state.key = "";
  storeKey("");
  clearList();
  askForKey(null, "The saved key is forgotten. Enter an API key to see your videos.");
  $("list-message").textContent = "Enter an API key to see your videos.";
}

// ---- the list -----------------------------------------------------------------------------------------

function clearList() {
  for (const id of [...state.items.keys()]) removeItem(id);
  $("load-more").hidden = true;
}

async function loadList({reset}) {
  const params = new URLSearchParams({limit: String(PAGE_SIZE)});
  const items = $("videos").children;
  if (!reset && items.length) params.set("after", items[items.length - 1].dataset.id);
  let page;
  try {
    page = await api(`/v1/videos?${params}`);
  } catch (error) {
    if (error.status === 401) {
      clearList();
      askForKey(error);
    } else {
      $("list-message").textContent = `Could not load your videos: ${error.message}`;
    }
    return;
  }
  if (reset) {
    // Refreshed in place: what is gone leaves, what stays keeps its stream and thumbnail.
    const listed = new Set(page.data.map((video) => video.id));
    for (const id of [...state.items.keys()]) if (!listed.has(id)) removeItem(id);
  }
  showKeyStatus();
  for (const video of page.data) addItem(video, {reorder: reset});
  $("load-more").hidden = !page.has_more;
  updateListMessage();
  if (!state.player.id) {
    const finished = [...state.items.values()].find((item) => item.video.status === "completed");
    if (finished) play(finished.video.id);
  }
}

function updateListMessage() {
  $("list-message").textContent = state.items.size ? "" : "No videos yet: describe one and press Generate.";
}

function addItem(video, {first = false, reorder = false} = {}) {
  const known = state.items.get(video.id);
  if (known) {
    if (reorder) $("videos").append(known.element);
    updateItem(video);
    return;
  }
  const element = $("video-item").content.firstElementChild.cloneNode(true);
  element.dataset.id = video.id;
  element.querySelector(".video-prompt").textContent = video.prompt;
  element.querySelector(".video-meta").textContent = describe(video);
  for (const button of element.querySelectorAll("button[data-action]")) {
    if (!button.classList.contains("thumb")) {
      button.setAttribute("aria-label", `${button.textContent}: ${video.prompt}`);
    }
  }
  const item = {video, element, stream: null, thumbnail: null};
  state.items.set(video.id, item);
  if (first) $("videos").prepend(element);
  else $("videos").append(element);
  updateItem(video);
  updateListMessage();
}

function describe(video) {
  const parts = [video.size, `${video.num_frames} frames`, `${video.num_inference_steps} steps`,
    `seed ${video.seed}`];
  if (video.cache && video.cache.method !== "none") parts.push(`cache ${video.cache.preset || video.cache.method}`);
  return parts.join(" · ");
}

function updateItem(video) {
  const item = state.items.get(video.id);
  if (!item) return;
  const before = item.video.status;
  // An end is final: a list read before it (a refresh racing the stream) must not bring the video back.
  if (!ACTIVE.has(before) && ACTIVE.has(video.status)) return;
  item.video = video;
  const element = item.element;
  element.dataset.status = video.status;
  element.querySelector(".status").textContent = STATUS_NAMES[video.status] || video.status;
  element.querySelector(".detail").textContent = detail(video);
  const bar = element.querySelector(".bar");
  bar.value = video.progress;
  bar.setAttribute("aria-label", `Progress ${video.progress}%`);
  bar.hidden = !ACTIVE.has(video.status) && video.status !== "completed";
  const errorText = element.querySelector(".video-error");
  errorText.hidden = !video.error;
  errorText.textContent = video.error ? video.error.message : "";
  const show = {
    play: video.status === "completed",
    download: video.status === "completed",
    cancel: ACTIVE.has(video.status),
    again: true,
    delete: true,
  };
  for (const [action, visible] of Object.entries(show)) {
    for (const button of element.querySelectorAll(`[data-action="${action}"]`)) {
      if (!button.classList.contains("thumb")) button.hidden = !visible;
    }
  }
  if (video.status === "completed" && !item.thumbnail) loadThumbnail(item);
  if (ACTIVE.has(video.status)) watch(video.id);
  else state.waiting.delete(video.id);
  // One the page watched finish goes straight to the player, unless the person picked what it plays.
  if (video.status === "completed" && ACTIVE.has(before) && !state.player.picked) play(video.id);
}

function detail(video) {
  const stage = STAGE_NAMES[video.stage] || video.stage || "";
  if (video.status === "queued") {
    if (video.stage === "no_worker") return stage;
    return video.queue_position === null || video.queue_position === undefined
      ? stage
      : `#${video.queue_position + 1} in the queue`;
  }
  if (video.status === "in_progress") return `${video.progress}% · ${stage} · ${timeLeft(video)}`;
  if (video.status === "completed") {
    // The stages' own timings are finer than the whole seconds of started_at and completed_at.
    const work = Object.entries(video.stage_durations || {})
      .filter(([name]) => name !== "queue_wait_s")
      .reduce((sum, [, seconds]) => sum + Number(seconds), 0);
    return work > 0 ? `made in ${work < 10 ? work.toFixed(1) : Math.round(work)} s` : "";
  }
  return "";
}

function timeLeft(video) {
  if (!video.started_at || video.progress <= 0) return "estimating the time left";
  const elapsed = serverNow() - video.started_at;
  if (elapsed < 1) return "estimating the time left";
  const left = (elapsed * (100 - video.progress)) / video.progress;
  return left < 1 ? "almost done" : `about ${formatSeconds(left)} left`;
}

function formatSeconds(seconds) {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  return s % 60 ? `${m} min ${s % 60} s` : `${m} min`;
}

function removeItem(id) {
  const item = state.items.get(id);
  if (!item) return;
  if (item.stream) item.stream.abort();
  state.waiting.delete(id);
  if (item.thumbnail) URL.revokeObjectURL(item.thumbnail);
  item.element.remove();
  state.items.delete(id);
  if (state.player.id === id) clearPlayer();
}

async function loadThumbnail(item) {
  item.thumbnail = "loading";
  try {
    const response = await request(`/v1/videos/${item.video.id}/content?variant=thumbnail`);
    const url = URL.createObjectURL(await response.blob());
    if (!state.items.has(item.video.id)) {
      URL.revokeObjectURL(url);
      return;
    }
    item.thumbnail = url;
    const img = item.element.querySelector(".thumb img");
    img.src = url;
    img.hidden = false;
  } catch {
    item.thumbnail = null;  // no thumbnail: the item still works
  }
}

// ---- the buttons of an item ---------------------------------------------------------------------------

async function onItemClick(event) {
  const button = event.target.closest("button[data-action]");
  const element = event.target.closest("li.video");
  if (!button || !element) return;
  const item = state.items.get(element.dataset.id);
  if (!item) return;
  const id = item.video.id;
  const errorText = element.querySelector(".video-error");
  const fail = (error) => {
    if (error.status === 401) askForKey(error);
    errorText.textContent = error.message;
    errorText.hidden = false;
  };
  switch (button.dataset.action) {
    case "play":
      play(id, {picked: true});
      break;
    case "again":
      fillFromVideo(item.video);
      break;
    case "download":
      try {
        const response = await request(`/v1/videos/${id}/content`);
        saveBlob(await response.blob(), `${id}.mp4`);
      } catch (error) {
        fail(error);
      }
      break;
    case "cancel":
      button.disabled = true;
      element.querySelector(".detail").textContent = "cancelling…";
      try {
        updateItem(await api(`/v1/videos/${id}/cancel`, {method: "POST"}));
      } catch (error) {
        fail(error);
      } finally {
        button.disabled = false;
      }
      break;
    case "delete":
      button.disabled = true;
      try {
        await api(`/v1/videos/${id}`, {method: "DELETE"});
        const next = element.nextElementSibling || element.previousElementSibling;
        removeItem(id);
        updateListMessage();
        (next ? next.querySelector("[data-action=delete]") : $("prompt")).focus();
      } catch (error) {
        button.disabled = false;
        fail(error);
      }
      break;
    default:
      break;
  }
}

function saveBlob(blob, filename) {
  const url = URL.createObjectURL(blob);
  const link = document.createElement("a");
  link.href = url;
  link.download = filename;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60000);
}

// ---- the player ---------------------------------------------------------------------------------------

async function play(id, {picked = false} = {}) {
  const item = state.items.get(id);
  if (!item || item.video.status !== "completed") return;
  state.player.id = id;
  state.player.picked = state.player.picked || picked;
  for (const element of $("videos").children) {
    element.classList.toggle("playing", element.dataset.id === id);
  }
  const video = item.video;
  $("player-empty").hidden = true;
  $("player-body").hidden = false;
  $("player-prompt").textContent = video.prompt;
  fillParams(video);
  fillStages(video.stage_durations || {});
  const loading = request(`/v1/videos/${id}/content`).then((response) => response.blob());
  state.player.loading = loading;
  let blob;
  try {
    blob = await loading;
  } catch (error) {
    if (state.player.loading === loading) $("player-prompt").textContent = `Could not load ${id}: ${error.message}`;
    return;
  }
  if (state.player.loading !== loading) return;  // another video was picked meanwhile
  if (state.player.url) URL.revokeObjectURL(state.player.url);
  state.player.url = URL.createObjectURL(blob);
  const element = $("player-video");
  element.src = state.player.url;
  element.play().catch(() => {});  // autoplay may be refused: the controls are there
}

function clearPlayer() {
  const element = $("player-video");
  element.removeAttribute("src");
  element.load();
  if (state.player.url) URL.revokeObjectURL(state.player.url);
  state.player = {id: null, url: null, loading: null, picked: false};
  $("player-body").hidden = true;
  $("player-empty").hidden = false;
}

function fillParams(video) {
  // [name, value, wide]: the long values take a whole row, the short ones pair up.
  const rows = [
    ["Model", video.model, true],
    ["Frames", `${video.num_frames} · ${video.seconds} s at ${video.fps} fps`, true],
    ["Size", video.size],
    ["Steps", video.num_inference_steps],
    ["Guidance", video.guidance_scale],
    ["Seed", video.seed],
    ["Cache", video.cache ? video.cache.preset || video.cache.method : "none"],
  ];
  if (video.inference_time_s !== null && video.inference_time_s !== undefined) {
    rows.push(["Inference", `${Number(video.inference_time_s).toFixed(2)} s`]);
  }
  if (video.negative_prompt) rows.push(["Negative", video.negative_prompt, true]);
  $("player-id").textContent = video.id;
  $("player-params").replaceChildren(...rows.map(([name, value, wide]) => {
    const pair = document.createElement("div");
    if (wide) pair.className = "wide";
    const dt = document.createElement("dt");
    dt.textContent = name;
    const dd = document.createElement("dd");
    dd.textContent = String(value);
    pair.append(dt, dd);
    return pair;
  }));
}

function fillStages(durations) {
  const entries = Object.entries(durations);
  const total = entries.reduce((sum, [, seconds]) => sum + Number(seconds), 0);
  $("player-stages").replaceChildren(...entries.map(([name, seconds]) => {
    const row = document.createElement("tr");
    const label = document.createElement("th");
    label.scope = "row";
    label.textContent = name.replace(/_s$/, "").replaceAll("_", " ");
    const value = document.createElement("td");
    value.textContent = `${Number(seconds).toFixed(2)} s`;
    const share = document.createElement("td");
    const meter = document.createElement("meter");
    meter.max = 1;
    meter.value = total ? Number(seconds) / total : 0;
    share.append(meter);
    row.append(label, value, share);
    return row;
  }));
}

// ---- the event stream ---------------------------------------------------------------------------------

// Server-sent events from a fetch() body: `event:`, `id:`, `data:` (several lines joined by "\n"),
// `retry:` and comments, an event dispatched at each blank line, as the HTML standard parses them.
async function* serverSentEvents(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let type = "";
  let data = [];
  let lastId = "";
  try {
    for (;;) {
      const {value, done} = await reader.read();
      if (done) return;  // an event without its blank line is incomplete: dropped, as the standard says
      buffer += value;
      for (;;) {
        const end = /\r\n|\r|\n/.exec(buffer);
        // A "\r" at the very end may be the first half of "\r\n": wait for the next chunk.
        if (!end || (end[0] === "\r" && end.index === buffer.length - 1)) break;
        const line = buffer.slice(0, end.index);
        buffer = buffer.slice(end.index + end[0].length);
        if (line === "") {
          if (data.length) yield {type: type || "message", data: data.join("\n"), id: lastId};
          type = "";
          data = [];
          continue;
        }
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let text = colon < 0 ? "" : line.slice(colon + 1);
        if (text.startsWith(" ")) text = text.slice(1);
        if (field === "event") type = text;
        else if (field === "data") data.push(text);
        else if (field === "id" && !text.includes("\0")) lastId = text;
        else if (field === "retry" && /^\d+$/.test(text)) yield {type: "retry", retry: Number(text)};
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

const sleep = (ms, signal) => new Promise((resolve) => {
  const timer = setTimeout(resolve, ms);
  signal.addEventListener("abort", () => {
    clearTimeout(timer);
    resolve();
  }, {once: true});
});

function watch(id) {
  const item = state.items.get(id);
  if (item.stream || state.waiting.has(id)) return;
  state.waiting.add(id);
  queueMicrotask(followNext);  // after the whole page of a list is in: the slots go by priority, not list order
}

function followNext() {
  while (state.streams < MAX_STREAMS && state.waiting.size) {
    // A running video moves most; then the oldest queued ones, the next to run.
    const [next] = [...state.waiting]
      .map((id) => state.items.get(id).video)
      .sort((a, b) => (b.status === "in_progress") - (a.status === "in_progress") || a.created_at - b.created_at);
    state.waiting.delete(next.id);
    follow(next.id);
  }
}

// Follows one video's events until it ends, reconnecting after a drop with Last-Event-ID (a reconnect after
// the end still gets the final state, then `end`).
async function follow(id) {
  const item = state.items.get(id);
  if (!item || item.stream) return;
  const controller = new AbortController();
  item.stream = controller;
  state.streams += 1;
  const {signal} = controller;
  let lastId = "";
  let retryMs = 1000;
  let failures = 0;
  try {
    while (!signal.aborted) {
      try {
        const headers = {Accept: "text/event-stream"};
        if (lastId) headers["Last-Event-ID"] = lastId;
        const response = await request(`/v1/videos/${id}/events`, {signal, headers});
        failures = 0;
        for await (const event of serverSentEvents(response.body)) {
          if (event.type === "retry") {
            retryMs = event.retry;
            continue;
          }
          if (event.id) lastId = event.id;
          if (event.type === "video") {
            updateItem(JSON.parse(event.data));
          } else if (event.type === "end") {
            updateItem(JSON.parse(event.data));
            return;
          } else if (event.type === "error") {
            gone(id, JSON.parse(event.data));
            return;
          }
        }
      } catch (error) {
        if (signal.aborted) return;
        if (error.status === 404 && error.code === "video_not_found") {
          gone(id, {error: {message: error.message}});
          return;
        }
        if (error.status === 401) {
          askForKey(error);
          return;
        }
        failures += 1;
      }
      // The stream dropped before the end: back off, then ask again from the last event seen.
      await sleep(Math.min(retryMs * 2 ** failures, MAX_RECONNECT_MS), signal);
    }
  } finally {
    if (item.stream === controller) item.stream = null;
    state.streams -= 1;
    followNext();
  }
}

// A video that vanished while it was watched (deleted elsewhere, or expired): it leaves the list.
function gone(id, body) {
  const item = state.items.get(id);
  if (!item) return;
  removeItem(id);
  updateListMessage();
  const message = body && body.error && body.error.message;
  $("list-message").textContent = `${id} is gone${message ? `: ${message}` : "."}`;
}

// ---- start --------------------------------------------------------------------------------------------

function start() {
  $("create-form").addEventListener("submit", submit);
  $("create-form").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      $("create-form").requestSubmit();
    }
  });
  $("create-form").addEventListener("input", (event) => {
    const id = event.target.id;
    if (id === "seconds") secondsChanged();
    else if (id === "num_frames") framesChanged();
    else if (id === "fps") secondsChanged();
    else updateWork();
    if (PARAMS.includes(id) && !$(`${id}-error`).hidden) {
      $(`${id}-error`).hidden = true;
      $(id).removeAttribute("aria-invalid");
    }
  });
  $("key-form").addEventListener("submit", useKey);
  $("key-forget").addEventListener("click", forgetKey);
  $("key-change").addEventListener("click", () => askForKey(null));
  $("videos").addEventListener("click", onItemClick);
  $("refresh").addEventListener("click", () => loadList({reset: true}));
  $("load-more").addEventListener("click", () => loadList({reset: false}));
  loadModel();
  loadList({reset: true});
}

start();
