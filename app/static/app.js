// vaeserve latent-space explorer: plain JavaScript, no build step, no dependencies.
//
// The page uses nothing but the service's public HTTP API, so this file doubles as an example
// client; docs/page.md walks through the calls. Every URL is relative to the page ("v1/sample",
// never "/v1/sample"): behind a gateway that serves the app under a prefix such as /vae/, the
// same requests become /vae/v1/sample with no configuration.

const SLIDER_LIMIT = 4; // slider range: ±4 prior standard deviations
const VISIBLE_DIMS = 12; // sliders shown before "Show all dimensions"
const MAX_STEPS = 64;
const TENSOR_SIDE = 256;
const IMAGE_FILES = "image/png,image/jpeg,image/webp,image/gif,image/bmp"; // what image models take // images for models of any size (diffusers' autoencoders) are sent this long
// Work that took longer than this goes through the jobs API next time, with a progress bar and a
// cancel button; so does all work of models of any size, whose large images take long on a CPU.
const LONG_MS = 1000;
// A video or audio model's prior draw: 2 latent frames of 4×4 (5 frames of 32×32 for a causal
// VAE that compresses 4× in time and 8× in space), or a second of sound: quick on a CPU.
const PRIOR_SIZE = { video: [2, 4, 4], audioSeconds: 1 };

// ---------------------------------------------------------------- API client

class ApiError extends Error {
  constructor(status, message, retryAfter = null) {
    super(message);
    this.name = "ApiError";
    this.status = status; // HTTP status; 0 when the service could not be reached
    this.retryAfter = retryAfter;
  }
}

// "model path" of the work that took longer than LONG_MS.
const longWork = new Set();

function isLong(model, path) {
  const sized = state.models.find((m) => m.name === model)?.image_multiple != null;
  return sized || longWork.has(`${model} ${path}`);
}

/** One API call. Sends `json` as a POST body when given; returns the parsed JSON answer (and,
 *  with `withHeaders`, {body, headers}). Any error answer becomes an ApiError carrying the
 *  API's `detail` message. Work on `model` that is long goes through the jobs API (`Prefer:
 *  respond-async`): the answer is then the job's result, the same as the direct call's. */
async function request(path, { query, json, form, withHeaders = false, model = null } = {}) {
  const url = apiURL(path, query);
  const init = { method: "GET", headers: { Accept: "application/json" } };
  if (json !== undefined) {
    init.method = "POST";
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  } else if (form !== undefined) {
    init.method = "POST";
    init.body = form; // multipart/form-data, its boundary set by the browser
  }
  const long = model !== null && isLong(model, path);
  if (long) init.headers.Prefer = "respond-async";
  let response;
  try {
    const started = performance.now();
    response = await fetch(url, init);
    if (response.status === 202 && response.headers.has("Preference-Applied")) {
      response = await followJob(new URL(response.headers.get("Location"), url), path);
    } else if (model !== null && performance.now() - started > LONG_MS) {
      longWork.add(`${model} ${path}`);
    }
  } catch (error) {
    if (error instanceof ApiError) throw error;
    throw new ApiError(0, `Cannot reach the service (${error.message}). Is it running?`);
  }
  const text = await response.text();
  const body = parsed(text);
  if (!response.ok) throw answerError(response, text, body);
  if (body === null) {
    const type = response.headers.get("Content-Type");
    throw new ApiError(response.status, `expected JSON from ${url.pathname}, got ${type}`);
  }
  return withHeaders ? { body, headers: response.headers } : body;
}

/** A URL of the API, relative to the page; a list value repeats its parameter (shape=1&shape=4). */
function apiURL(path, query) {
  const url = new URL(path, document.baseURI);
  for (const [key, value] of Object.entries(query ?? {})) {
    if (Array.isArray(value)) value.forEach((item) => url.searchParams.append(key, String(item)));
    else if (value !== undefined && value !== null && value !== "") url.searchParams.set(key, String(value));
  }
  return url;
}

function parsed(text) {
  try {
    return text ? JSON.parse(text) : null;
  } catch {
    return null; // not JSON: a gateway's HTML error page, say; the text itself is reported
  }
}

/** An error answer as an ApiError carrying the API's `detail` message. */
function answerError(response, text, body) {
  let detail = body?.detail;
  if (typeof detail !== "string") {
    detail = detail ? JSON.stringify(detail) : text.trim().slice(0, 300) || response.statusText;
  }
  return new ApiError(response.status, detail, Number(response.headers.get("Retry-After")) || null);
}

/** A POST whose answer is a media file (`accept`: video/mp4, audio/wav): an object URL of it, for
 *  a <video> or <audio> element. Direct, not through the jobs API: the answer is the file. */
async function mediaRequest(path, { query, body, accept }) {
  let response;
  try {
    response = await fetch(apiURL(path, query), { method: "POST", body, headers: { Accept: accept } });
  } catch (error) {
    throw new ApiError(0, `Cannot reach the service (${error.message}). Is it running?`);
  }
  if (!response.ok) {
    const text = await response.text();
    throw answerError(response, text, parsed(text));
  }
  return URL.createObjectURL(await response.blob());
}

/** The job's Server-Sent Events, each record given to `show`, read until the stream ends with
 *  the job's end; returns the final record. (Read with fetch: EventSource would reconnect once
 *  the server ends the stream.) */
async function watchJob(location, show) {
  const response = await fetch(`${location}/events`, { headers: { Accept: "text/event-stream" } });
  if (!response.ok) throw new ApiError(response.status, `cannot watch the job (${response.statusText})`);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let job = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    for (let end = buffer.indexOf("\n\n"); end >= 0; end = buffer.indexOf("\n\n")) {
      const data = buffer.slice(0, end).split("\n").filter((line) => line.startsWith("data: "));
      buffer = buffer.slice(end + 2);
      if (data.length) {
        job = JSON.parse(data.map((line) => line.slice(6)).join("\n"));
        show(job);
      }
    }
  }
  if (!["succeeded", "failed", "cancelled"].includes(job?.state)) {
    throw new ApiError(0, "Lost the job's progress stream.");
  }
  return job;
}

/** A job watched through its event stream, shown as a progress bar with a cancel button in
 *  #jobs until it ends; then the fetch of its result (a failed job's result is its error). */
async function followJob(location, path) {
  const what = path.replace(/^v1\//, "");
  const bar = el("progress", { max: "1", "aria-label": `Progress of ${what}` });
  const count = el("span", { class: "job-count", text: "Queued" });
  const cancel = el("button", { type: "button", text: "Cancel" });
  const name = el("span", { text: what[0].toUpperCase() + what.slice(1) });
  const row = el("div", { class: "job", role: "status", "data-path": path }, name, bar, count, cancel);
  $("jobs").append(row);
  cancel.addEventListener("click", () => {
    cancel.disabled = true;
    count.textContent = "Cancelling…";
    fetch(location, { method: "DELETE", headers: { Accept: "application/json" } }).catch(() => {});
  });
  try {
    const final = await watchJob(location, (job) => {
      if (job.progress) {
        bar.max = job.progress.total;
        bar.value = job.progress.done;
        if (!cancel.disabled) count.textContent = `${job.progress.done} of ${job.progress.total} ${job.progress.unit}`;
      } else if (job.state === "running" && !cancel.disabled) {
        count.textContent = "Running";
      }
    });
    if (final.state === "cancelled") throw new ApiError(0, "Cancelled.");
    return await fetch(`${location}/result`, { headers: { Accept: "application/json" } });
  } finally {
    row.remove();
  }
}

// Image endpoints answer with a PNG grid by default; format=json asks for one base64 PNG per
// image plus the latent vectors, which the page needs.
const api = {
  models: () => request("v1/models"),
  // Seeds go up to 2^63 - 1, beyond the integers a JavaScript number holds exactly, so the
  // seed used is read from the X-Seed header (text), not from the JSON body's `seed`.
  sample: async (params) => {
    const query = { ...params, format: "json" };
    const { body, headers } = await request("v1/sample", { query, withHeaders: true, model: params.model });
    return { ...body, seed: headers.get("X-Seed") ?? String(body.seed) };
  },
  decode: (body) => request("v1/decode", { json: { ...body, format: "json" }, model: body.model }),
  encode: (body) => request("v1/encode", { json: body, model: body.model }),
  reconstruct: (body) => request("v1/reconstruct", { json: { ...body, format: "json" }, model: body.model }),
  score: (body) => request("v1/score", { json: body, model: body.model }),
  interpolate: (body) => request("v1/interpolate", { json: { ...body, format: "json" }, model: body.model }),
  // Video and audio models: a file uploaded (multipart) and one answered (MEDIA below).
  reconstructFile: (form, kind) => mediaRequest("v1/reconstruct", { body: form, accept: kind.type }),
  scoreFile: (form) => request("v1/score", { form }),
  // A binary float32 latent tensor (docs/api.md), decoded to one file.
  decodeTensor: (name, shape, tensor, kind) =>
    mediaRequest(`v1/models/${encodeURIComponent(name)}/decode`, {
      query: { shape, output_type: kind.output },
      body: tensor,
      accept: kind.type,
    }),
};

const pngSrc = (base64) => `data:image/png;base64,${base64}`;

// ---------------------------------------------------------------- small helpers

const $ = (id) => document.getElementById(id);

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  node.append(...children);
  return node;
}

function svg(tag, attributes = {}, ...children) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
  node.append(...children);
  return node;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Runs async jobs one at a time, waiting `delay` ms of quiet first (a debounce). A job
 *  scheduled while another runs replaces any job still waiting, so only the newest waits:
 *  a dragged slider has at most one request in flight and the last position always wins. */
function latestOnly(delay) {
  let running = false;
  let waiting = null;
  let timer = 0;
  async function pump() {
    if (running) return; // the running loop below picks up the waiting job
    running = true;
    while (waiting) {
      const job = waiting;
      waiting = null;
      try {
        await job();
      } catch (error) {
        showError($("global-error"), error); // jobs report their own errors; this is a backstop
      }
    }
    running = false;
  }
  return (job) => {
    waiting = job;
    clearTimeout(timer);
    timer = setTimeout(pump, delay);
  };
}

function describe(error) {
  if (error instanceof ApiError) {
    return error.status ? `The API answered ${error.status}: ${error.message}` : error.message;
  }
  return `Something went wrong in the page: ${error?.message ?? error}`;
}

function showError(node, error) {
  node.textContent = typeof error === "string" ? error : describe(error);
  node.hidden = false;
}

function clearError(node) {
  node.hidden = true;
  node.textContent = "";
}

const sectionError = (id) => $(id).querySelector(".error");

/** Runs `work` for a section: marks `busyNode` busy, clears the section's error on success and
 *  shows it on failure. Results of a model that is no longer chosen are dropped. */
async function task(sectionId, busyNode, generation, work) {
  const errorNode = sectionError(sectionId);
  busyNode?.setAttribute("aria-busy", "true");
  try {
    await work(() => generation !== state.generation);
    if (generation === state.generation) clearError(errorNode);
  } catch (error) {
    if (generation === state.generation) showError(errorNode, error);
  } finally {
    busyNode?.removeAttribute("aria-busy");
  }
}

function readAsDataURL(blob) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(blob);
  });
}

/** The browser's rendition of what the service does to an upload (model.data.image_to_array):
 *  transparency onto black, fit inside width x height keeping the aspect ratio, centre on
 *  black, grey by ITU-R 601 luma. A preview: the service resamples with Lanczos, the browser
 *  with its own filter, so single pixels may differ slightly. */
async function modelView(blob, width, height) {
  const bitmap = await createImageBitmap(blob, { imageOrientation: "from-image" });
  const canvas = el("canvas", { width, height });
  const context = canvas.getContext("2d", { willReadFrequently: true });
  context.fillStyle = "#000";
  context.fillRect(0, 0, width, height);
  const scale = Math.min(width / bitmap.width, height / bitmap.height);
  const w = Math.max(1, Math.round(bitmap.width * scale));
  const h = Math.max(1, Math.round(bitmap.height * scale));
  context.imageSmoothingEnabled = true;
  context.imageSmoothingQuality = "high";
  context.drawImage(bitmap, Math.round((width - w) / 2), Math.round((height - h) / 2), w, h);
  const pixels = context.getImageData(0, 0, width, height);
  const data = pixels.data;
  for (let i = 0; i < data.length; i += 4) {
    const grey = (data[i] * 299 + data[i + 1] * 587 + data[i + 2] * 114) / 1000;
    data[i] = data[i + 1] = data[i + 2] = grey;
  }
  context.putImageData(pixels, 0, 0);
  const size = { width: bitmap.width, height: bitmap.height };
  bitmap.close();
  return { src: canvas.toDataURL("image/png"), size };
}

/** An image as a model of any size takes it (`multiple` from GET v1/models): RGB, scaled so its
 *  longer side is TENSOR_SIDE pixels, each side then cut down to a multiple of `multiple`. */
async function fittedView(blob, multiple) {
  const bitmap = await createImageBitmap(blob, { imageOrientation: "from-image" });
  const scale = TENSOR_SIDE / Math.max(bitmap.width, bitmap.height);
  const side = (length) => Math.max(multiple, Math.floor((length * scale) / multiple) * multiple);
  const canvas = el("canvas", { width: side(bitmap.width), height: side(bitmap.height) });
  const context = canvas.getContext("2d");
  context.imageSmoothingEnabled = true;
  context.imageSmoothingQuality = "high";
  context.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
  bitmap.close();
  return { src: canvas.toDataURL("image/png"), size: { width: canvas.width, height: canvas.height } };
}

const format = (value, digits = 1) => (Number.isFinite(value) ? value.toFixed(digits) : String(value));

// ---------------------------------------------------------------- state

const state = {
  generation: 0, // bumped when the model changes; answers for an older generation are dropped
  models: [],
  model: null, // the chosen model's entry from GET v1/models
  examples: [], // test images: {file, label, src, blob (once fetched)}
  // Latent points the Explore and Interpolate sections can start from, by id:
  // {id, name, src (an image to show), latent (array), label (class name or null)}
  points: new Map(),
  sampleCount: 0,
  selected: 0, // index of the selected sample tile
  order: null, // latent dimensions, most active first (from the test images' encodings)
  current: null, // the image in the Encode section: {blob (or null for a test image), example, name}
  explore: { id: null, base: null, values: null, label: null },
  chosen: {}, // picker id -> the point the user picked there
  interpolated: "", // "a|b": the ends of the last interpolation asked for
};

const conditional = () => Boolean(state.model?.conditional);
// Video and audio models: what they answer (an mp4 or a WAV, shown in a <video> or <audio>) and
// the files they take; null for image models.
const MEDIA = {
  video: {
    tag: "video", type: "video/mp4", output: "mp4", files: "an mp4, WebM or GIF clip",
    accept: "video/mp4,video/webm,image/gif",
  },
  audio: { tag: "audio", type: "audio/wav", output: "wav", files: "a WAV or FLAC file", accept: "audio/wav,audio/flac" },
};
const media = () => MEDIA[state.model?.details?.media] ?? null;
// Models of any image size with [C, h, w] latents (diffusers' autoencoders): no sliders or JSON
// latent paths for thousands of numbers; the Encode section shows their latent channels instead.
const tensorModel = () => state.model?.image_multiple != null;
const can = (operation) => Boolean(state.model?.capabilities.includes(operation));
const labelsFor = (...labels) => (conditional() ? labels : undefined);

// ---------------------------------------------------------------- models

async function loadModels() {
  const summary = $("model-summary");
  for (;;) {
    try {
      const list = await api.models();
      clearError($("global-error"));
      return list;
    } catch (error) {
      if (error instanceof ApiError && error.status === 503) {
        const wait = Math.min(error.retryAfter ?? 2, 10);
        summary.textContent = `The service is still loading its models; trying again in ${wait} s…`;
        await sleep(wait * 1000);
        continue;
      }
      throw error;
    }
  }
}

function describeModel(model) {
  const details = model.details ?? {};
  if (MEDIA[details.media]) {
    const made = details.media === "video"
      ? `videos of ${details.frames} frames at ${details.fps} fps, sides a multiple of ${model.image_multiple}`
      : `${details.image_channels}-channel audio at ${details.sample_rate} Hz`;
    return `${model.name}: ${details.class}, ${model.latent_shape[0]}-channel latents; ${made}; on ${model.device}.`;
  }
  if (model.image_multiple != null) {
    const f = model.image_multiple;
    return `${model.name}: ${model.details.class ?? model.family}, ${model.latent_shape[0]}-channel latents at ` +
      `1/${f} of the image's width and height, RGB images with sides a multiple of ${f}, on ${model.device}.`;
  }
  const kind = model.conditional ? `conditional on ${model.labels.length} classes` : "unconditional";
  return `${model.name}: ${kind}, ${model.latent_dim} latent dimensions, ` +
    `${model.image_shape.slice(1).join("×")} images, on ${model.device}.`;
}

function renderModelInfo(model) {
  $("model-summary").textContent = describeModel(model);
  const rows = [
    ["Name", model.name + (model.default ? " (default)" : "")],
    ["Image shape", model.image_shape.join(" × ")],
    ["Latent dimensions", model.latent_dim],
    ["Latent shape", model.latent_shape.map((size) => size ?? "?").join(" × ")],
    ["Operations", model.capabilities.join(", ")],
    ["Likelihood p(x|z)", model.likelihood ?? "none"],
    ["Classes", model.conditional ? model.labels.join(", ") : "none (unconditional)"],
    ["Device", model.device],
    ["Checkpoint sha256", model.sha256],
  ];
  const text = (value) => (typeof value === "string" ? value : JSON.stringify(value));
  for (const [key, value] of Object.entries(model.evaluation ?? {})) rows.push([`Evaluation: ${key}`, text(value)]);
  for (const [key, value] of Object.entries(model.training ?? {})) rows.push([`Training: ${key}`, text(value)]);
  for (const [key, value] of Object.entries(model.details ?? {})) rows.push([key, text(value)]);
  $("model-info").replaceChildren(
    ...rows.flatMap(([key, value]) => [el("dt", { text: key }), el("dd", { text: String(value) })]),
  );
}

function fillLabelSelect(select, field, { random = false } = {}) {
  const labels = state.model.labels ?? [];
  const previous = select.value;
  const options = labels.map((label) => el("option", { value: label, text: label }));
  if (random) options.unshift(el("option", { value: "", text: "Random per image" }));
  select.replaceChildren(...options);
  if ([...select.options].some((option) => option.value === previous)) select.value = previous;
  field.hidden = !conditional();
}

async function useModel(name) {
  const generation = ++state.generation;
  state.model = state.models.find((model) => model.name === name);
  state.points.clear();
  state.sampleCount = 0;
  state.order = null;
  state.explore = { id: null, base: null, values: null, label: null };
  state.chosen = {};
  state.interpolated = "";
  renderModelInfo(state.model);
  showSections();
  fillLabelSelect($("sample-label"), $("sample-label-field"), { random: true });
  fillLabelSelect($("encode-label"), $("encode-label-field"));
  fillLabelSelect($("explore-label"), $("explore-label-field"));
  buildSliders();
  refreshPickers();
  requestSamples();
  if (media()) {
    clearEncodeResults();
    $("encode-original-media").replaceChildren();
    $("encode-status").textContent = `Give ${state.model.name} ${media().files} to reconstruct and score.`;
    return;
  }
  if (!tensorModel()) encodeExamples(generation);
  const current = state.current ?? (state.examples.length ? exampleImage(state.examples[0]) : null);
  if (current) {
    if (current.example && conditional()) $("encode-label").value = current.example.label;
    encodeImage(current);
  }
}

/** Show the sections the chosen model can serve; each hidden one says why in its place. */
function showSections() {
  const tensors = tensorModel();
  const why = {
    sample: can("sample") ? "" : `${state.model.name} has no prior p(z) to sample from.`,
    explore: tensors ? `${state.model.name}'s latents have ${state.model.latent_shape[0]} channels per ` +
      "image position: too many numbers for sliders. Its channels show in Encode." : "",
    interpolate: tensors ? `Interpolating ${state.model.name}'s latents needs the binary tensor API ` +
      "(docs/api.md), which this page does not use." : "",
  };
  for (const [id, reason] of Object.entries(why)) {
    const section = $(id);
    for (const child of section.children) {
      if (!child.matches("h2, .unavailable, .error")) child.hidden = Boolean(reason);
    }
    let note = section.querySelector(".unavailable");
    if (!note) {
      note = el("p", { class: "unavailable" });
      section.querySelector("h2").after(note);
    }
    note.textContent = reason;
    note.hidden = !reason;
  }
  // Video and audio models: one <video> or <audio> per draw and per upload, no grids or images.
  const kind = media();
  for (const id of ["n-field", "sample-grid", "sample-actions", "examples-field", "encode-figures", "posterior-title",
    "posterior-chart"]) {
    $(id).hidden = Boolean(kind);
  }
  $("sample-media").hidden = $("encode-media").hidden = !kind;
  $("sample-media").replaceChildren();
  $("file").accept = kind?.accept ?? IMAGE_FILES;
  $("drop-title").textContent = kind ? `Drop ${kind.files} here` : "Drop an image here";
  $("drop-formats").textContent = kind ? kind.accept.replaceAll(",", ", ") : "PNG, JPEG, WebP, GIF or BMP";
  $("posterior-title").textContent = tensors
    ? "The encoding: each latent channel's mean, as an image"
    : "The encoding q(z|x) = N(mean, variance)";
  $("posterior-legend").hidden = tensors;
  $("posterior-numbers").hidden = tensors;
  for (const id of ["score-mse-row", "score-psnr-row"]) $(id).hidden = Boolean(state.model.likelihood);
  for (const id of ["score-reconstruction-row", "score-elbo-row", "score-nll-row", "score-bpd-row"]) {
    $(id).hidden = !state.model.likelihood;
  }
}

// ---------------------------------------------------------------- sampling

const sampleRunner = latestOnly(120);

function requestSamples() {
  if (!state.model || !can("sample")) return;
  const form = $("sample-form");
  const errorNode = sectionError("sample");
  if (!form.checkValidity()) {
    const bad = [...form.elements].find((input) => input.validity && !input.validity.valid);
    showError(errorNode, `${bad.labels?.[0]?.textContent.trim() ?? bad.name}: ${bad.validationMessage}`);
    return;
  }
  const params = {
    model: state.model.name,
    n: Number($("n").value),
    seed: $("seed").value, // empty: the service draws a seed and returns it
    temperature: Number($("temperature").value),
    label: conditional() ? $("sample-label").value : "",
  };
  const generation = state.generation;
  if (media()) {
    sampleRunner(() => task("sample", $("sample-media"), generation, (stale) => drawMedia(params, stale)));
    return;
  }
  sampleRunner(() =>
    task("sample", $("sample-grid"), generation, async (stale) => {
      const answer = await api.sample(params);
      if (stale()) return;
      if (!params.seed) $("seed").value = answer.seed; // what the service drew, so it can be reused
      renderSamples(answer);
    }),
  );
}

/** A video or audio model's prior draw: latents of PRIOR_SIZE drawn in the page from N(0, t²·I)
 *  with the seed, decoded by the binary decode endpoint to one mp4 or WAV. */
async function drawMedia(params, stale) {
  const kind = media();
  const seed = params.seed || String(Math.floor(Math.random() * 2 ** 31));
  const [channels] = state.model.latent_shape;
  const details = state.model.details;
  const shape = details.media === "video"
    ? [1, channels, ...PRIOR_SIZE.video]
    : [1, channels, Math.ceil((details.sample_rate * PRIOR_SIZE.audioSeconds) / details.downsampling)];
  const z = normals(shape.reduce((a, b) => a * b, 1), seed, params.temperature);
  const src = await api.decodeTensor(params.model, shape, z, kind);
  if (stale()) {
    URL.revokeObjectURL(src);
    return;
  }
  $("seed").value = seed; // what was drawn, so it can be reused
  showMedia($("sample-media"), src, `A draw from ${params.model}'s prior, seed ${seed}`);
}

/** `count` draws of N(0, scale²) from `seed`, as little-endian float32 bytes (the binary
 *  endpoints' tensors): mulberry32 uniforms through Box-Muller, so a seed always gives one draw. */
function normals(count, seed, scale) {
  let a = Number(BigInt.asUintN(32, BigInt(seed)));
  const uniform = () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const bytes = new DataView(new ArrayBuffer(count * 4));
  for (let i = 0; i < count; i++) {
    const value = scale * Math.sqrt(-2 * Math.log(1 - uniform())) * Math.cos(2 * Math.PI * uniform());
    bytes.setFloat32(i * 4, value, true);
  }
  return bytes.buffer;
}

/** The file at `src` (an object URL) in `container` as a <video> (looped, muted) or <audio>
 *  with controls (`tag` "img": a GIF clip, which browsers play as an image), freeing the object
 *  URL it replaces. */
function showMedia(container, src, label, tag = media().tag) {
  const old = container.querySelector("video, audio, img");
  if (old?.src.startsWith("blob:")) URL.revokeObjectURL(old.src);
  const node = tag === "img"
    ? el("img", { src, alt: label, class: "px" })
    : el(tag, { src, controls: "", preload: "auto", "aria-label": label, title: label });
  if (node.tagName === "VIDEO") Object.assign(node, { loop: true, muted: true, playsInline: true });
  container.replaceChildren(node);
}

function renderSamples(answer) {
  const grid = $("sample-grid");
  const count = answer.images.length;
  for (const id of [...state.points.keys()]) if (id.startsWith("sample-")) state.points.delete(id);
  grid.style.setProperty("--columns", String(Math.ceil(Math.sqrt(count))));
  if (grid.children.length !== count) {
    grid.replaceChildren(
      ...answer.images.map((_, i) =>
        el("button", { type: "button", class: "tile", "data-index": String(i), "aria-pressed": "false", tabindex: -1 },
          el("img", { alt: "", width: "28", height: "28" }),
          el("span", { class: "caption", "aria-hidden": "true" })),
      ),
    );
  }
  answer.images.forEach((image, i) => {
    const label = answer.labels?.[i] ?? null;
    const name = `Sample ${i + 1}` + (label ? ` (${label})` : "");
    const tile = grid.children[i];
    const img = tile.querySelector("img");
    img.src = pngSrc(image);
    img.alt = name;
    tile.querySelector(".caption").textContent = label ?? "";
    tile.querySelector(".caption").hidden = !label;
    state.points.set(`sample-${i}`, { id: `sample-${i}`, name, src: img.src, latent: answer.latents[i], label });
  });
  state.sampleCount = count;
  selectSample(Math.min(state.selected, count - 1), false);
  refreshPickers();
  followPickers(true);
}

function selectSample(index, focus = true) {
  const tiles = [...$("sample-grid").children];
  if (!tiles.length) return;
  state.selected = Math.max(0, Math.min(index, tiles.length - 1));
  tiles.forEach((tile, i) => {
    tile.setAttribute("aria-pressed", String(i === state.selected));
    tile.tabIndex = i === state.selected ? 0 : -1;
  });
  if (focus) tiles[state.selected].focus();
}

function gridColumns(grid) {
  return getComputedStyle(grid).gridTemplateColumns.split(" ").filter(Boolean).length || 1;
}

function onGridKey(event) {
  const moves = {
    ArrowLeft: -1,
    ArrowRight: 1,
    ArrowUp: -gridColumns(event.currentTarget),
    ArrowDown: gridColumns(event.currentTarget),
    Home: -Infinity,
    End: Infinity,
  };
  if (!(event.key in moves)) return;
  event.preventDefault();
  const step = moves[event.key];
  const target = Number.isFinite(step) ? state.selected + step : step < 0 ? 0 : state.sampleCount - 1;
  selectSample(target);
}

// ---------------------------------------------------------------- encoding

const encodeRunner = latestOnly(0);

function exampleImage(example) {
  return { blob: null, example, name: `test image “${example.label}”` };
}

/** A test image's file, fetched once. */
async function exampleBlob(example) {
  if (!example.blob) {
    const response = await fetch(example.src);
    if (!response.ok) throw new ApiError(response.status, `cannot load the test image ${example.src}`);
    example.blob = await response.blob();
  }
  return example.blob;
}

/** Encode the test images once per model: they become starting points for Explore and
 *  Interpolate, and the spread of their means ranks the latent dimensions by how much the
 *  model uses them (a dimension the encoder ignores stays near 0 for every image). */
function encodeExamples(generation) {
  if (!state.examples.length) return;
  task("explore", null, generation, async (stale) => {
    const images = await Promise.all(state.examples.map(async (example) => readAsDataURL(await exampleBlob(example))));
    const answer = await api.encode({
      model: state.model.name,
      images,
      labels: labelsFor(...state.examples.map((example) => example.label)),
    });
    if (stale()) return;
    const means = answer.latents.map((posterior) => posterior.mean);
    const spread = means[0].map((_, d) => {
      const values = means.map((mean) => mean[d]);
      const average = values.reduce((a, b) => a + b, 0) / values.length;
      return values.reduce((a, b) => a + (b - average) ** 2, 0) / values.length;
    });
    state.order = spread.map((_, d) => d).sort((a, b) => spread[b] - spread[a]);
    state.examples.forEach((example, i) => {
      const id = `example-${example.file}`;
      state.points.set(id, {
        id,
        name: `Test image: ${example.label}`,
        src: example.src,
        latent: means[i],
        label: conditional() ? example.label : null,
      });
    });
    buildSliders();
    refreshPickers();
    followPickers();
  });
}

function encodeImage(image) {
  if (!state.model) return;
  state.current = image;
  for (const button of $("examples").children) {
    button.setAttribute("aria-pressed", String(button.dataset.file === image.example?.file));
  }
  const generation = state.generation;
  const label = conditional() ? $("encode-label").value : null;
  encodeRunner(() =>
    task("encode", $("encode-figures"), generation, async (stale) => {
      $("encode-status").textContent = `Encoding ${image.name}…`;
      const blob = image.blob ?? (await exampleBlob(image.example));
      const dataURL = await readAsDataURL(blob);
      const [height, width] = state.model.image_shape.slice(1);
      const tensors = tensorModel();
      let view = null;
      try {
        view = tensors ? await fittedView(blob, state.model.image_multiple) : await modelView(blob, width, height);
      } catch {
        // The browser cannot draw this file; the service will say whether it can read it.
      }
      $("encode-view-caption").textContent = tensors
        ? `As sent to the model: ${view ? `${view.size.width}×${view.size.height}` : "?"} RGB, sides a multiple of ` +
          `${state.model.image_multiple}`
        : `As the model sees it: ${width}×${height} grey (preview drawn by your browser)`;
      const original = $("encode-original");
      original.classList.toggle("px", Boolean(view && view.size.width <= 2 * width));
      if (view) original.src = dataURL;
      else original.removeAttribute("src");
      original.alt = `${image.name}, as given`;
      if (view) $("encode-view").src = view.src;
      else $("encode-view").removeAttribute("src");
      $("encode-view").alt = `${image.name}, as the model sees it`;

      // The service reads base64 images (a data: URL is fine) or multipart uploads; one JSON
      // body serves all three calls. Conditional models need the image's class.
      // A model of any size gets the fitted image itself: it does no fitting of its own.
      const sent = tensors && view ? view.src : dataURL;
      const body = { model: state.model.name, images: [sent], labels: labelsFor(label) };
      let reconstruction, encoding, scores;
      try {
        [reconstruction, encoding, scores] = await Promise.all([
          api.reconstruct(body),
          api.encode(body),
          api.score(body),
        ]);
      } catch (error) {
        if (!stale()) clearEncodeResults(); // never show the previous image's results under this one
        throw error;
      }
      if (stale()) return;
      $("encode-reconstruction").src = pngSrc(reconstruction.images[0]);
      $("encode-reconstruction").alt = `The model's reconstruction of ${image.name}`;
      const posterior = encoding.latents[0];
      if (tensors) renderChannels(posterior);
      else renderPosterior(posterior);
      renderScores(scores.scores[0]);
      state.points.set("encoded", {
        id: "encoded",
        name: `Encoded: ${image.name}`,
        src: view?.src ?? $("encode-reconstruction").src,
        latent: posterior.mean,
        label,
      });
      for (const id of ["encode-explore", "encode-a", "encode-b"]) $(id).disabled = tensors;
      refreshPickers();
      followPickers();
      const size = view ? ` (${view.size.width}×${view.size.height} pixels)` : "";
      $("encode-status").textContent = `Encoded ${image.name}${size}.`;
      if (!tensors) { // no Explore or Interpolate for these (showSections), whichever point the pickers name
        if (state.explore.id === "encoded") startExplore("encoded");
        if ($("interp-a").value === "encoded" || $("interp-b").value === "encoded") requestInterpolation();
      }
    }).finally(() => {
      if ($("encode-status").textContent.startsWith("Encoding")) $("encode-status").textContent = "";
    }),
  );
}

function encodeFile(file) {
  if (!file) return;
  $("file").value = "";
  if (media()) encodeMedia(file);
  else encodeImage({ blob: file, example: null, name: file.name ? `“${file.name}”` : "your image" });
}

/** A video or audio model's upload: shown as given, reconstructed (an mp4 or WAV) and scored,
 *  both sent as multipart uploads. */
function encodeMedia(file) {
  const generation = state.generation;
  const name = file.name ? `“${file.name}”` : "your file";
  const form = () => {
    const data = new FormData();
    data.append("model", state.model.name);
    data.append("files", file, file.name || "upload");
    return data;
  };
  encodeRunner(() =>
    task("encode", $("encode-media"), generation, async (stale) => {
      $("encode-status").textContent = `Encoding ${name}…`;
      const tag = file.type === "image/gif" ? "img" : media().tag;
      showMedia($("encode-original-media"), URL.createObjectURL(file), `${name}, as given`, tag);
      let reconstruction, scores;
      try {
        [reconstruction, scores] = await Promise.all([api.reconstructFile(form(), media()), api.scoreFile(form())]);
      } catch (error) {
        if (!stale()) clearEncodeResults();
        throw error;
      }
      if (stale()) {
        URL.revokeObjectURL(reconstruction);
        return;
      }
      showMedia($("encode-reconstruction-media"), reconstruction, `The model's reconstruction of ${name}`);
      renderScores(scores.scores[0]);
      $("encode-status").textContent = `Encoded ${name}.`;
    }).finally(() => {
      if ($("encode-status").textContent.startsWith("Encoding")) $("encode-status").textContent = "";
    }),
  );
}

function clearEncodeResults() {
  $("encode-reconstruction").removeAttribute("src");
  $("encode-reconstruction-media").replaceChildren();
  $("posterior-chart").replaceChildren();
  $("posterior-table").replaceChildren();
  for (const id of SCORES) $(id).textContent = "–";
  $("score-k").textContent = "";
  $("encode-status").textContent = "";
  state.points.delete("encoded");
  for (const id of ["encode-explore", "encode-a", "encode-b"]) $(id).disabled = true;
  refreshPickers();
  followPickers();
}

function renderPosterior({ mean, variance }) {
  const d = mean.length;
  const left = 30;
  const width = 640;
  const barWidth = width / d;
  const meanHeight = 100;
  const varianceTop = meanHeight + 16;
  const varianceHeight = 56;
  const varianceMax = 1.5;
  const mid = meanHeight / 2;
  const varianceBottom = varianceTop + varianceHeight;
  const bars = [];
  for (let i = 0; i < d; i++) {
    const x = left + i * barWidth + barWidth * 0.1;
    const w = barWidth * 0.8;
    const m = Math.max(-3, Math.min(3, mean[i]));
    const h = (Math.abs(m) / 3) * mid;
    const v = Math.min(varianceMax, variance[i]);
    const vh = (v / varianceMax) * varianceHeight;
    const tip = `z${i}: mean ${format(mean[i], 3)}, variance ${format(variance[i], 3)}`;
    bars.push(
      svg("rect", { class: "mean", x, y: m >= 0 ? mid - h : mid, width: w, height: Math.max(h, 0.5) },
        svg("title", {}, tip)),
      svg("rect", { class: "variance", x, y: varianceBottom - vh, width: w, height: Math.max(vh, 0.5) },
        svg("title", {}, tip)),
    );
  }
  const priorY = varianceBottom - (1 / varianceMax) * varianceHeight;
  const used = variance.filter((v) => v < 0.5).length;
  const lo = Math.min(...mean);
  const hi = Math.max(...mean);
  const chart = svg("svg", {
    viewBox: `0 0 ${left + width} ${varianceBottom + 4}`,
    role: "img",
    "aria-label": `Bar chart of the encoding's ${d} dimensions: means from ${format(lo, 2)} to ${format(hi, 2)}; ` +
      `${used} dimensions have variance below 0.5 (the ones the model uses for this image), ` +
      "the rest stay near the prior's 1.",
  },
  svg("line", { class: "axis", x1: left, x2: left + width, y1: mid, y2: mid }),
  svg("text", { x: 0, y: 10 }, "+3"),
  svg("text", { x: 0, y: mid + 4 }, "0"),
  svg("text", { x: 0, y: meanHeight }, "−3"),
  svg("line", { class: "axis", x1: left, x2: left + width, y1: varianceBottom, y2: varianceBottom }),
  svg("line", { class: "prior", x1: left, x2: left + width, y1: priorY, y2: priorY }),
  svg("text", { x: 0, y: priorY + 4 }, "1"),
  svg("text", { x: 0, y: varianceBottom }, "0"),
  ...bars);
  $("posterior-chart").replaceChildren(chart);

  const column = (text) => el("th", { scope: "col", text });
  const row = (m, i) =>
    el("tr", {}, el("th", { scope: "row", text: `z${i}` }), el("td", { text: format(m, 3) }),
      el("td", { text: format(variance[i], 3) }));
  $("posterior-table").replaceChildren(
    el("thead", {}, el("tr", {}, column("dimension"), column("mean"), column("variance"))),
    el("tbody", {}, ...mean.map(row)),
  );
}

const SCORES = ["score-reconstruction", "score-kl", "score-elbo", "score-nll", "score-bpd", "score-mse", "score-psnr"];

/** The scores the model defines; the others stay "–" (a model without a likelihood has no
 *  nats, ELBO or NLL, a deterministic encoder no KL: the service leaves them out). */
function renderScores(score) {
  const show = (id, value, digits = 1) => {
    $(id).textContent = value === undefined ? "–" : format(value, digits);
  };
  show("score-reconstruction", score.reconstruction_nats);
  show("score-kl", score.kl_nats);
  show("score-elbo", score.elbo_nats);
  show("score-nll", score.nll_nats);
  $("score-k").textContent = score.k ? `(k = ${score.k})` : "";
  show("score-bpd", score.bits_per_dim, 4);
  show("score-mse", score.mse, 5);
  show("score-psnr", score.psnr_db, 2);
}

/** A [C][h][w] encoding as C grey images, one per latent channel, each stretched from its own
 *  minimum (black) to maximum (white); and, for a Gaussian posterior, the mean variance. */
function renderChannels({ mean, variance }) {
  const figures = mean.map((channel, c) => {
    const values = channel.flat();
    const lo = Math.min(...values);
    const hi = Math.max(...values);
    const canvas = el("canvas", { width: channel[0].length, height: channel.length });
    const context = canvas.getContext("2d");
    const pixels = context.createImageData(canvas.width, canvas.height);
    values.forEach((value, i) => {
      const grey = hi > lo ? Math.round(((value - lo) / (hi - lo)) * 255) : 128;
      pixels.data.set([grey, grey, grey, 255], i * 4);
    });
    context.putImageData(pixels, 0, 0);
    const meanVariance = variance ? variance[c].flat().reduce((a, b) => a + b, 0) / values.length : null;
    const spread = variance ? `, mean variance ${format(meanVariance, 3)}` : "";
    const caption = `channel ${c}: ${format(lo, 2)} to ${format(hi, 2)}${spread}`;
    const image = el("img", { src: canvas.toDataURL("image/png"), class: "px", alt: `Latent ${caption}` });
    return el("figure", { class: "channel" }, image, el("figcaption", { text: caption }));
  });
  $("posterior-chart").replaceChildren(el("div", { class: "channels" }, ...figures));
  $("posterior-table").replaceChildren();
}

// ---------------------------------------------------------------- pickers shared by Explore and Interpolate

/** Fill the Explore and Interpolate pickers with the current points. A picker shows the
 *  user's choice while that point exists, else its default (the first two samples). */
function refreshPickers() {
  const groups = [
    ["Samples", [...state.points.values()].filter((p) => p.id.startsWith("sample-"))],
    ["Encoded image", state.points.has("encoded") ? [state.points.get("encoded")] : []],
    ["Test images", [...state.points.values()].filter((p) => p.id.startsWith("example-"))],
  ];
  const defaults = { "explore-from": "sample-0", "interp-a": "sample-0", "interp-b": "sample-1" };
  for (const [id, fallback] of Object.entries(defaults)) {
    const select = $(id);
    select.replaceChildren(
      ...groups
        .filter(([, points]) => points.length)
        .map(([name, points]) =>
          el("optgroup", { label: name }, ...points.map((p) => el("option", { value: p.id, text: p.name })))),
    );
    const has = (value) => state.points.has(value);
    const wanted = state.chosen[id];
    select.value = has(wanted) ? wanted : has(fallback) ? fallback : select.options[0]?.value ?? "";
  }
  for (const end of ["a", "b"]) {
    const point = state.points.get($(`interp-${end}`).value);
    const img = $(`interp-${end}-image`);
    if (point) {
      img.src = point.src;
      img.alt = point.name;
    }
  }
}

/** Restart Explore and Interpolate where the pickers now name other points, or, after new
 *  samples, where they start from a sample (whose latent just changed). */
function followPickers(samplesChanged = false) {
  if (tensorModel()) return; // no Explore or Interpolate for these (showSections)
  const fromSample = (id) => id.startsWith("sample-");
  const from = $("explore-from").value;
  if (from && (from !== state.explore.id || (samplesChanged && fromSample(from)))) startExplore(from);
  const ends = [$("interp-a").value, $("interp-b").value];
  if (ends.every(Boolean) && (ends.join("|") !== state.interpolated || (samplesChanged && ends.some(fromSample)))) {
    requestInterpolation();
  }
}

function choose(selectId, pointId) {
  $(selectId).value = pointId;
  $(selectId).dispatchEvent(new Event("change"));
}

function goTo(sectionId, focusId) {
  $(sectionId).scrollIntoView({ behavior: "smooth", block: "start" });
  $(focusId).focus({ preventScroll: true });
}

// ---------------------------------------------------------------- explore

const exploreRunner = latestOnly(40);

function buildSliders() {
  const container = $("sliders");
  if (tensorModel()) {
    container.replaceChildren();
    return;
  }
  const dims = state.model.latent_dim;
  const order = state.order ?? [...Array(dims).keys()];
  container.dataset.order = state.order ? "activity" : "index";
  container.replaceChildren(
    ...order.map((dim, rank) => {
      const input = el("input", {
        type: "range",
        id: `z-${dim}`,
        min: -SLIDER_LIMIT,
        max: SLIDER_LIMIT,
        step: "0.05",
        value: "0",
        "data-dim": String(dim),
      });
      const output = el("output", { for: `z-${dim}`, text: "0.00" });
      input.addEventListener("input", () => {
        if (!state.explore.values) return;
        state.explore.values[dim] = Number(input.value);
        output.textContent = format(Number(input.value), 2);
        requestDecode();
      });
      return el("div", { class: rank < VISIBLE_DIMS ? "slider" : "slider extra" },
        el("label", { for: `z-${dim}`, text: `z${dim}` }), input, output);
    }),
  );
  syncSliders();
}

function syncSliders() {
  const values = state.explore.values;
  for (const input of $("sliders").querySelectorAll("input")) {
    const value = values ? values[Number(input.dataset.dim)] : 0;
    input.value = String(Math.max(-SLIDER_LIMIT, Math.min(SLIDER_LIMIT, value)));
    input.nextElementSibling.textContent = format(value, 2);
  }
}

function startExplore(id) {
  const point = state.points.get(id);
  if (!point) return;
  state.explore = { id, base: point.latent.slice(), values: point.latent.slice(), label: point.label };
  if (conditional() && point.label) $("explore-label").value = point.label;
  syncSliders();
  requestDecode();
}

function requestDecode() {
  const explore = state.explore;
  if (!explore.values) return;
  const generation = state.generation;
  exploreRunner(() =>
    task("explore", $("explore-image"), generation, async (stale) => {
      const latent = explore.values.slice(); // the newest positions, read when the request goes out
      const label = conditional() ? $("explore-label").value : null;
      const answer = await api.decode({ model: state.model.name, latents: [latent], labels: labelsFor(label) });
      if (stale() || explore !== state.explore) return;
      $("explore-image").src = pngSrc(answer.images[0]);
      const moved = latent.filter((value, d) => Math.abs(value - explore.base[d]) > 1e-9).length;
      const name = state.points.get(explore.id)?.name ?? "the start";
      $("explore-status").textContent = moved
        ? `${name}, ${moved} ${moved === 1 ? "dimension" : "dimensions"} moved`
        : name;
      $("explore-image").alt = `Decoded image: ${$("explore-status").textContent}`;
    }),
  );
}

// ---------------------------------------------------------------- interpolate

const interpolateRunner = latestOnly(80);

function requestInterpolation() {
  if (!state.model) return;
  const steps = $("steps");
  if (!steps.checkValidity()) {
    showError(sectionError("interpolate"), `Steps: ${steps.validationMessage}`);
    return;
  }
  const generation = state.generation;
  state.interpolated = `${$("interp-a").value}|${$("interp-b").value}`;
  interpolateRunner(() =>
    task("interpolate", $("path"), generation, async (stale) => {
      const a = state.points.get($("interp-a").value);
      const b = state.points.get($("interp-b").value);
      if (!a || !b) return;
      const answer = await api.interpolate({
        model: state.model.name,
        latents: [a.latent, b.latent],
        labels: labelsFor(a.label, b.label),
        steps: Number(steps.value),
        method: $("method").value,
      });
      if (stale()) return;
      const last = answer.images.length - 1;
      $("path").replaceChildren(
        ...answer.images.map((image, i) => {
          const t = last ? i / last : 0;
          const label = answer.labels ? ` (${answer.labels[i]})` : "";
          const alt = `Step ${i + 1} of ${last + 1}, t = ${format(t, 2)}${label}`;
          return el("figure", {},
            el("img", { src: pngSrc(image), alt, width: "28", height: "28" }),
            el("figcaption", { text: `t=${format(t, 2)}` }));
        }),
      );
    }),
  );
}

// ---------------------------------------------------------------- wiring

function debounce(fn, ms) {
  let timer = 0;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}

function bindControls() {
  $("model").addEventListener("change", (event) => useModel(event.target.value));

  // Sampling
  $("sample-form").addEventListener("submit", (event) => {
    event.preventDefault();
    requestSamples();
  });
  $("new-seed").addEventListener("click", () => {
    $("seed").value = ""; // no seed: the service draws one and returns it
    requestSamples();
  });
  const typed = debounce(requestSamples, 350);
  $("n").addEventListener("input", typed);
  $("seed").addEventListener("input", typed);
  $("temperature").addEventListener("input", () => {
    $("temperature-out").textContent = format(Number($("temperature").value), 2);
    requestSamples();
  });
  $("sample-label").addEventListener("change", requestSamples);
  const grid = $("sample-grid");
  grid.addEventListener("click", (event) => {
    const tile = event.target.closest(".tile");
    if (tile) selectSample(Number(tile.dataset.index));
  });
  grid.addEventListener("keydown", onGridKey);
  $("sample-explore").addEventListener("click", () => {
    choose("explore-from", `sample-${state.selected}`);
    goTo("explore", "explore-from");
  });
  $("sample-a").addEventListener("click", () => {
    choose("interp-a", `sample-${state.selected}`);
    goTo("interpolate", "interp-a");
  });
  $("sample-b").addEventListener("click", () => {
    choose("interp-b", `sample-${state.selected}`);
    goTo("interpolate", "interp-b");
  });

  // Encoding: file picker, drag and drop, paste, test images
  $("file").addEventListener("change", (event) => encodeFile(event.target.files[0]));
  const drop = $("drop");
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (event) => {
      event.preventDefault();
      drop.classList.add("dragging");
    });
  }
  for (const type of ["dragleave", "drop"]) drop.addEventListener(type, () => drop.classList.remove("dragging"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    encodeFile(event.dataTransfer.files[0]);
  });
  // A file dropped next to the drop zone must not navigate away from the page.
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());
  document.addEventListener("paste", (event) => {
    const file = [...(event.clipboardData?.files ?? [])].find((f) => f.type.startsWith("image/"));
    if (file) {
      event.preventDefault();
      encodeFile(file);
    }
  });
  $("encode-label").addEventListener("change", () => {
    if (state.current) encodeImage(state.current);
  });
  $("encode-explore").addEventListener("click", () => {
    choose("explore-from", "encoded");
    goTo("explore", "explore-from");
  });
  $("encode-a").addEventListener("click", () => {
    choose("interp-a", "encoded");
    goTo("interpolate", "interp-a");
  });
  $("encode-b").addEventListener("click", () => {
    choose("interp-b", "encoded");
    goTo("interpolate", "interp-b");
  });

  // Exploring
  $("explore-from").addEventListener("change", (event) => {
    state.chosen["explore-from"] = event.target.value;
    startExplore(event.target.value);
  });
  $("explore-label").addEventListener("change", requestDecode);
  $("explore-reset").addEventListener("click", () => startExplore(state.explore.id ?? $("explore-from").value));
  $("explore-all").addEventListener("change", (event) => {
    $("sliders").classList.toggle("show-all", event.target.checked);
  });

  // Interpolating
  for (const id of ["interp-a", "interp-b"]) {
    $(id).addEventListener("change", () => {
      state.chosen[id] = $(id).value;
      refreshPickers();
      requestInterpolation();
    });
  }
  $("steps").max = String(MAX_STEPS);
  $("steps").addEventListener("input", debounce(requestInterpolation, 250));
  $("method").addEventListener("change", requestInterpolation);
}

function renderExamples() {
  $("examples").replaceChildren(
    ...state.examples.map((example) => {
      const attributes = { type: "button", "data-file": example.file, "aria-pressed": "false", title: example.label };
      const button = el("button", attributes,
        el("img", { src: example.src, alt: example.label, width: "28", height: "28" }));
      button.addEventListener("click", () => {
        if (conditional()) $("encode-label").value = example.label;
        encodeImage(exampleImage(example));
      });
      return button;
    }),
  );
}

async function main() {
  bindControls();
  try {
    const [list, examples] = await Promise.all([
      loadModels(),
      request("examples/index.json").catch((error) => {
        showError(sectionError("encode"), `The test images could not be listed: ${describe(error)}`);
        return { examples: [] };
      }),
    ]);
    state.examples = examples.examples.map((example) => ({ ...example, src: `examples/${example.file}` }));
    renderExamples();
    state.models = list.models;
    const select = $("model");
    select.replaceChildren(
      ...list.models.map((model) =>
        el("option", { value: model.name, text: model.name + (model.conditional ? " (conditional)" : "") })),
    );
    select.value = list.default_model;
    select.disabled = false;
    useModel(list.default_model);
  } catch (error) {
    $("model-summary").textContent = "No models: the page cannot work without them.";
    showError($("global-error"), error);
  }
}

main();
