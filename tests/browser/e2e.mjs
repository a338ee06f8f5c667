// e2e.mjs: drives headless Chromium (Debian's, never a downloaded one) through examples/browser: Start, wait for the returned video to decode, screenshot, close.
//
//   node tests/browser/e2e.mjs <page-url> [--screenshot PATH] [--timeout-ms N]
//
// Prints one JSON line: {"ok":true,"connectionId",...,"framesDecoded","videoWidth",...} or
// {"ok":false,"error",...}, and exits 0 or 1. Used by tests/browser.rs; runnable by hand too.

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

  await page.screenshot({ path: screenshot });
  result.screenshot = screenshot;

  // Closing the page closes its WebSocket; the router then DELETEs the session.
  await page.close();
  result.ok = true;
  await finish({});
} catch (e) {
  await finish({ error: String(e?.message ?? e).split("\n")[0] });
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
