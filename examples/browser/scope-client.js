// scope-client.js: a dependency-free browser client for scope-router's WebSocket protocol (the Scope frontend's FalAdapter surface: API calls, WebRTC signaling, keepalive, reconnect).
//
// Usage:
//   import { ScopeClient } from "./scope-client.js";
//   const client = new ScopeClient("ws://127.0.0.1:8080/ws", { token, onLogs, onStatus });
//   await client.connect();                          // resolves after {"type":"ready"}
//   const status = await client.api("GET", "/api/v1/pipeline/status");
//   const { iceServers } = await client.getIceServers();
//   await client.loadPipeline(["passthrough"]);       // POST /api/v1/pipeline/load, then polls until "loaded"
//   const answer = await client.sendOffer(pc.localDescription.sdp, "offer", { input_mode: "video" });
//                                                     // → initialParameters gets pipeline_ids: ["passthrough"]
//   await client.sendIceCandidate(answer.sessionId, event.candidate);
//   const reply = await client.uploadFile("/api/v1/assets?filename=clip.mp4", file, { onProgress });
//   const blob = await client.downloadFile("/api/v1/recordings/abc", { onProgress });
//
// Every request carries a fresh `request_id`; its reply (success or error) settles that request's
// promise, in whatever order replies arrive. `{"type":"error"}` replies reject with the error text.
//
// Large files travel in acknowledged chunks (the router's transfer routes): uploads over
// `chunkedUploadOver` bytes go as upload_start → chunks (binary frames, or base64 JSON) →
// upload_finish, and resume by themselves when the socket drops and comes back; downloads ask for
// `_chunked` replies and acknowledge each chunk. Both check the whole file's sha256.
//
// Offers and pipelines: real Scope answers an offer only while a pipeline is loaded, and its frame
// processor runs only the pipelines named in the offer's `initialParameters.pipeline_ids` (without
// them the offer is still answered and ICE/DTLS connect, but no frame ever comes back; the server
// logs "No pipeline IDs provided, cannot start"). The Scope frontend always sends them, so this
// client does too: `sendOffer()` adds the pipelines it knows are loaded (from `loadPipeline()`, a
// `POST /api/v1/pipeline/load` or a "loaded" `GET /api/v1/pipeline/status` made through `api()`)
// unless the caller's `initialParameters` already name some. See docs/scope-server-checks.md.

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

/** The code of errors caused by the socket closing (or not being open): the request may be retried. */
export const DISCONNECTED = "DISCONNECTED";
/** Error codes of binary upload chunks; those replies carry no request_id (they answer in order). */
const CHUNK_ERROR_CODES = /^(UPLOAD_|BINARY_NOT_SUPPORTED$|TRANSFER_INVALID$)/;
const PIPELINE_STATUS_PATH = "/api/v1/pipeline/status";
const PIPELINE_LOAD_PATH = "/api/v1/pipeline/load";

/** Binary frame kinds: upload chunk ('U') and download chunk ('D'), each followed by a 32-character id and a big-endian u32 seq. */
const FRAME_UPLOAD = 0x55;
const FRAME_DOWNLOAD = 0x44;
const FRAME_HEADER = 37;

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
  maxReconnectAttempts: Infinity, // reconnect attempts in a row before giving up (status "closed")
  backoffInitialMs: 500,
  backoffMaxMs: 15_000,
  chunkedUploadOver: 1024 * 1024, // uploadFile() uses chunks above this size, one api message below
  uploadResumeAttempts: 8, // reconnect attempts an interrupted upload waits for (and resumes without progress)
  uploadResumeTimeoutMs: 60_000, // how long a resumed upload waits for the router to release it from the old connection
  onLogs: null, // (lines: string[]) => void, for {"type":"logs"}
  onStatus: null, // ({status, connectionId, attempt, error}) => void
  onError: null, // (message) => void, for errors that answer no request
  autoPipelineIds: true, // sendOffer() adds the loaded pipelines as initialParameters.pipeline_ids
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
    /**
     * The pipelines (instance ids, as `pipeline_ids` in offers wants them) this client knows the
     * backend loaded or is loading, or null. Kept across reconnects: the backend keeps its pipeline.
     */
    this.pipelineIds = null;
    /** The `initialParameters` of the latest offer sent (null when it carried none). */
    this.lastOfferParameters = null;
    this._ws = null;
    this._pending = new Map(); // request_id -> {resolve, reject, timer}
    this._seq = 0;
    this._attempt = 0;
    this._closedByUser = false;
    this._fatal = null;
    this._pingTimer = null;
    this._retryTimer = null;
    this._readyWaiters = [];
    /** Chunked uploads in progress, by upload id (kept across reconnects, to resume them). */
    this.uploads = new Map();
    this._binaryAcks = new Map(); // "uploadId:seq" -> waiter, for binary chunks on this connection
    this._binaryQueue = []; // the same waiters, in the order sent (errors answer the oldest)
    this._downloads = new Map(); // download id -> state, for chunked downloads on this connection
  }

  /** Opens the socket (if needed) and resolves with the connection id once `ready` arrives. */
  connect() {
    if (this.status === Status.OPEN) return Promise.resolve(this.connectionId);
    this._closedByUser = false;
    this._fatal = null;
    if (!this._ws && !this._retryTimer) this._attempt = 0;
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
  request(message, { timeoutMs, _download = null } = {}) {
    if (this.status !== Status.OPEN || !this._ws || this._ws.readyState !== 1) {
      return Promise.reject(new ScopeError("WebSocket not connected", { code: DISCONNECTED }));
    }
    const requestId = `req_${++this._seq}_${Math.random().toString(36).slice(2, 8)}`;
    const timeout = timeoutMs ?? this.options.requestTimeoutMs;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._pending.delete(requestId);
        reject(new ScopeError(`Request ${message.type} timed out after ${timeout} ms`, { code: "CLIENT_TIMEOUT" }));
      }, timeout);
      this._pending.set(requestId, { resolve, reject, timer, download: _download });
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
    throwIfFailed(method, path, reply);
    this._observePipeline(method, path, body, reply.data);
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

  /**
   * Uploads a file to the backend and resolves with the final `api_response` (rejects with a
   * ScopeError carrying `status` when it is 400 or more).
   *
   * `file` is a Blob/File, an ArrayBuffer or a typed array. Up to `chunkedUploadOver` bytes it goes
   * in one `api` message (`_base64_content`); above, in acknowledged chunks: `upload_start`, chunks
   * with at most the router's `window` unacknowledged (binary frames, or base64 JSON with
   * `binary: false`), then `upload_finish`, after which the router checks the sha256 and sends one
   * request to the backend. When the socket drops mid-upload, the upload waits for the client to
   * reconnect and resumes where the router says it got to (`upload_status`); it gives up after
   * `resumeAttempts` reconnect attempts, or when the client is closed.
   *
   * `onProgress({ phase, loaded, total, sha256, uploadId, resumes, bytesPerSecond })` is called as
   * chunks are acknowledged; phase is "hashing", "uploading", "resuming", "finishing" or "done".
   * `loaded` counts acknowledged bytes. `bytesPerSecond` is the speed while "uploading" (over the
   * last few seconds of acknowledgements) and, at "finishing" and "done", the average over the time
   * spent sending (waits for a reconnect left out); null until it can be told.
   */
  async uploadFile(
    path,
    file,
    {
      contentType,
      onProgress = null,
      binary = true,
      method = "POST",
      chunkedUploadOver = this.options.chunkedUploadOver,
      window: maxWindow = Infinity,
      resumeAttempts = this.options.uploadResumeAttempts,
      timeoutMs,
    } = {},
  ) {
    if (this.status === Status.IDLE || this.status === Status.CLOSED) {
      throw new ScopeError("WebSocket not connected", { code: DISCONNECTED });
    }
    const source = fileSource(file, contentType);
    const u = {
      path,
      method,
      size: source.size,
      contentType: source.type,
      sha256: null,
      binary,
      source,
      id: null,
      chunkSize: 0,
      chunks: 0,
      window: 0,
      acked: [],
      ackedCount: 0,
      ackedBytes: 0,
      low: 0, // every chunk below this one is acknowledged
      finishing: false,
      resumes: 0,
      epoch: 0, // bumped on every (re)send pass; late results of an older pass are ignored
    };
    const speed = transferRate();
    const report = (phase, loaded) => {
      const bytesPerSecond = speed.sample(phase, loaded);
      callSafely(onProgress, {
        phase,
        loaded,
        total: u.size,
        sha256: u.sha256,
        uploadId: u.id,
        resumes: u.resumes,
        bytesPerSecond,
      });
    };

    report("hashing", 0);
    let whole = await source.read(0, source.size);
    u.sha256 = await sha256Hex(whole);
    if (u.size <= chunkedUploadOver) {
      report("uploading", 0);
      const body = { _base64_content: bytesToBase64(whole), _content_type: u.contentType };
      whole = null;
      const reply = await this.request({ type: "api", method, path, body }, { timeoutMs });
      throwIfFailed(method, path, reply);
      report("done", u.size);
      return reply;
    }

    whole = null; // chunks are read from the source as they go

    const start = async () => {
      const ready = await this.request(
        { type: "upload_start", method, path, content_type: u.contentType, size: u.size, sha256: u.sha256 },
        { timeoutMs },
      );
      if (u.id) this.uploads.delete(u.id);
      u.id = ready.upload_id;
      u.chunkSize = ready.chunk_size;
      u.chunks = ready.chunks;
      u.window = Math.max(1, Math.min(ready.window, maxWindow));
      u.acked = new Array(u.chunks).fill(false);
      u.ackedCount = 0;
      u.ackedBytes = 0;
      u.low = 0;
      this.uploads.set(u.id, u);
    };

    let restarted = false;
    let interrupted = false;
    let stalls = 0;
    let ackedAtDrop = -1;
    try {
      for (;;) {
        try {
          if (interrupted) {
            report("resuming", u.ackedBytes);
            await this._waitForReconnect(resumeAttempts, `upload to ${path}`);
            interrupted = false;
            const progress = u.id ? await this._uploadProgress(u) : null;
            if (progress === null) {
              // The router does not know it: never started, finished, or expired (or the router restarted).
              if (u.finishing) {
                throw new ScopeError(
                  `The connection dropped while the upload to ${path} was being finished; the router no longer knows it, so whether the backend got it is unknown`,
                  { code: "UPLOAD_OUTCOME_UNKNOWN" },
                );
              }
              if (u.id) {
                if (restarted) throw new ScopeError(`The router lost the upload to ${path} twice`, { code: "UPLOAD_UNKNOWN" });
                restarted = true;
              }
              await start();
            } else {
              u.resumes += 1;
              this._applyProgress(u, progress);
            }
          } else if (!u.id) {
            await start();
          }
          if (u.low < u.chunks) {
            report("uploading", u.ackedBytes);
            await this._sendChunks(u, timeoutMs, () => report("uploading", u.ackedBytes));
          }
          u.finishing = true;
          report("finishing", u.size);
          let reply;
          try {
            reply = await this.request(
              { type: "upload_finish", upload_id: u.id },
              { timeoutMs: timeoutMs ?? Math.max(this.options.requestTimeoutMs, 120_000) },
            );
          } catch (e) {
            if (e.code === "UPLOAD_FINISHING") {
              throw new ScopeError(
                `The upload to ${path} was already being finished on a connection that dropped; whether the backend got it is unknown`,
                { code: "UPLOAD_OUTCOME_UNKNOWN", reply: e.reply },
              );
            }
            throw e;
          }
          throwIfFailed(method, path, reply);
          report("done", u.size);
          return reply;
        } catch (e) {
          if (e?.code !== DISCONNECTED) throw e;
          // The socket dropped: resume after the client reconnects, unless drops keep coming with no progress.
          stalls = u.ackedCount === ackedAtDrop ? stalls + 1 : 0;
          ackedAtDrop = u.ackedCount;
          if (stalls > resumeAttempts) {
            throw new ScopeError(`Upload to ${path} made no progress over ${stalls} reconnects: ${e.message}`, {
              code: "UPLOAD_INTERRUPTED",
            });
          }
          interrupted = true;
        }
      }
    } finally {
      if (u.id) this.uploads.delete(u.id);
    }
  }

  /**
   * Downloads `path` (a GET through the socket) as a Blob. Large binary answers come as a header and
   * numbered chunks (`"_chunked": true`; binary frames unless `binary: false`), each acknowledged with
   * `download_ack`; `download_done` follows the last chunk with the length and sha256, which the
   * whole is checked against (the router streams the body, so it knows them only then). Small answers come
   * in one message, as the router sends them. Rejects on status 400 or more, on a checksum mismatch,
   * when the socket closes, and when no chunk arrives for `timeoutMs`.
   *
   * `onProgress({ loaded, total, sha256, downloadId, chunks, binary })`: total and chunks are the
   * header's (null when the backend did not say its length), sha256 is null until `download_done`.
   */
  async downloadFile(path, { onProgress = null, binary = true, timeoutMs } = {}) {
    const idle = timeoutMs ?? this.options.requestTimeoutMs;
    const dl = { header: null, parts: [], next: 0, loaded: 0, timer: null, idle, onProgress, resolve: null, reject: null };
    dl.done = new Promise((resolve, reject) => {
      dl.resolve = resolve;
      dl.reject = reject;
    });
    dl.done.catch(() => {}); // observed below; never an unhandled rejection
    const message = { type: "api", method: "GET", path, _chunked: true };
    if (binary) message._binary = true;
    const reply = await this.request(message, { timeoutMs, _download: dl });
    throwIfFailed("GET", path, reply);
    if (reply._chunked !== true) {
      // Under the router's threshold (or not binary): the original single-message form.
      const blob =
        typeof reply._base64_content === "string"
          ? base64ToBlob(reply._base64_content, reply._content_type)
          : new Blob([JSON.stringify(reply.data ?? null)], { type: "application/json" });
      callSafely(onProgress, { loaded: blob.size, total: blob.size, sha256: null, downloadId: null, chunks: 0, binary: false });
      return blob;
    }
    return dl.done;
  }

  /** The backend's ICE servers: `{ iceServers: [...] }`. */
  async getIceServers({ timeoutMs } = {}) {
    const reply = await this.request({ type: "get_ice_servers" }, { timeoutMs });
    return reply.data;
  }

  /**
   * Relays an SDP offer; resolves with `{ sdp, type, sessionId }` and remembers the session.
   * `initialParameters` go through `offerParameters()`, so they name the loaded pipelines
   * (`pipeline_ids`) as real Scope needs; `pipelineIds` overrides the ones this client knows.
   */
  async sendOffer(sdp, type = "offer", initialParameters = undefined, { timeoutMs, pipelineIds } = {}) {
    const message = { type: "offer", sdp, sdp_type: type };
    const params = this.offerParameters(initialParameters, pipelineIds);
    if (params !== undefined && params !== null) {
      message.initialParameters = params;
    }
    this.lastOfferParameters = params ?? null;
    const reply = await this.request(message, { timeoutMs });
    this.sessionId = reply.sessionId;
    return { sdp: reply.sdp, type: reply.sdp_type, sessionId: reply.sessionId };
  }

  /**
   * `initialParameters` as an offer should carry them, the way the Scope frontend builds them:
   * when they name no pipelines (`pipeline_ids` missing or empty), a copy with `pipeline_ids` set
   * to `pipelineIds`, else to the pipelines this client knows are loaded (`this.pipelineIds`,
   * unless the `autoPipelineIds` option is off). Returned unchanged when no pipeline is known.
   */
  offerParameters(initialParameters = undefined, pipelineIds = undefined) {
    const given =
      initialParameters && typeof initialParameters === "object" && !Array.isArray(initialParameters)
        ? initialParameters
        : null;
    if (given && Array.isArray(given.pipeline_ids) && given.pipeline_ids.length > 0) return given;
    if (initialParameters != null && !given) return initialParameters; // not an object: the server says what is wrong
    const ids = pipelineIdList(pipelineIds) ?? (this.options.autoPipelineIds ? this.pipelineIds : null);
    if (!ids) return initialParameters;
    return { ...(given ?? {}), pipeline_ids: [...ids] };
  }

  /** The backend's `GET /api/v1/pipeline/status`: `{ status, pipeline_id, load_params, … }`. */
  async pipelineStatus({ timeoutMs } = {}) {
    return this.api("GET", PIPELINE_STATUS_PATH, null, { timeoutMs });
  }

  /**
   * Loads `pipelineIds` (a pipeline id or an array of them: a chain) with `POST
   * /api/v1/pipeline/load` and waits until the backend reports them loaded; resolves with that
   * status and remembers the ids for offers. The backend only starts the load (its answer comes
   * first), so this polls `GET /api/v1/pipeline/status` like the Scope frontend does: through
   * "not_loaded" (the load not begun yet) and "loading" to "loaded"; "error" rejects (code
   * PIPELINE_LOAD_FAILED). Options: see `waitForPipeline()`, plus `loadParams`.
   */
  async loadPipeline(pipelineIds, { loadParams = null, ...wait } = {}) {
    const ids = pipelineIdList(pipelineIds);
    if (!ids) throw new TypeError("loadPipeline() takes a pipeline id or a non-empty array of them");
    const body = { pipeline_ids: ids };
    if (loadParams) body.load_params = loadParams;
    await this.api("POST", PIPELINE_LOAD_PATH, body, { timeoutMs: wait.requestTimeoutMs });
    return this.waitForPipeline({ ...wait, expect: ids, loadParams });
  }

  /**
   * Polls `GET /api/v1/pipeline/status` until a pipeline is loaded (one of `expect`, when given)
   * and resolves with that status; resolves with null when `isCancelled()` turns true. Rejects when
   * the status is "error" (code PIPELINE_LOAD_FAILED; the server log says why: the status's `error`
   * is always null), when nothing is loading any more (the backend reports "error" only once, to
   * whoever asks first), and after `timeoutMs`.
   *
   * Options: `expect` (pipeline ids), `timeoutMs` (120 s), `pollIntervalMs` (1 s), `notLoadedGraceMs`
   * (how long "not_loaded" may last before the load has visibly started; 15 s), `onStatus(status)`,
   * `isCancelled()`, `requestTimeoutMs` (per status request).
   */
  async waitForPipeline({
    expect = null,
    loadParams = null,
    timeoutMs = 120_000,
    pollIntervalMs = 1000,
    notLoadedGraceMs = 15_000,
    onStatus = null,
    isCancelled = null,
    requestTimeoutMs,
  } = {}) {
    const ids = pipelineIdList(expect);
    const label = ids ? ids.join(" → ") : "(any)";
    const started = Date.now();
    let sawLoading = false;
    for (;;) {
      const status = await this.pipelineStatus({ timeoutMs: requestTimeoutMs });
      if (isCancelled?.()) return null;
      callSafely(onStatus, status);
      const state = status?.status;
      const id = typeof status?.pipeline_id === "string" ? status.pipeline_id : null;
      if (state === "loaded" && (!ids || id === null || ids.includes(id)) && sameLoadParams(status, loadParams)) {
        this.pipelineIds = ids ?? (id ? [id] : this.pipelineIds);
        return status;
      }
      if (state === "error") {
        this.pipelineIds = null; // a failed load also unloads what was loaded before it
        throw new ScopeError(`Pipeline ${label} failed to load (the server log says why)`, {
          reply: status,
          code: "PIPELINE_LOAD_FAILED",
        });
      }
      if (state === "loading") sawLoading = true;
      if (state === "not_loaded" && (sawLoading || Date.now() - started > notLoadedGraceMs)) {
        this.pipelineIds = null;
        throw new ScopeError(`Pipeline ${label} is neither loaded nor loading: the load failed or was replaced (see the server log)`, {
          reply: status,
          code: "PIPELINE_LOAD_FAILED",
        });
      }
      if (Date.now() - started > timeoutMs) {
        throw new ScopeError(`Pipeline ${label} did not load within ${Math.round(timeoutMs / 1000)} s (status ${state ?? "unknown"})`, {
          reply: status,
          code: "PIPELINE_LOAD_TIMEOUT",
        });
      }
      await new Promise((r) => setTimeout(r, pollIntervalMs));
      if (isCancelled?.()) return null;
    }
  }

  /** Learns which pipelines are loaded from the pipeline calls made through `api()`. */
  _observePipeline(method, path, body, data) {
    const route = String(path).split("?")[0];
    const verb = String(method).toUpperCase();
    if (verb === "POST" && route === PIPELINE_LOAD_PATH) {
      const ids = pipelineIdsOfLoad(body);
      if (ids) this.pipelineIds = ids;
    } else if (verb === "GET" && route === PIPELINE_STATUS_PATH && data?.status === "loaded") {
      const id = data.pipeline_id;
      if (typeof id === "string" && id && !this.pipelineIds?.includes(id)) this.pipelineIds = [id];
    }
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

  // === chunked transfers ===

  /**
   * Sends every chunk of `u` not yet acknowledged, never more than `window` past the lowest
   * unacknowledged one (so the router's window, which starts at its first missing chunk, always
   * holds, even when acknowledgements come back out of order). Resolves when all are acknowledged;
   * rejects with the first failure.
   */
  _sendChunks(u, timeoutMs, progressed) {
    const epoch = ++u.epoch;
    return new Promise((resolve, reject) => {
      let next = u.low;
      let failed = false;
      const pump = () => {
        if (failed || u.epoch !== epoch) return;
        while (u.low < u.chunks && u.acked[u.low]) u.low += 1;
        if (u.low >= u.chunks) {
          resolve();
          return;
        }
        next = Math.max(next, u.low);
        while (next < u.chunks && next < u.low + u.window) {
          const seq = next++;
          if (u.acked[seq]) continue;
          this._sendChunk(u, seq, timeoutMs).then(
            () => {
              if (u.epoch !== epoch) return;
              this._markAcked(u, seq);
              progressed();
              pump();
            },
            (e) => {
              if (failed || u.epoch !== epoch) return;
              failed = true;
              u.epoch += 1; // results still in flight belong to a failed pass
              reject(e);
            },
          );
        }
      };
      pump();
    });
  }

  _markAcked(u, seq) {
    if (u.acked[seq]) return;
    u.acked[seq] = true;
    u.ackedCount += 1;
    u.ackedBytes += Math.min(u.chunkSize, u.size - seq * u.chunkSize);
  }

  /** Sends one chunk (a binary frame, or base64 JSON) and resolves with its `upload_ack`. */
  async _sendChunk(u, seq, timeoutMs) {
    const begin = seq * u.chunkSize;
    const bytes = await u.source.read(begin, Math.min(u.size, begin + u.chunkSize));
    if (u.binary) {
      try {
        return await this._sendBinaryChunk(u.id, seq, bytes, timeoutMs);
      } catch (e) {
        if (e.code !== "BINARY_NOT_SUPPORTED") throw e;
        u.binary = false; // this router takes JSON chunks only
      }
    }
    const message = { type: "upload_chunk", upload_id: u.id, seq, data: bytesToBase64(bytes) };
    for (let retry = 0; ; retry++) {
      try {
        return await this.request(message, { timeoutMs });
      } catch (e) {
        // Text messages share the connection's rate limit; binary frames do not.
        if (e.code !== "RATE_LIMITED" || retry >= 20) throw e;
        await new Promise((r) => setTimeout(r, 50 * (retry + 1)));
      }
    }
  }

  /**
   * A binary chunk frame: 'U', the 32-character upload id, big-endian u32 seq, the bytes. Its
   * `upload_ack` carries no request_id and is matched by upload_id and seq; an error reply carries
   * neither, and answers the oldest binary chunk still waiting (the router answers them in order).
   */
  _sendBinaryChunk(uploadId, seq, bytes, timeoutMs) {
    const ws = this._ws;
    if (this.status !== Status.OPEN || !ws || ws.readyState !== 1) {
      return Promise.reject(new ScopeError("WebSocket not connected", { code: DISCONNECTED }));
    }
    const frame = new Uint8Array(FRAME_HEADER + bytes.length);
    frame[0] = FRAME_UPLOAD;
    for (let i = 0; i < 32; i++) frame[1 + i] = uploadId.charCodeAt(i);
    new DataView(frame.buffer).setUint32(33, seq, false);
    frame.set(bytes, FRAME_HEADER);
    const timeout = timeoutMs ?? this.options.requestTimeoutMs;
    return new Promise((resolve, reject) => {
      const waiter = { key: `${uploadId}:${seq}`, resolve, reject, timer: null };
      waiter.timer = setTimeout(() => {
        this._dropBinaryWaiter(waiter);
        reject(new ScopeError(`Upload chunk ${seq} not acknowledged within ${timeout} ms`, { code: "CLIENT_TIMEOUT" }));
      }, timeout);
      this._binaryAcks.set(waiter.key, waiter);
      this._binaryQueue.push(waiter);
      try {
        ws.send(frame);
      } catch (e) {
        clearTimeout(waiter.timer);
        this._dropBinaryWaiter(waiter);
        reject(new ScopeError(`Send failed: ${e.message ?? e}`, { code: DISCONNECTED }));
      }
    });
  }

  _dropBinaryWaiter(waiter) {
    if (this._binaryAcks.get(waiter.key) === waiter) this._binaryAcks.delete(waiter.key);
    const i = this._binaryQueue.indexOf(waiter);
    if (i >= 0) this._binaryQueue.splice(i, 1);
  }

  /** Resolves once the client is open again; rejects when it closes or after `maxAttempts` reconnect attempts. */
  _waitForReconnect(maxAttempts, what) {
    // OPEN with a closing socket: the close event (then a reconnect) is still to come.
    if (this.status === Status.OPEN && this._ws?.readyState === 1) return Promise.resolve();
    const gaveUp = (why) => new ScopeError(`${what} interrupted: ${why}`, { code: "UPLOAD_INTERRUPTED" });
    if (this.status === Status.CLOSED) return Promise.reject(gaveUp("the client is closed"));
    if (this.status === Status.IDLE) return Promise.reject(gaveUp("the client is not connected"));
    return new Promise((resolve, reject) => {
      const onStatus = ({ detail }) => {
        if (detail.status === Status.OPEN) {
          this.removeEventListener("status", onStatus);
          resolve();
        } else if (detail.status === Status.CLOSED) {
          this.removeEventListener("status", onStatus);
          reject(gaveUp(detail.error ?? "the client is closed"));
        } else if (detail.status === Status.RECONNECTING && detail.attempt > maxAttempts) {
          this.removeEventListener("status", onStatus);
          reject(gaveUp(`no connection after ${maxAttempts} reconnect attempts`));
        }
      };
      this.addEventListener("status", onStatus);
    });
  }

  /**
   * The router's `upload_progress` for `u`, or null when it does not know the upload. Right after a
   * drop the router may not have noticed that the old connection is gone (`UPLOAD_NOT_OWNED`): ask
   * again until `uploadResumeTimeoutMs`.
   */
  async _uploadProgress(u) {
    const deadline = Date.now() + this.options.uploadResumeTimeoutMs;
    for (;;) {
      try {
        return await this.request({ type: "upload_status", upload_id: u.id });
      } catch (e) {
        if (e.code === "UPLOAD_UNKNOWN") return null;
        if (e.code !== "UPLOAD_NOT_OWNED" || Date.now() > deadline) throw e;
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  }

  /** Everything below the router's `next_seq` has arrived; the rest is sent again (duplicates are harmless). */
  _applyProgress(u, progress) {
    const upTo = progress.complete ? u.chunks : Math.min(u.chunks, progress.next_seq ?? 0);
    for (let seq = 0; seq < upTo; seq++) this._markAcked(u, seq);
    while (u.low < u.chunks && u.acked[u.low]) u.low += 1;
  }

  /** A chunk of a chunked download: store it, acknowledge (cumulatively) and finish when all are here. */
  _onDownloadChunk(id, seq, bytes) {
    const dl = this._downloads.get(id);
    if (!dl || !Number.isInteger(seq) || seq < dl.next || dl.parts[seq]) return; // unknown, or a repeat
    dl.parts[seq] = bytes;
    dl.loaded += bytes.length;
    const before = dl.next;
    while (dl.parts[dl.next]) dl.next += 1;
    this._armDownloadTimer(id, dl);
    // Cumulative: acknowledges every chunk up to seq. Chunks come in order, so that is each one.
    if (dl.next > before) this._sendRaw({ type: "download_ack", download_id: id, seq: dl.next - 1 });
    const h = dl.header;
    callSafely(dl.onProgress, {
      loaded: dl.loaded,
      total: h._content_length,
      sha256: h.sha256,
      downloadId: id,
      chunks: h.chunks,
      binary: h.binary === true,
    });
    if (dl.last && dl.next >= dl.last.chunks) this._finishDownload(id, dl);
  }

  /** The end of a chunked download: its length, chunk count and sha256; finish once every chunk is here. */
  _onDownloadDone(msg) {
    const dl = this._downloads.get(msg.download_id);
    if (!dl || !Number.isInteger(msg.chunks)) return;
    dl.last = msg;
    dl.header = { ...dl.header, sha256: msg.sha256, _content_length: msg._content_length, chunks: msg.chunks };
    callSafely(dl.onProgress, {
      loaded: dl.loaded,
      total: msg._content_length,
      sha256: msg.sha256,
      downloadId: msg.download_id,
      chunks: msg.chunks,
      binary: dl.header.binary === true,
    });
    if (dl.next >= msg.chunks) this._finishDownload(msg.download_id, dl);
  }

  _finishDownload(id, dl) {
    clearTimeout(dl.timer);
    this._downloads.delete(id);
    this._assembleDownload(id, dl).catch((e) => dl.reject(e));
  }

  async _assembleDownload(id, dl) {
    const h = dl.header;
    const bytes = new Uint8Array(dl.loaded);
    let at = 0;
    for (const p of dl.parts) {
      bytes.set(p, at);
      at += p.length;
    }
    dl.parts = [];
    if (bytes.length !== h._content_length) {
      dl.reject(new ScopeError(`Download ${id}: got ${bytes.length} bytes, expected ${h._content_length}`, { code: "DOWNLOAD_INCOMPLETE" }));
      return;
    }
    const actual = await sha256Hex(bytes);
    if (typeof h.sha256 === "string" && actual !== h.sha256.toLowerCase()) {
      dl.reject(new ScopeError(`Download ${id}: sha256 ${actual}, expected ${h.sha256}`, { code: "DOWNLOAD_CHECKSUM_MISMATCH" }));
      return;
    }
    dl.resolve(new Blob([bytes], { type: h._content_type || "application/octet-stream" }));
  }

  _armDownloadTimer(id, dl) {
    clearTimeout(dl.timer);
    dl.timer = setTimeout(() => {
      if (this._downloads.get(id) !== dl) return;
      this._downloads.delete(id);
      dl.reject(new ScopeError(`Download ${id}: no chunk for ${dl.idle} ms`, { code: "CLIENT_TIMEOUT" }));
    }, dl.idle);
  }

  _failDownloads(reason, code) {
    for (const [, dl] of this._downloads) {
      clearTimeout(dl.timer);
      dl.reject(new ScopeError(reason, { code }));
    }
    this._downloads.clear();
  }

  /** Sends a message that expects no reply (no request_id); dropped when the socket is not open. */
  _sendRaw(message) {
    try {
      if (this._ws && this._ws.readyState === 1) this._ws.send(JSON.stringify(message));
    } catch {
      // The close that follows fails whatever waits on this socket.
    }
  }

  _onBinary(data) {
    const bytes = ArrayBuffer.isView(data)
      ? new Uint8Array(data.buffer, data.byteOffset, data.byteLength)
      : data instanceof ArrayBuffer
        ? new Uint8Array(data)
        : null;
    if (!bytes || bytes.length < FRAME_HEADER || bytes[0] !== FRAME_DOWNLOAD) {
      this._emitError(`Unexpected binary frame from server (${bytes ? bytes.length : "unreadable"} bytes)`);
      return;
    }
    const id = String.fromCharCode(...bytes.subarray(1, 33));
    const seq = new DataView(bytes.buffer, bytes.byteOffset, FRAME_HEADER).getUint32(33, false);
    this._onDownloadChunk(id, seq, bytes.subarray(FRAME_HEADER));
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
    ws.binaryType = "arraybuffer";
    ws.onmessage = (event) => {
      if (this._ws !== ws) return;
      if (typeof event.data === "string") this._onMessage(event.data);
      else this._onBinary(event.data);
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

    if (msg.type === "download_done" && msg.request_id === undefined) {
      this._onDownloadDone(msg);
      return;
    }
    if (msg.type === "download_chunk" && msg.request_id === undefined) {
      if (typeof msg.data === "string") this._onDownloadChunk(msg.download_id, msg.seq, base64ToBytes(msg.data));
      return;
    }
    if (msg.type === "upload_ack" && msg.request_id === undefined) {
      // A binary chunk's acknowledgement.
      const waiter = this._binaryAcks.get(`${msg.upload_id}:${msg.seq}`);
      if (waiter) {
        clearTimeout(waiter.timer);
        this._dropBinaryWaiter(waiter);
        waiter.resolve(msg);
      }
      return;
    }
    if (msg.type === "error" && msg.request_id === undefined) {
      if (this._binaryQueue.length > 0 && CHUNK_ERROR_CODES.test(msg.code ?? "")) {
        const waiter = this._binaryQueue[0];
        clearTimeout(waiter.timer);
        this._dropBinaryWaiter(waiter);
        waiter.reject(new ScopeError(msg.error ?? "Upload chunk refused", { reply: msg, code: msg.code }));
        return;
      }
      if (typeof msg.download_id === "string" && this._downloads.has(msg.download_id)) {
        // DOWNLOAD_ACK_TIMEOUT or DOWNLOAD_FAILED: that download ends.
        const dl = this._downloads.get(msg.download_id);
        this._downloads.delete(msg.download_id);
        clearTimeout(dl.timer);
        dl.reject(new ScopeError(msg.error ?? "Download failed", { reply: msg, code: msg.code ?? null }));
        return;
      }
    }

    const pending = msg.request_id !== undefined ? this._pending.get(msg.request_id) : undefined;
    if (pending) {
      this._pending.delete(msg.request_id);
      clearTimeout(pending.timer);
      if (pending.download && msg.type === "api_response" && msg._chunked === true && typeof msg.download_id === "string") {
        // Registered before anyone awaits the header, so no chunk can arrive unclaimed.
        pending.download.header = msg;
        this._downloads.set(msg.download_id, pending.download);
        this._armDownloadTimer(msg.download_id, pending.download);
      }
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
    if (this._attempt >= this.options.maxReconnectAttempts) {
      const why = `${reason}; gave up after ${this._attempt} reconnect attempts`;
      this._failWaiters(why);
      this._setStatus(Status.CLOSED, why);
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

  /** Fails everything waiting on this socket: requests, binary chunks and downloads. */
  _failPending(reason) {
    for (const [, p] of this._pending) {
      clearTimeout(p.timer);
      p.reject(new ScopeError(reason, { code: DISCONNECTED }));
    }
    this._pending.clear();
    for (const w of this._binaryQueue.splice(0)) {
      clearTimeout(w.timer);
      w.reject(new ScopeError(reason, { code: DISCONNECTED }));
    }
    this._binaryAcks.clear();
    this._failDownloads(reason, DISCONNECTED);
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

/** A pipeline id or an array of them as a non-empty array of strings, or null. */
function pipelineIdList(ids) {
  const list = typeof ids === "string" ? [ids] : Array.isArray(ids) ? ids : null;
  if (!list || list.length === 0 || !list.every((id) => typeof id === "string" && id)) return null;
  return [...list];
}

/** The instance ids a `POST /api/v1/pipeline/load` body asks for: `pipelines[].node_id`, else `pipeline_ids`. */
function pipelineIdsOfLoad(body) {
  if (!body || typeof body !== "object") return null;
  if (Array.isArray(body.pipelines) && body.pipelines.length > 0) {
    return pipelineIdList(body.pipelines.map((p) => p?.node_id));
  }
  return pipelineIdList(body.pipeline_ids);
}

/** True when no load params were asked for, or the status reports the same ones. */
function sameLoadParams(status, loadParams) {
  if (!loadParams) return true;
  return canonicalJson(status?.load_params ?? {}) === canonicalJson(loadParams);
}

/** JSON with object keys sorted at every level, for comparing values. */
function canonicalJson(v) {
  if (Array.isArray(v)) return `[${v.map(canonicalJson).join(",")}]`;
  if (v && typeof v === "object") {
    return `{${Object.keys(v)
      .sort()
      .map((k) => `${JSON.stringify(k)}:${canonicalJson(v[k])}`)
      .join(",")}}`;
  }
  return JSON.stringify(v ?? null);
}

function stringify(v) {
  return typeof v === "string" ? v : JSON.stringify(v);
}

/** Throws a ScopeError for an api_response whose status is 400 or more. */
function throwIfFailed(method, path, reply) {
  if (typeof reply.status === "number" && reply.status >= 400) {
    const detail = reply.error ?? reply.data?.detail ?? reply.data;
    const text = typeof detail === "string" ? detail : JSON.stringify(detail);
    throw new ScopeError(`${method} ${path} failed (${reply.status}): ${text}`, {
      reply,
      status: reply.status,
      code: reply.code ?? null,
    });
  }
}

/**
 * The speed of a transfer from its progress reports (`sample(phase, loaded)` returns bytes per second,
 * or null): while "uploading", over the last `windowMs` of samples; at "finishing" and "done", the
 * average over every stretch of "uploading" (so the time spent waiting to resume is not counted).
 */
function transferRate(windowMs = 3000) {
  const now = () => globalThis.performance?.now?.() ?? Date.now();
  let samples = []; // [time, loaded] of the current stretch, oldest first
  let stretch = null; // { from, t0, loaded, t } while "uploading"
  let sentBytes = 0;
  let sentMs = 0;
  return {
    sample(phase, loaded) {
      const t = now();
      if (phase === "uploading") {
        if (!stretch) stretch = { from: loaded, t0: t, loaded, t };
        stretch.loaded = loaded;
        stretch.t = t;
        samples.push([t, loaded]);
        while (samples.length > 2 && t - samples[1][0] >= windowMs) samples.shift();
        const [t0, l0] = samples[0];
        return t > t0 ? ((loaded - l0) * 1000) / (t - t0) : null;
      }
      if (stretch) {
        // A stretch ends: at the finish everything was sent (a single-message upload is one reply away).
        if (phase === "finishing" || phase === "done") {
          stretch.loaded = loaded;
          stretch.t = t;
        }
        sentBytes += stretch.loaded - stretch.from;
        sentMs += stretch.t - stretch.t0;
        stretch = null;
        samples = [];
      }
      if ((phase === "finishing" || phase === "done") && sentMs > 0) return (sentBytes * 1000) / sentMs;
      return null;
    },
  };
}

/** Calls a user callback; its exceptions surface asynchronously instead of aborting a transfer. */
function callSafely(fn, arg) {
  if (!fn) return;
  try {
    fn(arg);
  } catch (e) {
    queueMicrotask(() => {
      throw e;
    });
  }
}

/** A Blob/File, ArrayBuffer or typed array as `{ size, type, read(begin, end) }` (read resolves to a Uint8Array). */
function fileSource(file, contentType) {
  if (typeof Blob !== "undefined" && file instanceof Blob) {
    return {
      size: file.size,
      type: contentType || file.type || "application/octet-stream",
      read: async (begin, end) => new Uint8Array(await file.slice(begin, end).arrayBuffer()),
    };
  }
  let bytes;
  if (file instanceof ArrayBuffer) bytes = new Uint8Array(file);
  else if (ArrayBuffer.isView(file)) bytes = new Uint8Array(file.buffer, file.byteOffset, file.byteLength);
  else throw new TypeError("uploadFile() takes a Blob, a File, an ArrayBuffer or a typed array");
  return {
    size: bytes.length,
    type: contentType || "application/octet-stream",
    read: (begin, end) => bytes.subarray(begin, end),
  };
}

function base64ToBytes(b64) {
  const bin = atob(b64);
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  return bytes;
}

function base64ToBlob(b64, type = "application/octet-stream") {
  return new Blob([base64ToBytes(b64)], { type });
}

function bytesToBase64(bytes) {
  let bin = "";
  const chunk = 0x8000;
  for (let i = 0; i < bytes.length; i += chunk) {
    bin += String.fromCharCode.apply(null, bytes.subarray(i, i + chunk));
  }
  return btoa(bin);
}

async function blobToBase64(blob) {
  return bytesToBase64(new Uint8Array(await blob.arrayBuffer()));
}

/** Lowercase hex sha256 of `bytes` (a Uint8Array): WebCrypto where there is one, else the JS below. */
export async function sha256Hex(bytes) {
  const subtle = globalThis.crypto?.subtle;
  const digest = subtle ? new Uint8Array(await subtle.digest("SHA-256", bytes)) : sha256Js(bytes);
  let hex = "";
  for (const b of digest) hex += b.toString(16).padStart(2, "0");
  return hex;
}

// SHA-256 (FIPS 180-4) for pages without WebCrypto: `crypto.subtle` exists only in secure contexts
// (https, or http on localhost), and the router may serve this page over plain http on a LAN address.
const K256 = new Uint32Array([
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98, 0x12835b01,
  0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc,
  0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147,
  0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
  0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116, 0x1e376c08,
  0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208,
  0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
]);

function sha256Js(data) {
  const h = new Uint32Array([0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19]);
  const w = new Uint32Array(64);
  const bits = data.length * 8;
  const padded = new Uint8Array(Math.ceil((data.length + 9) / 64) * 64);
  padded.set(data);
  padded[data.length] = 0x80;
  const view = new DataView(padded.buffer);
  view.setUint32(padded.length - 8, Math.floor(bits / 2 ** 32), false);
  view.setUint32(padded.length - 4, bits >>> 0, false);
  const rotr = (x, n) => (x >>> n) | (x << (32 - n));
  for (let at = 0; at < padded.length; at += 64) {
    for (let i = 0; i < 16; i++) w[i] = view.getUint32(at + i * 4, false);
    for (let i = 16; i < 64; i++) {
      const s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >>> 3);
      const s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >>> 10);
      w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    let [a, b, c, d, e, f, g, hh] = h;
    for (let i = 0; i < 64; i++) {
      const t1 = (hh + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + K256[i] + w[i]) >>> 0;
      const t2 = ((rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c))) >>> 0;
      hh = g;
      g = f;
      f = e;
      e = (d + t1) >>> 0;
      d = c;
      c = b;
      b = a;
      a = (t1 + t2) >>> 0;
    }
    h[0] += a;
    h[1] += b;
    h[2] += c;
    h[3] += d;
    h[4] += e;
    h[5] += f;
    h[6] += g;
    h[7] += hh;
  }
  const out = new Uint8Array(32);
  const outView = new DataView(out.buffer);
  for (let i = 0; i < 8; i++) outView.setUint32(i * 4, h[i], false);
  return out;
}
