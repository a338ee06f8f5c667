//! Parity with the real Scope server (docs/scope-server-checks.md) through the router: what an offer needs (a loaded pipeline, `initialParameters.pipeline_ids`), trickled candidates and forgotten sessions, pipeline load rules and status order, `/health`, assets. The `parity_*` tests also run against a real `daydream-scope` (`SCOPE_PARITY_BACKEND=<url>`, see scripts/real-scope.sh); the others need mock-scope's control plane.
//!
//! About 800 lines on purpose: one test per rule of the parity list, in the list's order,
//! each runnable against the real server; split, the list would no longer read as one.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // tests fail loudly by design

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

/// The backend under test: a fresh mock-scope, or the real server named by SCOPE_PARITY_BACKEND
/// (its log file in SCOPE_PARITY_BACKEND_LOG). `clients` is a mock-scope whose `/_mock/client`
/// makes real WebRTC offers (the backend itself when it is the mock).
struct Backend {
    url: String,
    mock: Option<Proc>,
    real_log: Option<PathBuf>,
    clients: Option<Proc>,
}

/// mock-scope on a free port with nothing loaded (whatever PIPELINE the environment has).
fn fresh_mock(extra: &[&str]) -> Proc {
    let mut cmd = Command::new(MOCK.as_str());
    cmd.args(["--listen", "127.0.0.1:0", "--quiet"])
        .args(extra)
        .env_remove("PIPELINE")
        .env_remove("DAYDREAM_SCOPE_ASSETS_DIR");
    Proc::start(cmd, "mock-scope listening on")
}

impl Backend {
    fn start(extra: &[&str]) -> Backend {
        match std::env::var("SCOPE_PARITY_BACKEND") {
            Ok(url) if !url.is_empty() => Backend {
                url: url.trim_end_matches('/').to_owned(),
                mock: None,
                real_log: std::env::var_os("SCOPE_PARITY_BACKEND_LOG").map(PathBuf::from),
                clients: Some(fresh_mock(&[])),
            },
            _ => {
                let m = fresh_mock(extra);
                Backend {
                    url: m.http(),
                    mock: Some(m),
                    real_log: None,
                    clients: None,
                }
            }
        }
    }

    fn is_real(&self) -> bool {
        self.mock.is_none()
    }

    fn mock(&self) -> &Proc {
        self.mock.as_ref().expect("a mock-scope backend")
    }

    fn clients(&self) -> &Proc {
        self.clients
            .as_ref()
            .or(self.mock.as_ref())
            .expect("a mock")
    }

    /// The default routes in front of this backend.
    fn router(&self) -> Proc {
        router(&repo().join("routes.yaml"), &self.url, &[])
    }

    /// The backend's log lines so far.
    fn log_lines(&self) -> Vec<String> {
        match (&self.mock, &self.real_log) {
            (Some(m), _) => m.lines.lock().unwrap().clone(),
            (None, Some(path)) => std::fs::read_to_string(path)
                .unwrap_or_default()
                .lines()
                .map(str::to_owned)
                .collect(),
            (None, None) => Vec::new(),
        }
    }

    /// Waits for a log line in Scope's format (`<asctime> - <logger> - <LEVEL> - <message>`);
    /// skipped against a real server whose log file was not given.
    async fn wait_log(&self, logger: &str, level: &str, message: &str) {
        if self.is_real() && self.real_log.is_none() {
            return;
        }
        let tail = format!(" - {logger} - {level} - {message}");
        eventually(format!("the backend to log {tail:?}"), async || {
            self.log_lines()
                .iter()
                .any(|l| l.ends_with(&tail) && is_asctime(&l[..l.len() - tail.len()]))
                .then_some(())
        })
        .await;
    }

    async fn status(&self) -> Value {
        let (code, v) = get_json(&format!("{}/api/v1/pipeline/status", self.url)).await;
        assert_eq!(code, 200, "{v}");
        v
    }

    /// Nothing loaded: loading an unknown pipeline unloads the others and ends in `error`, which
    /// the next status read turns into `not_loaded` (the mock starts that way anyway).
    async fn unload(&self) {
        let body = json!({"pipeline_ids": ["no-such-pipeline"]}).to_string();
        let (code, text) = http(
            &format!("{}/api/v1/pipeline/load", self.url),
            "POST",
            Some(&body),
        )
        .await;
        assert_eq!(code, 200, "{text}");
        eventually("the pipelines to be unloaded", async || {
            let s = self.status().await;
            (s["status"] == "not_loaded").then_some(())
        })
        .await;
    }

    /// Loads `id` and waits until the status says it is loaded.
    async fn load(&self, id: &str) {
        let body = json!({"pipeline_ids": [id]}).to_string();
        let (code, text) = http(
            &format!("{}/api/v1/pipeline/load", self.url),
            "POST",
            Some(&body),
        )
        .await;
        assert_eq!(code, 200, "{text}");
        eventually(format!("{id} to be loaded"), async || {
            let s = self.status().await;
            (s["status"] == "loaded" && s["pipeline_id"] == id).then_some(())
        })
        .await;
    }

    /// A real WebRTC offer (one VP8 video m-line) from a mock-scope test client: (client id, sdp).
    async fn client_offer(&self) -> (String, String) {
        let (code, body) = http(
            &format!("{}/_mock/client", self.clients().http()),
            "POST",
            None,
        )
        .await;
        assert_eq!(code, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        (
            v["id"].as_str().unwrap().to_owned(),
            v["sdp"].as_str().unwrap().to_owned(),
        )
    }

    async fn client_answer(&self, client: &str, sdp: &str) {
        let body = json!({ "sdp": sdp }).to_string();
        let url = format!("{}/_mock/client/{client}/answer", self.clients().http());
        let (code, text) = http(&url, "POST", Some(&body)).await;
        assert_eq!(code, 204, "{text}");
    }

    async fn client_status(&self, client: &str) -> Value {
        get_json(&format!("{}/_mock/client/{client}", self.clients().http()))
            .await
            .1
    }
}

/// `YYYY-MM-DD HH:MM:SS,mmm`, logging's default `asctime`.
fn is_asctime(s: &str) -> bool {
    matches_shape(s, "dddd-dd-dd dd:dd:dd,ddd")
}

/// `datetime.isoformat()` of a naive datetime: `YYYY-MM-DDTHH:MM:SS[.ffffff]`.
fn is_isoformat(s: &str) -> bool {
    matches_shape(s, "dddd-dd-ddTdd:dd:dd") || matches_shape(s, "dddd-dd-ddTdd:dd:dd.dddddd")
}

/// `str(uuid.uuid4())`.
fn is_uuid4(s: &str) -> bool {
    let hex_shape = s.len() == 36
        && s.chars().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_digit() || ('a'..='f').contains(&c),
        });
    hex_shape && s[14..15] == *"4" && matches!(&s[19..20], "8" | "9" | "a" | "b")
}

/// `shape` with `d` for any ASCII digit; every other character literal.
fn matches_shape(s: &str, shape: &str) -> bool {
    s.len() == shape.len()
        && s.chars().zip(shape.chars()).all(|(c, p)| match p {
            'd' => c.is_ascii_digit(),
            p => c == p,
        })
}

/// The backend's body the router put in an error's `detail`, parsed.
fn detail_json(v: &Value) -> Value {
    let text = v["detail"]
        .as_str()
        .unwrap_or_else(|| panic!("no detail in {v}"));
    serde_json::from_str(text).unwrap_or_else(|e| panic!("detail is not JSON ({e}): {v}"))
}

fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
    k.sort();
    k
}

async fn api_call(ws: &mut Ws, rid: &str, method: &str, path: &str, body: Option<Value>) -> Value {
    let mut msg = api(method, path);
    if let Some(b) = body {
        msg["body"] = b;
    }
    ws.call(rid, msg).await
}

/// An offer through the router with `initialParameters`; returns the reply.
/// Polls the pipeline status through the router until it says `want`; that status reply.
async fn status_until(ws: &mut Ws, want: &str) -> Value {
    let mut n = 0;
    eventually(format!("the status to say {want}"), async || {
        n += 1;
        let rid = format!("status-{want}-{n}");
        let s = api_call(ws, &rid, "GET", "/api/v1/pipeline/status", None).await;
        (s["data"]["status"] == want).then_some(s)
    })
    .await
}

async fn offer_with(ws: &mut Ws, rid: &str, sdp: &str, params: Value) -> Value {
    ws.call(
        rid,
        json!({"type": "offer", "sdp": sdp, "initialParameters": params}),
    )
    .await
}

#[tokio::test]
async fn parity_offer_before_any_pipeline_load_is_refused_with_the_backends_400() {
    let b = Backend::start(&[]);
    b.unload().await;
    let r = b.router();
    let mut ws = Ws::connect(&r.ws_url()).await;
    let v = ws
        .call("o", json!({"type": "offer", "sdp": SDP_OFFER}))
        .await;
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["error"], "Offer failed: 400", "{v}");
    // The router passes the backend's body on as `detail`.
    assert_eq!(
        detail_json(&v),
        json!({"detail": "Pipeline not loaded. Please load pipeline first."}),
        "{v}"
    );
    if !b.is_real() {
        assert!(
            mock_sessions(b.mock()).await.is_empty(),
            "no session is made"
        );
    }
    ws.assert_open().await;
}

#[tokio::test]
async fn parity_icecandidate_with_a_null_session_before_any_offer_has_no_session() {
    let b = Backend::start(&[]);
    let r = b.router();
    let mut ws = Ws::connect(&r.ws_url()).await;
    let v = ws
        .call("c", icecandidate_for(Value::Null, candidate()))
        .await;
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(
        v["error"], "No session ID available for ICE candidate",
        "{v}"
    );
    if !b.is_real() {
        assert!(mock_recent(b.mock(), "PATCH", "/").await.is_empty());
    }
    ws.assert_open().await;
}

#[tokio::test]
async fn parity_icecandidate_with_a_null_session_after_an_offer_reaches_that_session() {
    let b = Backend::start(&[]);
    b.load("passthrough").await;
    let r = b.router();
    let mut ws = Ws::connect(&r.ws_url()).await;
    let (_client, sdp) = b.client_offer().await;
    let a = offer_with(
        &mut ws,
        "o",
        &sdp,
        json!({"input_mode": "video", "pipeline_ids": ["passthrough"]}),
    )
    .await;
    assert_eq!(a["type"], "answer", "{a}");
    let sid = a["sessionId"].as_str().unwrap().to_owned();
    assert!(is_uuid4(&sid), "sessionId must be str(uuid.uuid4()): {sid}");

    let ack = ws
        .call("c", icecandidate_for(Value::Null, candidate()))
        .await;
    assert_eq!(
        ack,
        json!({"type": "icecandidate_ack", "status": "ok", "request_id": "c"})
    );
    if !b.is_real() {
        // The router percent-encodes every non-alphanumeric byte of the id (`-` too); the
        // backend decodes the path parameter, as starlette does.
        let patches: Vec<Value> = mock_recent(b.mock(), "PATCH", "/api/v1/webrtc/offer/")
            .await
            .into_iter()
            .filter(|p| {
                p["path"]
                    .as_str()
                    .unwrap()
                    .replace("%2D", "-")
                    .ends_with(&sid)
            })
            .collect();
        assert_eq!(patches.len(), 1, "{:#}", mock_stats(b.mock()).await);
        assert_eq!(
            patches[0]["body_json"],
            json!({"candidates": [candidate()]})
        );
        let sessions = mock_sessions(b.mock()).await;
        assert_eq!(sessions[0]["candidates"], json!([candidate()]));
    }
}

#[tokio::test]
async fn parity_icecandidate_for_a_session_the_backend_forgot_is_its_404() {
    let b = Backend::start(&[]);
    b.load("passthrough").await;
    let r = b.router();
    let mut ws = Ws::connect(&r.ws_url()).await;
    let (_client, sdp) = b.client_offer().await;
    let a = offer_with(&mut ws, "o", &sdp, json!({"pipeline_ids": ["passthrough"]})).await;
    let sid = a["sessionId"].as_str().expect("sessionId").to_owned();

    // The backend drops the session behind the router's back (the connection still owns it).
    let (code, body) = http(
        &format!("{}/api/v1/webrtc/offer/{sid}", b.url),
        "DELETE",
        None,
    )
    .await;
    assert_eq!((code, body.as_str()), (204, ""));
    let v = ws
        .call("c", icecandidate_for(sid.as_str(), candidate()))
        .await;
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["error"], "ICE candidate failed: 404", "{v}");
    assert_eq!(
        detail_json(&v),
        json!({"detail": format!("Session {sid} not found")}),
        "{v}"
    );
    ws.assert_open().await;
}

#[tokio::test]
async fn parity_patch_and_delete_of_unknown_sessions_as_upstream() {
    let b = Backend::start(&[]);
    let url = format!("{}/api/v1/webrtc/offer/no-such-session", b.url);
    let one = json!({"candidates": [candidate()]}).to_string();
    let (code, body) = http(&url, "PATCH", Some(&one)).await;
    assert_eq!(code, 404, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"detail": "Session no-such-session not found"})
    );
    // Upstream looks the session up per candidate: none, no lookup.
    let (code, _) = http(&url, "PATCH", Some(r#"{"candidates": []}"#)).await;
    assert_eq!(code, 204);
    let (code, body) = http(&url, "PATCH", Some("{}")).await;
    assert_eq!(code, 422, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["detail"][0]["loc"], json!(["body", "candidates"]), "{v}");
    assert_eq!(v["detail"][0]["type"], "missing", "{v}");
    let (code, body) = http(&url, "DELETE", None).await;
    assert_eq!((code, body.as_str()), (204, ""), "DELETE of an unknown id");
}

#[tokio::test]
async fn parity_offer_without_pipeline_ids_is_answered_and_logs_that_it_cannot_start() {
    let b = Backend::start(&[]);
    b.load("passthrough").await;
    let r = b.router();
    let mut ws = Ws::connect(&r.ws_url()).await;
    let (_c, sdp) = b.client_offer().await;
    let a = offer_with(&mut ws, "no-ids", &sdp, json!({"input_mode": "video"})).await;
    assert_eq!(a["type"], "answer", "answered all the same: {a}");
    assert!(is_uuid4(a["sessionId"].as_str().unwrap()), "{a}");
    b.wait_log(
        "scope.server.frame_processor",
        "ERROR",
        "No pipeline IDs provided, cannot start",
    )
    .await;

    // Naming a pipeline that is not the loaded one: answered too, and it cannot start either.
    let (_c, sdp) = b.client_offer().await;
    let a = offer_with(&mut ws, "gray", &sdp, json!({"pipeline_ids": ["gray"]})).await;
    assert_eq!(a["type"], "answer", "{a}");
    b.wait_log(
        "scope.server.frame_processor",
        "ERROR",
        "Pipeline setup failed: Pipeline gray not loaded",
    )
    .await;
    let (_c, sdp) = b.client_offer().await;
    let a = offer_with(
        &mut ws,
        "ok",
        &sdp,
        json!({"pipeline_ids": ["passthrough"]}),
    )
    .await;
    assert_eq!(a["type"], "answer", "{a}");
    b.wait_log(
        "scope.server.frame_processor",
        "INFO",
        "[FRAME-PROCESSOR] Started with 1 pipeline(s): ['passthrough']",
    )
    .await;
}

#[tokio::test]
async fn offer_without_pipeline_ids_brings_no_frame_back_and_one_with_them_does() {
    let b = Backend::start(&[]);
    let m = b.mock();
    let r = b.router();
    let mut ws = Ws::connect(&r.ws_url()).await;
    let load = api_call(
        &mut ws,
        "load",
        "POST",
        "/api/v1/pipeline/load",
        Some(json!({"pipeline_ids": ["passthrough"]})),
    )
    .await;
    assert_eq!(load["status"], 200, "{load}");
    status_until(&mut ws, "loaded").await;

    // A stream whose offer names no pipeline: connected, its video received, nothing sent back.
    let (client, sdp) = b.client_offer().await;
    let a = offer_with(&mut ws, "no-ids", &sdp, json!({"input_mode": "video"})).await;
    let sid = a["sessionId"].as_str().expect("sessionId").to_owned();
    b.client_answer(&client, a["sdp"].as_str().unwrap()).await;
    let session = |sid: String| async move {
        mock_sessions(m)
            .await
            .into_iter()
            .find(|s| s["id"] == sid.as_str())
            .expect("the session")
    };
    eventually(
        "the server to receive a second of the client's video",
        async || {
            let s = session(sid.clone()).await;
            (s["peer"]["connected"] == true && s["peer"]["frames_in"].as_u64().unwrap() >= 30)
                .then_some(())
        },
    )
    .await;
    let s = session(sid.clone()).await;
    assert_eq!(
        s["frame_processor"],
        json!({"running": false, "pipeline_ids": [], "error": "No pipeline IDs provided, cannot start"}),
        "{s}"
    );
    assert_eq!(s["frames_sent"], 0, "no frame may be sent back: {s}");
    assert_eq!(s["peer"]["frames_out"], 0, "{s}");
    let c = b.client_status(&client).await;
    assert!(c["frames_out"].as_u64().unwrap() >= 30, "{c}");
    assert_eq!(c["frames_in"], 0, "the client got no frame: {c}");
    b.wait_log(
        "scope.server.frame_processor",
        "ERROR",
        "No pipeline IDs provided, cannot start",
    )
    .await;

    // The same with the loaded pipeline named: its video comes back.
    let (client, sdp) = b.client_offer().await;
    let a = offer_with(
        &mut ws,
        "ids",
        &sdp,
        json!({"input_mode": "video", "pipeline_ids": ["passthrough"]}),
    )
    .await;
    let sid = a["sessionId"].as_str().expect("sessionId").to_owned();
    b.client_answer(&client, a["sdp"].as_str().unwrap()).await;
    eventually("frames to come back to the client", async || {
        let c = b.client_status(&client).await;
        (c["frames_in"].as_u64().unwrap() >= 10).then_some(())
    })
    .await;
    let s = session(sid).await;
    assert_eq!(s["frame_processor"]["running"], true, "{s}");
    assert!(s["frames_sent"].as_u64().unwrap() >= 10, "{s}");
}

#[tokio::test]
async fn parity_pipeline_load_rules_and_the_status_order() {
    // A load that takes a while, so that "loading" is seen (the real passthrough loads at once).
    let b = Backend::start(&["--load-ms", "400"]);
    b.unload().await;
    let r = b.router();
    let mut ws = Ws::connect(&r.ws_url()).await;
    let either = json!({"detail": "Either 'pipelines' or 'pipeline_ids' must be provided"});
    for (i, body) in [
        json!({}),
        json!({"pipeline_ids": []}),
        json!({"pipeline_id": "passthrough"}),
    ]
    .into_iter()
    .enumerate()
    {
        let v = api_call(
            &mut ws,
            &format!("bad{i}"),
            "POST",
            "/api/v1/pipeline/load",
            Some(body),
        )
        .await;
        assert_eq!(
            (v["status"].clone(), v["data"].clone()),
            (json!(400), either.clone()),
            "{v}"
        );
    }

    let v = api_call(
        &mut ws,
        "load",
        "POST",
        "/api/v1/pipeline/load",
        Some(json!({"pipelines": [{"node_id": "passthrough", "pipeline_id": "passthrough"}]})),
    )
    .await;
    assert_eq!(v["status"], 200, "{v}");
    assert_eq!(
        v["data"],
        json!({"message": "Pipeline loading initiated successfully"})
    );
    let order = ["not_loaded", "loading", "loaded"];
    let mut seen: Vec<String> = Vec::new();
    let mut last = Value::Null;
    let mut n = 0;
    eventually("the status to reach loaded", async || {
        n += 1;
        let s = api_call(
            &mut ws,
            &format!("st{n}"),
            "GET",
            "/api/v1/pipeline/status",
            None,
        )
        .await;
        let status = s["data"]["status"].as_str().unwrap().to_owned();
        if seen.last() != Some(&status) {
            seen.push(status.clone());
        }
        last = s["data"].clone();
        (status == "loaded").then_some(())
    })
    .await;
    let ranks: Vec<usize> = seen
        .iter()
        .map(|s| {
            order
                .iter()
                .position(|o| o == s)
                .unwrap_or_else(|| panic!("status {s}: {seen:?}"))
        })
        .collect();
    assert!(
        ranks.windows(2).all(|w| w[0] < w[1]),
        "out of order: {seen:?}"
    );
    if !b.is_real() {
        assert!(seen.contains(&"loading".to_owned()), "{seen:?}");
    }
    assert_eq!(
        keys(&last),
        [
            "error",
            "load_params",
            "loaded_lora_adapters",
            "loading_stage",
            "pipeline_id",
            "produces_audio",
            "produces_video",
            "status"
        ],
        "{last}"
    );
    assert_eq!(last["pipeline_id"], "passthrough", "{last}");
    assert_eq!(last["load_params"], json!({}), "{last}");
    assert_eq!(last["error"], Value::Null, "{last}");

    // An unknown pipeline: accepted, then `error` once, then `not_loaded`.
    let v = api_call(
        &mut ws,
        "unknown",
        "POST",
        "/api/v1/pipeline/load",
        Some(json!({"pipeline_ids": ["no-such-pipeline"]})),
    )
    .await;
    assert_eq!(v["status"], 200, "{v}");
    status_until(&mut ws, "error").await;
    let s = api_call(&mut ws, "after", "GET", "/api/v1/pipeline/status", None).await;
    assert_eq!(
        s["data"]["status"], "not_loaded",
        "error is reported once: {s}"
    );
    assert_eq!(s["data"]["pipeline_id"], Value::Null, "{s}");
}

#[tokio::test]
async fn parity_health_has_the_five_fields_with_an_isoformat_timestamp() {
    let b = Backend::start(&[]);
    let r = b.router();
    let mut ws = Ws::connect(&r.ws_url()).await;
    let v = api_call(&mut ws, "h", "GET", "/health", None).await;
    assert_eq!(v["status"], 200, "{v}");
    let h = &v["data"];
    assert_eq!(
        keys(h),
        [
            "git_commit",
            "server_start_time",
            "status",
            "timestamp",
            "version"
        ],
        "{h}"
    );
    assert_eq!(h["status"], "healthy");
    assert_eq!(h["version"], "0.2.3");
    assert!(h["git_commit"].is_string(), "{h}");
    assert!(h["server_start_time"].is_f64(), "{h}");
    assert!(
        is_isoformat(h["timestamp"].as_str().expect("timestamp is a string")),
        "{h}"
    );
    // The start time is fixed for the process's life.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let again = api_call(&mut ws, "h2", "GET", "/health", None).await;
    assert_eq!(again["data"]["server_start_time"], h["server_start_time"]);
}

#[tokio::test]
async fn parity_asset_uploads_their_refusals_and_their_shapes() {
    let b = Backend::start(&[]);
    let r = b.router();
    let mut ws = Ws::connect(&r.ws_url()).await;
    let bytes = pattern(3000);
    let upload = |name: &str| {
        let path = if name.is_empty() {
            "/api/v1/assets".to_owned()
        } else {
            format!("/api/v1/assets?filename={name}")
        };
        json!({"type": "api", "method": "POST", "path": path,
               "body": {"_base64_content": b64(&bytes), "_content_type": "image/png"}})
    };

    let v = ws.call("bin", upload("parity.bin")).await;
    assert_eq!(v["status"], 400, "{v}");
    let d = v["data"]["detail"].as_str().unwrap();
    assert!(d.starts_with("Invalid file type. Allowed types: "), "{d}");
    for ext in [".png", ".mp4", ".wav"] {
        assert!(d.contains(ext), "{d}");
    }
    let v = ws.call("none", upload("")).await;
    assert_eq!(v["status"], 422, "{v}");
    assert_eq!(
        v["data"]["detail"],
        json!([{"type": "missing", "loc": ["query", "filename"], "msg": "Field required", "input": null}])
    );
    let v = ws.call("out", upload("..%2Fparity-outside.png")).await;
    assert_eq!(v["status"], 400, "{v}");
    assert_eq!(v["data"], json!({"detail": "Invalid filename"}), "{v}");

    let v = ws.call("ok", upload("parity.png")).await;
    assert_eq!(v["status"], 200, "{v}");
    let info = &v["data"];
    assert_eq!(info["name"], "parity", "the stem: {info}");
    assert_eq!(info["type"], "image", "{info}");
    assert_eq!(info["folder"], Value::Null, "{info}");
    assert_eq!(info["size_mb"], 0.0, "{info}");
    assert!(info["created_at"].is_f64(), "{info}");
    let path = info["path"].as_str().unwrap();
    assert!(
        path.starts_with('/') && path.ends_with("/parity.png"),
        "{info}"
    );

    let v = api_call(&mut ws, "list", "GET", "/api/v1/assets", None).await;
    let listed = v["data"]["assets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["path"] == path)
        .cloned()
        .unwrap_or_else(|| panic!("parity.png is not listed: {v}"));
    assert_eq!(
        keys(&listed),
        ["created_at", "folder", "name", "path", "size_mb", "type"],
        "no sha256, size or content type in the listing: {listed}"
    );
    let v = api_call(&mut ws, "get", "GET", "/api/v1/assets/parity.png", None).await;
    assert_eq!(v["status"], 200, "{v}");
    assert_eq!(v["_content_type"], "image/png", "by extension");
    assert_eq!(unb64(&v["_base64_content"]), bytes);
    let v = api_call(
        &mut ws,
        "missing",
        "GET",
        "/api/v1/assets/parity-missing.png",
        None,
    )
    .await;
    assert_eq!(v["status"], 404, "{v}");
    assert_eq!(v["data"], json!({"detail": "Asset not found"}));
}

#[tokio::test]
async fn pipeline_env_preloads_before_listening_and_require_pipeline_overrides_it() {
    // `PIPELINE=passthrough`, as the real server's prewarm: loaded before the first request.
    let mut cmd = Command::new(MOCK.as_str());
    cmd.args(["--listen", "127.0.0.1:0", "--quiet"])
        .env("PIPELINE", "passthrough");
    let m = Proc::start(cmd, "mock-scope listening on");
    let (_, s) = get_json(&format!("{}/api/v1/pipeline/status", m.http())).await;
    assert_eq!(
        (s["status"].as_str(), s["pipeline_id"].as_str()),
        (Some("loaded"), Some("passthrough")),
        "{s}"
    );
    let offer = json!({"sdp": SDP_OFFER, "type": "offer"}).to_string();
    let (code, body) = http(
        &format!("{}/api/v1/webrtc/offer", m.http()),
        "POST",
        Some(&offer),
    )
    .await;
    assert_eq!(code, 200, "{body}");

    let mut cmd = Command::new(MOCK.as_str());
    cmd.args(["--listen", "127.0.0.1:0", "--quiet", "--require-pipeline"])
        .env("PIPELINE", "passthrough");
    let m = Proc::start(cmd, "mock-scope listening on");
    let (_, s) = get_json(&format!("{}/api/v1/pipeline/status", m.http())).await;
    assert_eq!(s["status"], "not_loaded", "{s}");
    let (code, body) = http(
        &format!("{}/api/v1/webrtc/offer", m.http()),
        "POST",
        Some(&offer),
    )
    .await;
    assert_eq!(code, 400, "{body}");
}

#[tokio::test]
async fn load_ms_zero_is_loaded_before_the_answer() {
    let m = fresh_mock(&["--load-ms", "0"]);
    let body = json!({"pipeline_ids": ["gray"], "load_params": {"height": 256}}).to_string();
    let (code, text) = http(
        &format!("{}/api/v1/pipeline/load", m.http()),
        "POST",
        Some(&body),
    )
    .await;
    assert_eq!(code, 200, "{text}");
    let (_, s) = get_json(&format!("{}/api/v1/pipeline/status", m.http())).await;
    assert_eq!(s["status"], "loaded", "{s}");
    assert_eq!(s["pipeline_id"], "gray", "{s}");
    assert_eq!(s["load_params"], json!({"height": 256}), "{s}");
}
