// scope-client.js: a dependency-free browser client for scope-router's WebSocket protocol (the Scope frontend's FalAdapter surface: API calls, WebRTC signaling, keepalive, reconnect).
//
// Usage:
//   import { ScopeClient } from "./scope-client.js";
//   const client = new ScopeClient("ws://127.0.0.1:8080/ws", { token, onLogs, onStatus });
//   await client.connect();                          // resolves after {"type":"ready"}
//   const status = await client.api("GET", "/api/v1/pipeline/status");
//   const { iceServers } = await client.getIceServers();
//   const answer = await client.sendOffer(pc.localDescription.sdp, "offer", {});
//   await client.sendIceCandidate(answer.sessionId, event.candidate);
//
// Every request carries a fresh `request_id`; its reply (success or error) settles that request's
// promise, in whatever order replies arrive. `{"type":"error"}` replies reject with the error text.

/** Connection states, in the order a healthy connection goes through them. */
export const Status = Object.freeze({
  IDLE: "idle",
  CONNECTING: "connecting",
  OPEN: "open",
  RECONNECTING: "reconnecting",
  CLOSED: "closed",
});

/** Server error codes after which reconnecting would only be refused again. */
const FATAL_CODES = new Set(["ACCESS_DENIED", "MAX_DURATION_EXCEEDED"]);
/** WebSocket close codes that mean "do not come back" (4003: access denied). */
const FATAL_CLOSE_CODES = new Set([4003]);

/** A failed request: `message` is the server's error text; `reply` the whole reply, if any. */
export class ScopeError extends Error {
  constructor(message, { reply = null, status = null, code = null } = {}) {
    super(message);
    this.name = "ScopeError";
    this.reply = reply;
    this.status = status;
    this.code = code;
  }
}

const DEFAULTS = {
  token: null, // sent as the fal_jwt_token query parameter
  pingIntervalMs: 10_000, // keepalive; 0 turns it off
  requestTimeoutMs: 60_000, // per request unless the call says otherwise
  connectTimeoutMs: 20_000, // connect() gives up after this long
  reconnect: true,
  backoffInitialMs: 500,
  backoffMaxMs: 15_000,
  onLogs: null, // (lines: string[]) => void, for {"type":"logs"}
  onStatus: null, // ({status, connectionId, attempt, error}) => void
  onError: null, // (message) => void, for errors that answer no request
  WebSocket: globalThis.WebSocket,
};

export class ScopeClient extends EventTarget {
  /**
   * @param {string} url  ws:// or wss:// URL of the router's /ws endpoint
   * @param {object} [options]  see DEFAULTS above
   */
  constructor(url, options = {}) {
    super();
    this.url = url;
    this.options = { ...DEFAULTS, ...options };
    this.status = Status.IDLE;
    this.connectionId = null;
    /** The session of the latest answered offer (the router's default for ICE candidates). */
    this.sessionId = null;
    this._ws = null;
    this._pending = new Map(); // request_id -> {resolve, reject, timer}
    this._seq = 0;
    this._attempt = 0;
    this._closedByUser = false;
    this._fatal = null;
    this._pingTimer = null;
    this._retryTimer = null;
    this._readyWaiters = [];
  }

  /** Opens the socket (if needed) and resolves with the connection id once `ready` arrives. */
  connect() {
    if (this.status === Status.OPEN) return Promise.resolve(this.connectionId);
    this._closedByUser = false;
    this._fatal = null;
    const ready = new Promise((resolve, reject) => {
      const waiter = { resolve, reject, timer: null };
      waiter.timer = setTimeout(() => {
        this._readyWaiters = this._readyWaiters.filter((w) => w !== waiter);
        reject(new ScopeError(`Could not connect to ${this._redactedUrl()} within ${this.options.connectTimeoutMs} ms`));
      }, this.options.connectTimeoutMs);
      this._readyWaiters.push(waiter);
    });
    if (!this._ws && !this._retryTimer) this._open();
    return ready;
  }

  /** Closes the socket for good (no reconnect). Pending requests are rejected. */
  close(code = 1000, reason = "client closed") {
    this._closedByUser = true;
    clearTimeout(this._retryTimer);
    this._retryTimer = null;
    this._stopPing();
    const ws = this._ws;
    this._ws = null;
    if (ws && ws.readyState <= 1) {
      try {
        ws.close(code, reason);
      } catch {
        ws.close(); // browsers accept only 1000 and 3000-4999 from scripts
      }
    }
    this._failPending("WebSocket closed");
    this._failWaiters("WebSocket closed");
    this._setStatus(Status.CLOSED);
  }

  /** True when requests can be sent. */
  get isOpen() {
    return this.status === Status.OPEN;
  }

  /**
   * Sends `message` with a fresh request_id and resolves with its reply.
   * Rejects on `{"type":"error"}`, on timeout, and when the socket closes first.
   */
  request(message, { timeoutMs } = {}) {
    if (this.status !== Status.OPEN || !this._ws) {
      return Promise.reject(new ScopeError("WebSocket not connected"));
    }
    const requestId = `req_${++this._seq}_${Math.random().toString(36).slice(2, 8)}`;
    const timeout = timeoutMs ?? this.options.requestTimeoutMs;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._pending.delete(requestId);
        reject(new ScopeError(`Request ${message.type} timed out after ${timeout} ms`, { code: "CLIENT_TIMEOUT" }));
      }, timeout);
      this._pending.set(requestId, { resolve, reject, timer });
      try {
        this._ws.send(JSON.stringify({ ...message, request_id: requestId }));
      } catch (e) {
        clearTimeout(timer);
        this._pending.delete(requestId);
        reject(new ScopeError(`Send failed: ${e.message ?? e}`));
      }
    });
  }

  /**
   * An HTTP call on the backend through the socket. Resolves with the response's `data` (a Blob for
   * binary downloads); rejects with a ScopeError carrying `status` when the status is 400 or more.
   */
  async api(method, path, body = null, { timeoutMs } = {}) {
    const reply = await this.request({ type: "api", method, path, body }, { timeoutMs });
    if (typeof reply.status === "number" && reply.status >= 400) {
      const detail = reply.error ?? reply.data?.detail ?? reply.data;
      const text = typeof detail === "string" ? detail : JSON.stringify(detail);
      throw new ScopeError(`${method} ${path} failed (${reply.status}): ${text}`, {
        reply,
        status: reply.status,
        code: reply.code ?? null,
      });
    }
    if (typeof reply._base64_content === "string") {
      return base64ToBlob(reply._base64_content, reply._content_type);
    }
    return reply.data;
  }

  /** Uploads a Blob/File as raw bytes (base64 inside the message, decoded by the router). */
  async upload(path, blob, { timeoutMs } = {}) {
    const content = await blobToBase64(blob);
    const body = { _base64_content: content, _content_type: blob.type || "application/octet-stream" };
    return this.api("POST", path, body, { timeoutMs });
  }

  /** The backend's ICE servers: `{ iceServers: [...] }`. */
  async getIceServers({ timeoutMs } = {}) {
    const reply = await this.request({ type: "get_ice_servers" }, { timeoutMs });
    return reply.data;
  }

  /** Relays an SDP offer; resolves with `{ sdp, type, sessionId }` and remembers the session. */
  async sendOffer(sdp, type = "offer", initialParameters = undefined, { timeoutMs } = {}) {
    const message = { type: "offer", sdp, sdp_type: type };
    if (initialParameters !== undefined && initialParameters !== null) {
      message.initialParameters = initialParameters;
    }
    const reply = await this.request(message, { timeoutMs });
    this.sessionId = reply.sessionId;
    return { sdp: reply.sdp, type: reply.sdp_type, sessionId: reply.sessionId };
  }

  /**
   * Relays one trickled ICE candidate (an RTCIceCandidate, its JSON, or null for end of
   * candidates). Resolves with the ack's status: "ok" or "end_of_candidates".
   */
  async sendIceCandidate(sessionId, candidate, { timeoutMs } = {}) {
    const message = { type: "icecandidate", candidate: candidateJson(candidate) };
    const session = sessionId ?? this.sessionId;
    if (session) message.sessionId = session;
    const reply = await this.request(message, { timeoutMs });
    return reply.status;
  }

  /** One keepalive round trip; resolves with the round-trip time in ms. */
  async ping({ timeoutMs } = {}) {
    const started = performance.now();
    await this.request({ type: "ping" }, { timeoutMs: timeoutMs ?? Math.max(this.options.pingIntervalMs, 5000) });
    return performance.now() - started;
  }

  // === connection lifecycle ===

  _open() {
    this._setStatus(this._attempt === 0 ? Status.CONNECTING : Status.RECONNECTING);
    let ws;
    try {
      ws = new this.options.WebSocket(this._fullUrl());
    } catch (e) {
      this._scheduleReconnect(`Cannot open WebSocket: ${e.message ?? e}`);
      return;
    }
    this._ws = ws;
    ws.onmessage = (event) => {
      if (this._ws === ws) this._onMessage(event.data);
    };
    ws.onclose = (event) => {
      if (this._ws !== ws) return;
      this._ws = null;
      this._onClose(event);
    };
    // `error` is always followed by `close`, which does the work.
    ws.onerror = () => {};
  }

  _onMessage(text) {
    let msg;
    try {
      msg = JSON.parse(text);
    } catch {
      this._emitError(`Undecodable message from server: ${String(text).slice(0, 200)}`);
      return;
    }
    if (!msg || typeof msg !== "object") return;

    if (msg.type === "ready") {
      this.connectionId = msg.connection_id ?? null;
      this._attempt = 0;
      this._setStatus(Status.OPEN);
      this._startPing();
      for (const w of this._readyWaiters.splice(0)) {
        clearTimeout(w.timer);
        w.resolve(this.connectionId);
      }
      return;
    }
    if (msg.type === "logs") {
      const lines = Array.isArray(msg.lines) ? msg.lines : [];
      this.options.onLogs?.(lines);
      this.dispatchEvent(new CustomEvent("logs", { detail: lines }));
      return;
    }

    const pending = msg.request_id !== undefined ? this._pending.get(msg.request_id) : undefined;
    if (pending) {
      this._pending.delete(msg.request_id);
      clearTimeout(pending.timer);
      if (msg.type === "error") {
        const text = msg.detail ? `${msg.error}: ${stringify(msg.detail)}` : msg.error;
        pending.reject(new ScopeError(text ?? "Unknown error", { reply: msg, code: msg.code ?? null }));
      } else {
        pending.resolve(msg);
      }
      return;
    }

    if (msg.type === "error") {
      if (FATAL_CODES.has(msg.code)) this._fatal = msg.error ?? msg.code;
      this._emitError(msg.error ?? "Unknown error", msg);
      return;
    }
    this.dispatchEvent(new CustomEvent("message", { detail: msg }));
  }

  _onClose(event) {
    this._stopPing();
    const why = event.reason ? `${event.code} ${event.reason}` : `code ${event.code}`;
    this._failPending(`WebSocket closed (${why})`);
    this.connectionId = null;
    this.sessionId = null;
    if (FATAL_CLOSE_CODES.has(event.code) && !this._fatal) this._fatal = `Closed by server (${why})`;
    if (this._closedByUser) {
      this._setStatus(Status.CLOSED);
      return;
    }
    if (this._fatal || !this.options.reconnect) {
      const reason = this._fatal ?? `WebSocket closed (${why})`;
      this._failWaiters(reason);
      this._setStatus(Status.CLOSED, reason);
      return;
    }
    this._scheduleReconnect(`WebSocket closed (${why})`);
  }

  _scheduleReconnect(reason) {
    if (!this.options.reconnect || this._closedByUser) {
      this._failWaiters(reason);
      this._setStatus(Status.CLOSED, reason);
      return;
    }
    const base = Math.min(this.options.backoffMaxMs, this.options.backoffInitialMs * 2 ** this._attempt);
    const delay = Math.round(base * (0.8 + Math.random() * 0.4)); // ±20% jitter
    this._attempt += 1;
    this._setStatus(Status.RECONNECTING, `${reason}; retrying in ${delay} ms`);
    this._retryTimer = setTimeout(() => {
      this._retryTimer = null;
      if (!this._closedByUser) this._open();
    }, delay);
  }

  _startPing() {
    this._stopPing();
    if (!this.options.pingIntervalMs) return;
    this._pingTimer = setInterval(() => {
      this.ping().catch((e) => {
        // No pong: the socket is half-dead. Closing it starts a reconnect.
        if (this._ws && this.status === Status.OPEN && e.code === "CLIENT_TIMEOUT") this._ws.close(4000, "keepalive timeout");
      });
    }, this.options.pingIntervalMs);
  }

  _stopPing() {
    clearInterval(this._pingTimer);
    this._pingTimer = null;
  }

  _failPending(reason) {
    for (const [, p] of this._pending) {
      clearTimeout(p.timer);
      p.reject(new ScopeError(reason));
    }
    this._pending.clear();
  }

  _failWaiters(reason) {
    for (const w of this._readyWaiters.splice(0)) {
      clearTimeout(w.timer);
      w.reject(new ScopeError(reason));
    }
  }

  _setStatus(status, error = null) {
    this.status = status;
    const detail = { status, connectionId: this.connectionId, attempt: this._attempt, error };
    this.options.onStatus?.(detail);
    this.dispatchEvent(new CustomEvent("status", { detail }));
  }

  _emitError(message, reply = null) {
    this.options.onError?.(message, reply);
    this.dispatchEvent(new CustomEvent("error", { detail: { message, reply } }));
  }

  _fullUrl() {
    if (!this.options.token) return this.url;
    const u = new URL(this.url);
    u.searchParams.set("fal_jwt_token", this.options.token);
    return u.toString();
  }

  _redactedUrl() {
    const u = new URL(this.url);
    u.searchParams.delete("fal_jwt_token");
    return u.toString();
  }
}

function candidateJson(candidate) {
  if (!candidate) return null;
  const c = typeof candidate.toJSON === "function" ? candidate.toJSON() : candidate;
  return {
    candidate: c.candidate ?? "",
    sdpMid: c.sdpMid ?? null,
    sdpMLineIndex: c.sdpMLineIndex ?? null,
  };
}

function stringify(v) {
  return typeof v === "string" ? v : JSON.stringify(v);
}

function base64ToBlob(b64, type = "application/octet-stream") {
  const bin = atob(b64);
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  return new Blob([bytes], { type });
}

async function blobToBase64(blob) {
  const bytes = new Uint8Array(await blob.arrayBuffer());
  let bin = "";
  const chunk = 0x8000;
  for (let i = 0; i < bytes.length; i += chunk) {
    bin += String.fromCharCode.apply(null, bytes.subarray(i, i + chunk));
  }
  return btoa(bin);
}
