// e2e.mjs: drives headless Chromium (Debian's, never a downloaded one) through examples/browser: Start, wait for the returned video to decode; files through the page's client (chunked uploads, binary and JSON, one resumed after a dropped socket; chunked downloads of an uploaded asset; the page's upload control); an offer without pipeline_ids, which must connect and bring no frame back; screenshot; close.
//
//   node tests/browser/e2e.mjs <page-url> [--screenshot PATH] [--timeout-ms N]
//
// Prints one JSON line: {"ok":true,"connectionId",...,"framesDecoded","videoWidth",...,"transfers":{...},
// "noPipelineIds":{...}} or {"ok":false,"error",...}, and exits 0 or 1. Used by tests/browser.rs
// (against mock-scope, checking the transfers against its records) and by scripts/real-scope.sh
// (against the real Scope server); runnable by hand too. Everything it does is something the real
// server accepts: assets have image/video extensions, and downloads fetch an uploaded asset.
//
// E2E_CHROMIUM_ARGS: extra Chromium flags, separated by spaces (e.g. "--enable-logging=stderr").

import { mkdirSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const url = args.find((a, i) => !a.startsWith("--") && !(args[i - 1] ?? "").startsWith("--"));
const opt = (name, fallback) => {
  const i = args.indexOf(name);
  return i >= 0 && args[i + 1] ? args[i + 1] : fallback;
};
const screenshot = resolve(opt("--screenshot", join(here, "..", "artifacts", "browser-e2e.png")));
const timeoutMs = Number(opt("--timeout-ms", "40000"));
const executablePath = process.env.CHROMIUM ?? "/usr/bin/chromium";

mkdirSync(dirname(screenshot), { recursive: true });

if (!url) {
  console.error("usage: node e2e.mjs <page-url> [--screenshot PATH] [--timeout-ms N]");
  process.exit(2);
}

const consoleLines = [];
const result = { ok: false, url };
let browser = null;
let page = null;
let finishing = false;

const deadline = setTimeout(() => {
  finish({ error: `timed out after ${timeoutMs} ms` });
}, timeoutMs);

try {
  // launch() runs Chromium on a fresh, empty temporary profile (--user-data-dir) of its own.
  browser = await chromium.launch({
    executablePath,
    headless: true,
    chromiumSandbox: false,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      // A fake camera (a moving test pattern) and auto-accepted permission prompts.
      "--use-fake-device-for-media-stream",
      "--use-fake-ui-for-media-stream",
      // Real host addresses in ICE candidates instead of mDNS names (no multicast on the LAN).
      "--disable-features=WebRtcHideLocalIpsWithMdns",
      "--autoplay-policy=no-user-gesture-required",
      ...(process.env.E2E_CHROMIUM_ARGS ?? "").split(/\s+/).filter(Boolean),
    ],
  });
  page = await browser.newPage({ viewport: { width: 1100, height: 720 } });
  page.on("console", (m) => consoleLines.push(`${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => consoleLines.push(`pageerror: ${e.message}`));

  await page.goto(url, { waitUntil: "load" });
  // Enabled once the socket's `ready` arrived.
  await page.waitForSelector("#start:not([disabled])", { timeout: timeoutMs });
  result.connectionId = await page.evaluate(() => window.scopeDemo.client.connectionId);
  await page.click("#start");

  // Polled from here: waitForFunction does not await an async predicate's promise.
  const until = Date.now() + timeoutMs;
  let playing = null;
  while (!playing) {
    playing = await page.evaluate(async () => {
      const shown = document.getElementById("error")?.textContent;
      if (shown) return { pageError: shown };
      const video = document.getElementById("remote");
      const stats = await window.scopeDemo.inboundVideoStats();
      if (!video || video.videoWidth === 0 || !stats || !(stats.framesDecoded > 0)) return null;
      return {
        sessionId: window.scopeDemo.sessionId,
        videoWidth: video.videoWidth,
        videoHeight: video.videoHeight,
        framesDecoded: stats.framesDecoded,
        framesReceived: stats.framesReceived ?? null,
        pcState: window.scopeDemo.pc?.connectionState ?? null,
        wsStatus: window.scopeDemo.client.status,
      };
    });
    if (playing?.pageError) throw new Error(`the page shows an error: ${playing.pageError}`);
    if (!playing) {
      if (Date.now() > until) throw new Error("the returned video never played");
      await page.waitForTimeout(100);
    }
  }
  Object.assign(result, playing);

  result.transfers = await transfers(page);
  // The page's stream kept playing meanwhile.
  result.framesDecodedAtEnd = await page.evaluate(async () => (await window.scopeDemo.inboundVideoStats())?.framesDecoded ?? 0);
  result.noPipelineIds = await page.evaluate(offerWithoutPipelineIds, { waitMs: 4000 });
  if (!result.noPipelineIds.connected) throw new Error(`the offer without pipeline_ids never connected: ${JSON.stringify(result.noPipelineIds)}`);
  if (result.noPipelineIds.framesDecoded > 0) throw new Error(`frames came back without pipeline_ids: ${JSON.stringify(result.noPipelineIds)}`);

  // The video still plays, and the upload control shows its result.
  await page.screenshot({ path: screenshot });
  result.screenshot = screenshot;

  // Closing the page closes its WebSocket; the router then DELETEs the session.
  await page.close();
  result.ok = true;
  await finish({});
} catch (e) {
  await finish({ error: String(e?.message ?? e).split("\n")[0] });
}

/**
 * Files through the page's client while the video plays. Every upload's content is the same
 * deterministic generator as `e2e_bytes` in tests/browser.rs (xorshift32, one seed per file), which
 * recomputes the sha256 the backend must have received. Returns what each step saw; throws on the
 * first failure.
 */
async function transfers(page) {
  await page.evaluate(installHelpers, e2eBytes.toString());
  const out = {};

  // Scope takes only image, video and audio files (by extension) as assets.
  // 1. 5 MB (not a multiple of the chunk size) in binary chunks, on the page's own connection.
  out.binary = await page.evaluate(uploadInPage, { name: "e2e-binary.mp4", size: 5_000_000, seed: 1, binary: true });
  // 2. The same route with base64 JSON chunks.
  out.json = await page.evaluate(uploadInPage, { name: "e2e-json.mp4", size: 1_500_000, seed: 2, binary: false });
  // 3. On a second client: the socket is dropped after a few acknowledged chunks; the client
  //    reconnects and the upload resumes from where the router says it got to.
  out.resumed = await page.evaluate(uploadInPage, { name: "e2e-resumed.mp4", size: 3_000_000, seed: 3, binary: true, dropAfterChunks: 4 });

  // 4. Chunked downloads of the asset uploaded in 3, binary frames and base64 JSON chunks, checked
  //    in the page against the header and against the bytes uploaded.
  for (const binary of [true, false]) {
    out[binary ? "downloadBinary" : "downloadJson"] = await page.evaluate(downloadInPage, {
      path: "/api/v1/assets/e2e-resumed.mp4",
      binary,
      expected: { size: 3_000_000, seed: 3 },
    });
  }

  // 5. The page's "Upload a file" control, with a small file (one api message).
  const name = "e2e-control.png";
  const size = 200_000;
  await page.setInputFiles("#upload-file", { name, mimeType: "image/png", buffer: Buffer.from(e2eBytes(size, 4)) });
  await page.click("#upload-start");
  await page.waitForSelector('#upload-result[data-state="done"], #upload-result[data-state="failed"]', { timeout: 20_000 });
  const shown = await page.$eval("#upload-result", (el) => ({
    state: el.dataset.state,
    text: el.textContent,
    status: Number(el.dataset.status),
    sha256: el.dataset.sha256,
    shownSize: Number(el.dataset.size),
  }));
  if (shown.state !== "done") throw new Error(`the upload control failed: ${shown.text}`);
  out.control = { name, size, seed: 4, ...shown };
  return out;
}

/** The deterministic content of a test file: xorshift32 from `seed`, the low byte of each step. */
function e2eBytes(size, seed) {
  const bytes = new Uint8Array(size);
  let x = (0x9e3779b9 ^ seed) >>> 0;
  for (let i = 0; i < size; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    bytes[i] = x & 0xff;
  }
  return bytes;
}

// Runs in the page (serialized by page.evaluate, so self-contained).
function installHelpers(source) {
  window.e2eBytes = new Function(`return (${source})`)();
}

async function uploadInPage({ name, size, seed, binary, dropAfterChunks = 0 }) {
  const { client, ScopeClient, sha256Hex } = window.scopeDemo;
  // A dropped socket is tested on a client of its own, so the page's stream is left alone.
  const c = dropAfterChunks ? new ScopeClient(client.url, { backoffInitialMs: 100, pingIntervalMs: 0 }) : client;
  if (c !== client) await c.connect();
  const connections = [c.connectionId];
  c.addEventListener("status", ({ detail }) => {
    if (detail.status === "open") connections.push(detail.connectionId);
  });
  const bytes = window.e2eBytes(size, seed);
  const sha256 = await sha256Hex(bytes);
  const phases = new Set();
  let last = null;
  let dropped = false;
  const started = performance.now();
  try {
    const reply = await c.uploadFile(`/api/v1/assets?filename=${name}`, bytes, {
      binary,
      contentType: "video/mp4",
      onProgress: (p) => {
        phases.add(p.phase);
        last = p;
        if (dropAfterChunks && !dropped && p.phase === "uploading" && p.loaded >= dropAfterChunks * 262_144) {
          dropped = true;
          c._ws.close(3000, "e2e: socket dropped mid-upload");
        }
      },
    });
    return {
      name,
      size,
      seed,
      binary,
      sha256,
      ms: Math.round(performance.now() - started),
      status: reply.status,
      data: reply.data,
      uploadId: last?.uploadId ?? null,
      resumes: last?.resumes ?? 0,
      phases: [...phases],
      dropped,
      connections,
      pendingUploads: c.uploads.size,
    };
  } finally {
    if (c !== client) c.close();
  }
}

async function downloadInPage({ path, binary, expected }) {
  const { client, sha256Hex } = window.scopeDemo;
  let last = null;
  let progressCalls = 0;
  const started = performance.now();
  const blob = await client.downloadFile(path, {
    binary,
    onProgress: (p) => {
      progressCalls += 1;
      last = p;
    },
  });
  const bytes = new Uint8Array(await blob.arrayBuffer());
  const sha256 = await sha256Hex(bytes);
  if (bytes.length !== last.total) throw new Error(`download: ${bytes.length} bytes, download_done says ${last.total}`);
  if (sha256 !== last.sha256) throw new Error(`download: sha256 ${sha256}, download_done says ${last.sha256}`);
  const want = await sha256Hex(window.e2eBytes(expected.size, expected.seed));
  if (sha256 !== want) throw new Error(`download: sha256 ${sha256}, but the uploaded file's is ${want}`);
  return {
    ms: Math.round(performance.now() - started),
    length: bytes.length,
    sha256,
    headerLength: last.total,
    headerSha256: last.sha256,
    downloadId: last.downloadId,
    chunks: last.chunks,
    binary: last.binary,
    progressCalls,
    type: blob.type,
  };
}

/**
 * An offer the way a client that forgets `initialParameters.pipeline_ids` makes it (on a client of
 * its own, whose `autoPipelineIds` is off): real Scope answers, connects, and never starts its
 * frame processor, so no frame may come back. Waits `waitMs` once connected, then reports the
 * inbound video counters and closes.
 */
async function offerWithoutPipelineIds({ waitMs }) {
  const { client, ScopeClient } = window.scopeDemo;
  const c = new ScopeClient(client.url, { autoPipelineIds: false, pingIntervalMs: 0 });
  await c.connect();
  const media = await navigator.mediaDevices.getUserMedia({ video: true, audio: false });
  const pc = new RTCPeerConnection({ iceServers: [] });
  const out = { connected: false, sessionId: null, framesDecoded: null, framesReceived: null, bytesReceived: null };
  try {
    for (const track of media.getVideoTracks()) pc.addTransceiver(track, { direction: "sendrecv", streams: [media] });
    await pc.setLocalDescription(await pc.createOffer());
    // Every candidate in the offer itself: no trickle needed.
    await new Promise((resolve) => {
      if (pc.iceGatheringState === "complete") return resolve();
      const t = setTimeout(resolve, 5000);
      pc.addEventListener("icegatheringstatechange", () => {
        if (pc.iceGatheringState === "complete") {
          clearTimeout(t);
          resolve();
        }
      });
    });
    const answer = await c.sendOffer(pc.localDescription.sdp, "offer", { input_mode: "video" });
    out.sessionId = answer.sessionId;
    out.sentParameters = c.lastOfferParameters;
    await pc.setRemoteDescription({ type: answer.type, sdp: answer.sdp });
    const until = Date.now() + 20_000;
    while (pc.connectionState !== "connected" && Date.now() < until) await new Promise((r) => setTimeout(r, 100));
    out.connected = pc.connectionState === "connected";
    out.pcState = pc.connectionState;
    if (out.connected) await new Promise((r) => setTimeout(r, waitMs));
    for (const s of (await pc.getStats()).values()) {
      if (s.type === "inbound-rtp" && s.kind === "video") {
        out.framesDecoded = s.framesDecoded ?? 0;
        out.framesReceived = s.framesReceived ?? 0;
        out.bytesReceived = s.bytesReceived ?? 0;
      }
      if (s.type === "outbound-rtp" && s.kind === "video") out.framesSent = s.framesSent ?? 0;
    }
    out.framesDecoded ??= 0;
    return out;
  } finally {
    pc.close();
    for (const t of media.getTracks()) t.stop();
    c.close();
  }
}

async function finish(extra) {
  // The deadline and the main flow may both get here; the first one reports.
  if (finishing) return;
  finishing = true;
  clearTimeout(deadline);
  Object.assign(result, extra);
  if (!result.ok) {
    result.console = consoleLines.slice(-40);
    if (page && !page.isClosed()) {
      result.pageError = await page.textContent("#error").catch(() => null);
      result.pageInfo = await page.textContent("#info").catch(() => null);
      await page.screenshot({ path: screenshot.replace(/\.png$/, "-failed.png") }).catch(() => {});
    }
  }
  try {
    await browser?.close();
  } catch {
    // Already gone.
  }
  process.stdout.write(`${JSON.stringify(result)}\n`);
  process.exit(result.ok ? 0 : 1);
}
