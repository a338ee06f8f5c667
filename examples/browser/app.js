// app.js: the example page's logic: camera → RTCPeerConnection → Scope (signaled over scope-router's WebSocket) → returned video;
// and "Upload a file": POST /api/v1/assets?filename=<name> through the socket (chunked and resumable when large).
//
// Query parameters:
//   ?ws=ws://host:port/ws   router WebSocket (default: this page's host, path /ws)
//   ?token=...              sent as fal_jwt_token
//   ?pipeline=passthrough   pipeline loaded before streaming if none is (default passthrough)
//   ?ice=none               ignore the backend's ICE servers (host candidates only; for local tests)

import { ScopeClient, Status, sha256Hex } from "./scope-client.js";

const params = new URLSearchParams(location.search);
const wsUrl = params.get("ws") || defaultWsUrl();
const token = params.get("token") || null;
const pipelineId = params.get("pipeline") || "passthrough";
const useBackendIce = params.get("ice") !== "none";

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
  uploadResult: $("upload-result"),
};

const MAX_LOG_LINES = 500;
const PIPELINE_LOAD_TIMEOUT_MS = 120_000;

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
  const s = { pc: null, media: null, sessionId: null, queued: [], stopped: false };
  stream = s;
  updateButtons();
  setBadge(ui.pcStatus, "loading");

  await client.connect();
  await ensurePipelineLoaded(s);
  if (s.stopped) return;

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
    setBadge(ui.pcStatus, pc.connectionState);
    if (pc.connectionState === "connected") ui.info.textContent = `Streaming (session ${s.sessionId})`;
    if (pc.connectionState === "failed") showError("WebRTC connection failed (ICE or DTLS). Check the backend's ICE servers.");
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
  const answer = await client.sendOffer(pc.localDescription.sdp, "offer");
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

/** Real Scope refuses offers until a pipeline is loaded; load one and wait for it. */
async function ensurePipelineLoaded(s) {
  let status = await client.api("GET", "/api/v1/pipeline/status");
  if (status?.status === "loaded") return;
  if (status?.status !== "loading") {
    ui.info.textContent = `Loading pipeline ${pipelineId}…`;
    await client.api("POST", "/api/v1/pipeline/load", { pipeline_ids: [pipelineId] });
  }
  const deadline = Date.now() + PIPELINE_LOAD_TIMEOUT_MS;
  for (;;) {
    status = await client.api("GET", "/api/v1/pipeline/status");
    if (status?.status === "loaded" || s.stopped) return;
    if (status?.status === "error") throw new Error(`Pipeline ${pipelineId} failed to load`);
    if (Date.now() > deadline) throw new Error(`Pipeline ${pipelineId} did not load in time`);
    ui.info.textContent = `Loading pipeline ${pipelineId} (${status?.status ?? "unknown"})…`;
    await new Promise((r) => setTimeout(r, 1000));
  }
}

function stopStream(message = null) {
  const s = stream;
  stream = null;
  if (s) {
    s.stopped = true;
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

/** The inbound video RTP stats of the current stream (framesDecoded, frameWidth, …), or null. */
async function inboundVideoStats() {
  const pc = stream?.pc;
  if (!pc) return null;
  const report = await pc.getStats();
  for (const s of report.values()) {
    if (s.type === "inbound-rtp" && s.kind === "video") return s;
  }
  return null;
}

/** Uploads the chosen file as an asset and shows the backend's answer (status, sha256, size). */
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
  ui.uploadProgress.hidden = false;
  ui.uploadProgress.value = 0;
  for (const k of ["status", "sha256", "size"]) delete result.dataset[k];
  try {
    const reply = await client.uploadFile(`/api/v1/assets?filename=${encodeURIComponent(file.name)}`, file, {
      contentType: file.type || undefined,
      onProgress: ({ phase, loaded, total, resumes }) => {
        ui.uploadProgress.value = total ? loaded / total : 1;
        const pct = total ? Math.floor((100 * loaded) / total) : 100;
        const resumed = resumes ? `, resumed ${resumes}×` : "";
        show("busy", `${phase} ${file.name}: ${pct}% of ${total.toLocaleString()} bytes${resumed}`);
      },
    });
    const data = reply.data ?? {};
    const size = data.size_bytes ?? file.size;
    result.dataset.status = String(reply.status);
    result.dataset.sha256 = data.sha256 ?? "";
    result.dataset.size = String(size);
    show("done", `${file.name}: status ${reply.status} · sha256 ${data.sha256 ?? "(not reported)"} · ${size.toLocaleString()} bytes`);
  } catch (e) {
    if (e.status) result.dataset.status = String(e.status);
    show("failed", `Upload of ${file.name} failed: ${e.message ?? e}`);
  } finally {
    uploading = false;
    ui.uploadProgress.hidden = true;
    updateButtons();
  }
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

function defaultWsUrl() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/ws`;
}

function redact(url) {
  const u = new URL(url);
  u.searchParams.delete("fal_jwt_token");
  return u.toString();
}
