// app.js: the example page's logic: camera → RTCPeerConnection → Scope (signaled over scope-router's WebSocket) → returned video;
// and "Upload a file": POST /api/v1/assets?filename=<name> through the socket (chunked and resumable when large),
// with a progress bar, the percentage acknowledged and the speed in MB/s.
//
// Query parameters:
//   ?ws=ws://host:port/ws   router WebSocket (default: this page's host, path /ws)
//   ?token=...              sent as fal_jwt_token
//   ?pipeline=passthrough   pipeline loaded before streaming if none is (default passthrough); the offer names
//                           the loaded one in initialParameters.pipeline_ids, as the Scope frontend does
//   ?ice=none               ignore the backend's ICE servers (host candidates only; for local tests)
//   ?frame_timeout=10       seconds the connected stream may go without a first video frame before the
//                           page says so (default 10)

import { ScopeClient, Status, sha256Hex } from "./scope-client.js";

const params = new URLSearchParams(location.search);
const wsUrl = params.get("ws") || defaultWsUrl();
const token = params.get("token") || null;
const pipelineId = params.get("pipeline") || "passthrough";
const useBackendIce = params.get("ice") !== "none";
const frameTimeoutS = positiveNumber(params.get("frame_timeout"), 10);

const $ = (id) => document.getElementById(id);
const ui = {
  start: $("start"),
  stop: $("stop"),
  wsStatus: $("ws-status"),
  pcStatus: $("pc-status"),
  error: $("error"),
  info: $("info"),
  local: $("local"),
  remote: $("remote"),
  logs: $("logs"),
  uploadFile: $("upload-file"),
  uploadStart: $("upload-start"),
  uploadProgress: $("upload-progress"),
  uploadStats: $("upload-stats"),
  uploadResult: $("upload-result"),
};

const MAX_LOG_LINES = 500;
const PIPELINE_LOAD_TIMEOUT_MS = 120_000;
/** How often the first-frame watch polls the video element and the inbound RTP stats. */
const FRAME_POLL_MS = 500;

/** The current stream, if any. */
let stream = null;
/** True while the page's upload runs. */
let uploading = false;

const client = new ScopeClient(wsUrl, {
  token,
  onStatus: ({ status, connectionId, error }) => {
    setBadge(ui.wsStatus, status);
    if (status === Status.OPEN) {
      ui.info.textContent = `Connected to ${redact(wsUrl)} as ${connectionId}`;
      showError("");
    } else if (error) {
      ui.info.textContent = `Socket ${status}: ${error}`;
    }
    if (status !== Status.OPEN && stream) {
      // The router closes this connection's sessions when the socket drops.
      stopStream(`Connection lost (${status}); the stream was closed by the router.`);
    }
    updateButtons();
  },
  onLogs: (lines) => appendLogs(lines),
  onError: (message) => showError(message),
});

// Exposed for tests and for poking around in the console.
window.scopeDemo = {
  client,
  ScopeClient,
  sha256Hex,
  get pc() {
    return stream?.pc ?? null;
  },
  get sessionId() {
    return stream?.sessionId ?? null;
  },
  /** The current stream's offer `initialParameters` (with `pipeline_ids`), or null. */
  get initialParameters() {
    return stream?.initialParameters ?? null;
  },
  /** How the current stream's first video frame was noticed ("requestVideoFrameCallback", …), or null. */
  get firstFrame() {
    return stream?.firstFrame ?? null;
  },
  inboundVideoStats,
};

ui.start.addEventListener("click", () => {
  startStream().catch((e) => {
    stopStream();
    showError(`Start failed: ${e.message ?? e}`);
  });
});
ui.stop.addEventListener("click", () => stopStream());
ui.uploadFile.addEventListener("change", () => updateButtons());
ui.uploadStart.addEventListener("click", () => uploadSelectedFile());
// Closing the page closes the socket; the router then DELETEs our sessions.
window.addEventListener("pagehide", () => {
  stopStream();
  client.close(1000, "page closed");
});

client.connect().catch((e) => showError(`${e.message ?? e}`));

async function startStream() {
  showError("");
  if (stream) return;
  const s = {
    pc: null,
    media: null,
    sessionId: null,
    queued: [],
    stopped: false,
    initialParameters: null,
    firstFrame: null,
    watch: null,
  };
  stream = s;
  updateButtons();
  setBadge(ui.pcStatus, "loading");

  await client.connect();
  const pipeline = await ensurePipelineLoaded(s);
  if (s.stopped || !pipeline) return;

  ui.info.textContent = "Opening the camera…";
  s.media = await navigator.mediaDevices.getUserMedia({
    video: { width: { ideal: 640 }, height: { ideal: 480 } },
    audio: false,
  });
  if (s.stopped) return releaseMedia(s);
  ui.local.srcObject = s.media;

  const { iceServers = [] } = (await client.getIceServers()) ?? {};
  const pc = new RTCPeerConnection({ iceServers: useBackendIce ? iceServers : [] });
  s.pc = pc;
  for (const track of s.media.getTracks()) pc.addTrack(track, s.media);

  pc.ontrack = (event) => {
    if (event.track.kind !== "video") return;
    ui.remote.srcObject = event.streams[0] ?? new MediaStream([event.track]);
  };
  pc.onconnectionstatechange = () => {
    if (s.stopped) return;
    const state = pc.connectionState;
    // Once the wait for a first frame has timed out, the badge keeps saying so while connected.
    if (!(state === "connected" && s.watch?.timedOut)) setBadge(ui.pcStatus, state);
    if (state === "connected") {
      // Connected is not streaming: real Scope connects even when its pipeline never starts.
      if (s.firstFrame) ui.info.textContent = `Streaming (session ${s.sessionId})`;
      else if (!s.watch?.timedOut) ui.info.textContent = `Connected (session ${s.sessionId}); waiting for the first video frame…`;
      watchForFirstFrame(s);
    }
    if (state === "failed" || state === "closed") stopWatching(s);
    if (state === "failed") showError("WebRTC connection failed (ICE or DTLS). Check the backend's ICE servers.");
  };
  // Candidates found before the answer wait until the session id is known.
  pc.onicecandidate = (event) => {
    if (s.stopped) return;
    if (s.sessionId) sendCandidate(s, event.candidate);
    else s.queued.push(event.candidate);
  };

  ui.info.textContent = "Negotiating…";
  setBadge(ui.pcStatus, "new");
  await pc.setLocalDescription(await pc.createOffer());
  // What the Scope frontend sends for a camera stream (StreamPage.tsx): the input mode, the pipeline
  // chain to run, and the loaded chain's media. Real Scope runs only the pipelines named here: without
  // pipeline_ids it answers, connects, and never sends a frame ("No pipeline IDs provided, cannot start").
  s.initialParameters = {
    input_mode: "video",
    pipeline_ids: pipeline.pipelineIds,
    produces_video: pipeline.status?.produces_video ?? true,
    produces_audio: pipeline.status?.produces_audio ?? false,
  };
  const answer = await client.sendOffer(pc.localDescription.sdp, "offer", s.initialParameters);
  if (s.stopped) return;
  s.sessionId = answer.sessionId;
  await pc.setRemoteDescription({ type: answer.type, sdp: answer.sdp });
  for (const c of s.queued.splice(0)) sendCandidate(s, c);
  ui.info.textContent = `Connecting media (session ${s.sessionId})…`;
}

function sendCandidate(s, candidate) {
  client.sendIceCandidate(s.sessionId, candidate).catch((e) => {
    if (!s.stopped) showError(`ICE candidate not delivered: ${e.message ?? e}`);
  });
}

/**
 * Real Scope refuses offers until a pipeline is loaded, and then runs only the pipelines the offer
 * names: use the one that is loaded (or being loaded), else load ours and wait for it. Resolves with
 * `{ pipelineIds, status }` for the offer, or null when the stream was stopped meanwhile.
 */
async function ensurePipelineLoaded(s) {
  const status = await client.pipelineStatus();
  const wait = {
    timeoutMs: PIPELINE_LOAD_TIMEOUT_MS,
    isCancelled: () => s.stopped,
    onStatus: (st) => {
      const stage = st?.loading_stage ? `: ${st.loading_stage}` : "";
      ui.info.textContent = `Loading pipeline ${st?.pipeline_id ?? pipelineId} (${st?.status ?? "unknown"}${stage})…`;
    },
  };
  let loaded;
  if (status?.status === "loaded") {
    loaded = status;
  } else if (status?.status === "loading") {
    ui.info.textContent = "Waiting for the pipeline the backend is loading…";
    loaded = await client.waitForPipeline(wait);
  } else {
    // "not_loaded", or an "error" left by an earlier load (reported once): load ours.
    ui.info.textContent = `Loading pipeline ${pipelineId}…`;
    loaded = await client.loadPipeline([pipelineId], wait);
  }
  if (!loaded || s.stopped) return null;
  const pipelineIds =
    client.pipelineIds ?? (typeof loaded.pipeline_id === "string" ? [loaded.pipeline_id] : [pipelineId]);
  if (!pipelineIds.includes(pipelineId)) {
    console.info(`scope-router example: streaming through the loaded pipeline ${pipelineIds.join(" → ")}, not ${pipelineId}`);
  }
  return { pipelineIds, status: loaded };
}

/**
 * Watches the received video for its first frame once the connection is up: a frame presented
 * (requestVideoFrameCallback), the element having decoded data or its time moving, or the inbound
 * RTP stats counting decoded frames, whichever comes first. If none comes within `frameTimeoutS`,
 * the page says so (a connected stream that never shows a frame means the backend's pipeline did
 * not start); a frame that comes later still clears the error.
 */
function watchForFirstFrame(s) {
  if (s.watch || s.firstFrame || s.stopped) return;
  const video = ui.remote;
  const w = { timer: null, poll: null, rvfc: null, off: [], timedOut: false };
  s.watch = w;
  const seen = (how) => {
    if (s.stopped || stream !== s || s.firstFrame) return;
    s.firstFrame = how;
    stopWatching(s);
    if (w.timedOut) showError("");
    setBadge(ui.pcStatus, s.pc?.connectionState ?? "connected");
    ui.info.textContent = `Streaming (session ${s.sessionId})`;
  };
  if (typeof video.requestVideoFrameCallback === "function") {
    w.rvfc = video.requestVideoFrameCallback(() => seen("requestVideoFrameCallback"));
  }
  const startTime = video.currentTime;
  const onMedia = () => {
    if (video.videoWidth > 0 && video.readyState >= HTMLMediaElement.HAVE_CURRENT_DATA) seen("loadeddata");
  };
  for (const name of ["loadeddata", "resize", "timeupdate"]) {
    video.addEventListener(name, onMedia);
    w.off.push(() => video.removeEventListener(name, onMedia));
  }
  w.poll = setInterval(async () => {
    if (video.videoWidth > 0 && video.currentTime > startTime) return seen("currentTime");
    const stats = await inboundVideoStats(s.pc).catch(() => null);
    if (stats?.framesDecoded > 0) seen("getStats");
  }, FRAME_POLL_MS);
  w.timer = setTimeout(() => {
    w.timer = null;
    if (s.stopped || stream !== s || s.firstFrame) return;
    w.timedOut = true;
    setBadge(ui.pcStatus, "no-frames");
    showError(`Connected, but no video frames arrived within ${frameTimeoutS} s — is a pipeline loaded? see the server log`);
    ui.info.textContent = `Connected (session ${s.sessionId}), but no video; still waiting for a frame…`;
  }, frameTimeoutS * 1000);
  onMedia();
}

function stopWatching(s) {
  const w = s?.watch;
  if (!w) return;
  clearTimeout(w.timer);
  clearInterval(w.poll);
  w.timer = null;
  w.poll = null;
  if (w.rvfc !== null && typeof ui.remote.cancelVideoFrameCallback === "function") {
    ui.remote.cancelVideoFrameCallback(w.rvfc);
  }
  w.rvfc = null;
  for (const off of w.off.splice(0)) off();
}

function stopStream(message = null) {
  const s = stream;
  stream = null;
  if (s) {
    s.stopped = true;
    stopWatching(s);
    s.pc?.close();
    releaseMedia(s);
  }
  ui.local.srcObject = null;
  ui.remote.srcObject = null;
  setBadge(ui.pcStatus, "idle");
  if (message) showError(message);
  if (client.isOpen && s) ui.info.textContent = `Stopped. Connected as ${client.connectionId}`;
  updateButtons();
}

function releaseMedia(s) {
  for (const t of s.media?.getTracks() ?? []) t.stop();
}

/** The inbound video RTP stats of `pc` (default: the current stream's) (framesDecoded, frameWidth, …), or null. */
async function inboundVideoStats(pc = stream?.pc) {
  if (!pc) return null;
  const report = await pc.getStats();
  for (const s of report.values()) {
    if (s.type === "inbound-rtp" && s.kind === "video") return s;
  }
  return null;
}

/**
 * Uploads the chosen file as an asset: a progress bar with the percentage acknowledged and the speed
 * while it goes (the average once done), then the backend's answer (status, sha256, size).
 */
async function uploadSelectedFile() {
  const file = ui.uploadFile.files?.[0];
  if (!file || uploading) return;
  uploading = true;
  updateButtons();
  const result = ui.uploadResult;
  const show = (state, text) => {
    result.dataset.state = state;
    result.textContent = text;
  };
  const stats = ui.uploadStats;
  ui.uploadProgress.hidden = false;
  ui.uploadProgress.value = 0;
  stats.hidden = false;
  stats.textContent = "";
  for (const k of ["status", "sha256", "size"]) delete result.dataset[k];
  let average = null;
  try {
    const reply = await client.uploadFile(`/api/v1/assets?filename=${encodeURIComponent(file.name)}`, file, {
      contentType: file.type || undefined,
      onProgress: ({ phase, loaded, total, resumes, bytesPerSecond }) => {
        const fraction = total ? loaded / total : 1;
        const pct = Math.floor(100 * fraction);
        ui.uploadProgress.value = fraction;
        if (phase === "finishing" || phase === "done") average = bytesPerSecond ?? average;
        const speed =
          phase === "uploading"
            ? formatRate(bytesPerSecond)
            : phase === "hashing"
              ? "hashing…"
              : phase === "resuming"
                ? "reconnecting…"
                : formatRate(average, "average");
        stats.textContent = `${pct} % · ${speed}`;
        const resumed = resumes ? `, resumed ${resumes}×` : "";
        show("busy", `${phase} ${file.name}: ${pct}% of ${total.toLocaleString()} bytes${resumed}`);
      },
    });
    const data = reply.data ?? {};
    const size = data.size_bytes ?? file.size;
    result.dataset.status = String(reply.status);
    result.dataset.sha256 = data.sha256 ?? "";
    result.dataset.size = String(size);
    ui.uploadProgress.value = 1;
    stats.textContent = `100 % · ${formatRate(average, "average")}`;
    show("done", `${file.name}: status ${reply.status} · sha256 ${data.sha256 ?? "(not reported)"} · ${size.toLocaleString()} bytes`);
  } catch (e) {
    if (e.status) result.dataset.status = String(e.status);
    show("failed", `Upload of ${file.name} failed: ${e.message ?? e}`);
  } finally {
    // The bar stays, showing where the upload ended, until the next one.
    uploading = false;
    updateButtons();
  }
}

/** Bytes per second as "12.3 MB/s" (decimal megabytes), with an optional word before it; "… MB/s" while unknown. */
function formatRate(bytesPerSecond, label = "") {
  const prefix = label ? `${label} ` : "";
  if (typeof bytesPerSecond !== "number" || !Number.isFinite(bytesPerSecond)) return `${prefix}… MB/s`;
  const mb = bytesPerSecond / 1e6;
  return `${prefix}${mb >= 100 ? mb.toFixed(0) : mb.toFixed(1)} MB/s`;
}

function updateButtons() {
  ui.start.disabled = !client.isOpen || stream !== null;
  ui.stop.disabled = stream === null;
  ui.uploadStart.disabled = !client.isOpen || uploading || !ui.uploadFile.files?.length;
}

function setBadge(el, state) {
  el.dataset.state = state;
  el.textContent = state;
}

function showError(text) {
  ui.error.textContent = text || "";
}

function appendLogs(lines) {
  const atBottom = ui.logs.scrollTop + ui.logs.clientHeight >= ui.logs.scrollHeight - 4;
  const all = (ui.logs.textContent ? ui.logs.textContent.split("\n") : []).concat(lines);
  ui.logs.textContent = all.slice(-MAX_LOG_LINES).join("\n");
  if (atBottom) ui.logs.scrollTop = ui.logs.scrollHeight;
}

function positiveNumber(text, fallback) {
  const n = Number(text);
  return text !== null && Number.isFinite(n) && n > 0 ? n : fallback;
}

function defaultWsUrl() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/ws`;
}

function redact(url) {
  const u = new URL(url);
  u.searchParams.delete("fal_jwt_token");
  return u.toString();
}
