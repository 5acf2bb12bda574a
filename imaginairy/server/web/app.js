// The imaginairy web page: a form for /v1/jobs, live progress over Server-Sent Events, the gallery of the output
// folder, and the settings of a dropped PNG (read by /sdapi/v1/png-info). Plain JS, no build step.
"use strict";

const $ = (id) => document.getElementById(id);
const PER_PAGE = 12;
const FIELDS = ["prompt", "negative_prompt", "model", "sampler_type", "steps", "prompt_strength", "width", "height",
  "seed", "init_image_strength", "mask_prompt"];
const A1111_FIELDS = { "Prompt": "prompt", "Negative prompt": "negative_prompt", "Steps": "steps",
  "CFG scale": "prompt_strength", "Seed": "seed", "Size-1": "width", "Size-2": "height" };
let samplerByA1111Name = {};
let currentJob = null, lastSeed = null, page = 0, shownSettings = null;
let initImage = null, maskPainted = false;

async function api(path, options = {}) {
  const answer = await fetch(path, { headers: { "Content-Type": "application/json" }, ...options });
  const body = answer.headers.get("content-type")?.includes("json") ? await answer.json() : null;
  if (!answer.ok) throw new Error((body && (typeof body.detail === "string" ? body.detail : JSON.stringify(body)))
    || `${answer.status} ${answer.statusText}`);
  return body;
}

function status(text) { $("status").textContent = text; }

async function loadChoices() {
  const [models, samplers, options] = await Promise.all(
    [api("/sdapi/v1/sd-models"), api("/sdapi/v1/samplers"), api("/sdapi/v1/options")]);
  $("model").replaceChildren(...models.map((m) => new Option(m.title, m.title)));
  $("model").value = options.sd_model_checkpoint;
  $("sampler_type").replaceChildren(...samplers.map((s) => new Option(s.name, s.aliases[0])));
  samplerByA1111Name = Object.fromEntries(samplers.map((s) => [s.name, s.aliases[0]]));
  $("sampler_type").value = "k_dpmpp_2m";
}

function toBase64(blob) {
  return new Promise((resolve) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result.split(",")[1]);
    reader.readAsDataURL(blob);
  });
}

function jobRequest() {
  const body = {};
  for (const field of ["prompt", "negative_prompt", "model", "sampler_type", "mask_prompt"]) {
    if ($(field).value) body[field] = $(field).value;
  }
  for (const field of ["steps", "prompt_strength", "width", "height", "seed"]) {
    if ($(field).value !== "") body[field] = Number($(field).value);
  }
  if ($("fix_faces").checked) body.fix_faces = true;
  if ($("upscale").checked) body.upscale = true;
  return body;
}

async function generate(event) {
  event.preventDefault();
  const body = jobRequest();
  if (initImage) {
    body.init_image = initImage;
    body.init_image_strength = Number($("init_image_strength").value);
    if (maskPainted) {
      body.mask_image = await toBase64(await new Promise((r) => maskCanvas().toBlob(r, "image/png")));
      body.mask_mode = "replace";
    }
  }
  try {
    currentJob = await api("/v1/jobs", { method: "POST", body: JSON.stringify(body) });
  } catch (error) { status(error.message); return; }
  lastSeed = currentJob.seeds[0];
  $("generate").disabled = true; $("stop").disabled = false;
  $("progress").value = 0; status("queued");
  const events = new EventSource(`/v1/jobs/${currentJob.id}/events`);
  events.addEventListener("progress", (e) => {
    const data = JSON.parse(e.data);
    $("progress").value = data.progress;
    status(`${data.state}: step ${data.step}${data.total ? " of " + data.total : ""}`);
    if (data.preview) { $("preview").src = "data:image/png;base64," + data.preview; $("preview").hidden = false; }
  });
  events.addEventListener("image", (e) => { $("preview").src = JSON.parse(e.data).url; loadGallery(0); });
  for (const end of ["done", "failed", "cancelled"]) {
    events.addEventListener(end, (e) => {
      const data = JSON.parse(e.data);
      events.close();
      status(data.error ? `${end}: ${data.error}` : end);
      $("generate").disabled = false; $("stop").disabled = true; currentJob = null;
    });
  }
}

async function stop() {
  if (currentJob) await api(`/v1/jobs/${currentJob.id}`, { method: "DELETE" });
}

async function loadGallery(toPage = page) {
  const listed = await api(`/v1/gallery?page=${toPage}&per_page=${PER_PAGE}`);
  page = toPage;
  $("gallery").replaceChildren(...listed.items.map((item) => {
    const img = new Image();
    img.src = item.url; img.alt = item.name; img.title = item.parameters || item.name; img.loading = "lazy";
    img.addEventListener("click", () => showDetails(item.url, item.settings, item.parameters));
    return img;
  }));
  const pages = Math.max(1, Math.ceil(listed.total / PER_PAGE));
  $("page").textContent = `page ${page + 1} of ${pages}`;
  $("newer").disabled = page === 0; $("older").disabled = page + 1 >= pages;
}

function showDetails(url, settings, parameters) {
  $("details-image").src = url || "";
  $("details-image").hidden = !url;
  $("details-text").textContent = parameters || JSON.stringify(settings, null, 2) || "(no settings in this image)";
  shownSettings = settings ? fromOurSettings(settings) : parameters ? fromA1111(parameters) : null;
  $("use-settings").disabled = !shownSettings;
  $("details").showModal();
}

function fromOurSettings(s) {
  const text = (prompts) => (prompts || []).map((p) => p.text).join(" AND ");
  return { prompt: text(s.prompt), negative_prompt: text(s.negative_prompt), model: s.model,
    sampler_type: s.sampler_type, steps: s.steps, prompt_strength: s.prompt_strength, width: s.width,
    height: s.height, seed: s.seed, mask_prompt: s.mask_prompt || "", fix_faces: s.fix_faces, upscale: s.upscale };
}

function fromA1111(parsed) {
  const settings = {};
  for (const [key, field] of Object.entries(A1111_FIELDS)) if (parsed[key] !== undefined) settings[field] = parsed[key];
  if (parsed.Sampler && samplerByA1111Name[parsed.Sampler]) settings.sampler_type = samplerByA1111Name[parsed.Sampler];
  if (parsed.Model) settings.model = parsed.Model;
  return settings;
}

function useSettings(settings) {
  for (const field of FIELDS) {
    if (settings[field] === undefined || settings[field] === null) continue;
    if (field === "model" && ![...$("model").options].some((o) => o.value === settings.model)) continue;
    $(field).value = settings[field];
  }
  $("fix_faces").checked = !!settings.fix_faces;
  $("upscale").checked = !!settings.upscale;
  status("settings applied");
}

async function readDroppedPng(file) {
  const info = await api("/sdapi/v1/png-info", { method: "POST", body: JSON.stringify({ image: await toBase64(file) }) });
  const ours = info.items && info.items.imaginairy ? JSON.parse(info.items.imaginairy) : null;
  const settings = ours ? fromOurSettings(ours) : fromA1111(info.parameters || {});
  if (!Object.keys(settings).length) { status("no settings found in that image"); return; }
  useSettings(settings);
  showDetails(URL.createObjectURL(file), ours, info.info);
}

function maskCanvas() { return $("mask-canvas"); }

function loadInitImage(file) {
  const url = URL.createObjectURL(file);
  $("init-preview").onload = () => {
    const canvas = maskCanvas();
    canvas.width = $("init-preview").naturalWidth; canvas.height = $("init-preview").naturalHeight;
    clearMask();
    $("mask-area").hidden = false;
  };
  $("init-preview").src = url;
  toBase64(file).then((data) => { initImage = data; });
}

function clearMask() {
  const canvas = maskCanvas(), context = canvas.getContext("2d");
  context.fillStyle = "black"; context.fillRect(0, 0, canvas.width, canvas.height);
  maskPainted = false;
}

function paintMask() {
  const canvas = maskCanvas();
  let painting = false;
  const paint = (e) => {
    if (!painting) return;
    const box = canvas.getBoundingClientRect();
    const x = (e.clientX - box.left) * canvas.width / box.width, y = (e.clientY - box.top) * canvas.height / box.height;
    const context = canvas.getContext("2d");
    context.fillStyle = "white"; context.beginPath();
    context.arc(x, y, Math.max(canvas.width, canvas.height) / 20, 0, 2 * Math.PI); context.fill();
    maskPainted = true;
  };
  canvas.addEventListener("pointerdown", (e) => { painting = true; paint(e); });
  canvas.addEventListener("pointermove", paint);
  window.addEventListener("pointerup", () => { painting = false; });
}

function setUp() {
  $("form").addEventListener("submit", generate);
  $("stop").addEventListener("click", stop);
  $("reuse-seed").addEventListener("click", () => { if (lastSeed !== null) $("seed").value = lastSeed; });
  $("newer").addEventListener("click", () => loadGallery(page - 1));
  $("older").addEventListener("click", () => loadGallery(page + 1));
  $("close-details").addEventListener("click", () => $("details").close());
  $("use-settings").addEventListener("click", () => { useSettings(shownSettings); $("details").close(); });
  $("init_image").addEventListener("change", (e) => { if (e.target.files[0]) loadInitImage(e.target.files[0]); });
  $("clear-mask").addEventListener("click", clearMask);
  paintMask();
  document.addEventListener("dragover", (e) => { e.preventDefault(); document.body.classList.add("dragging"); });
  document.addEventListener("dragleave", () => document.body.classList.remove("dragging"));
  document.addEventListener("drop", (e) => {
    e.preventDefault(); document.body.classList.remove("dragging");
    const file = e.dataTransfer.files[0];
    if (file) readDroppedPng(file).catch((error) => status(error.message));
  });
  loadChoices().then(() => loadGallery(0)).catch((error) => status(error.message));
}

setUp();
