//! WebRTC signaling as `app.py` and `webrtc.py:WebRTCManager` do it: ICE servers, offers (and whether their FrameProcessor starts), trickled candidates, session teardown.

use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Map, Value, json};

use crate::clock::{scope_log, uuid4};
use crate::fastapi::{
    ApiError, ApiResult, Fields, body_model, json_bytes, lock, model_type, no_content, ok_json,
    path_param,
};
use crate::sdp::fake_answer_sdp;
use crate::serve::Shared;
use crate::state::{FrameProcessor, Session};

/// `app.py:get_ice_servers`.
pub async fn ice_servers(State(state): Shared) -> Response {
    json_bytes(StatusCode::OK, state.ice_servers.clone())
}

/// The fields of `schema.py:Parameters` the mock checks (pydantic's other checks are not
/// mirrored); returns `pipeline_ids` and `recording`.
fn check_parameters(f: &mut Fields<'_>) -> (Vec<String>, bool) {
    let Some(p) = f.opt_model("initialParameters") else {
        return (Vec::new(), false);
    };
    let mut g = Fields::new(p, &f.loc_of("initialParameters"));
    g.opt_literal("input_mode", &["text", "video"]);
    g.opt_literal("prompt_interpolation_method", &["linear", "slerp"]);
    if let Some(prompts) = g.opt_list("prompts") {
        for (i, item) in prompts.iter().enumerate() {
            let mut loc = g.loc_of("prompts");
            loc.push(json!(i));
            match item.as_object() {
                Some(m) => {
                    let mut h = Fields::new(m, &loc);
                    h.req_str("text");
                    g.errors.append(&mut h.errors);
                }
                None => g.errors.push(model_type(Value::Array(loc), item.clone())),
            }
        }
    }
    let ids = g.opt_list_str("pipeline_ids").unwrap_or_default();
    let recording = p.get("recording").and_then(Value::as_bool) == Some(true);
    f.errors.append(&mut g.errors);
    (ids, recording)
}

/// `schema.py:Parameters`' fields in declaration order.
const PARAMETERS: [&str; 23] = [
    "input_mode",
    "prompts",
    "prompt_interpolation_method",
    "transition",
    "noise_scale",
    "noise_controller",
    "denoising_step_list",
    "manage_cache",
    "reset_cache",
    "kv_cache_attention_bias",
    "lora_scales",
    "output_sinks",
    "vace_enabled",
    "vace_ref_images",
    "vace_use_input_video",
    "vace_context_scale",
    "pipeline_ids",
    "graph",
    "first_frame_image",
    "last_frame_image",
    "images",
    "recording",
    "node_id",
];

/// `Parameters.model_dump(exclude_none=True)` as `handle_offer` logs it: the declared fields in
/// order (with the two defaults), then the extra keys as sent.
fn model_dump(params: Option<&Map<String, Value>>) -> Vec<(String, Value)> {
    let empty = Map::new();
    let params = params.unwrap_or(&empty);
    let mut out = Vec::new();
    for key in PARAMETERS {
        let value = match (params.get(key), key) {
            (Some(v), _) if !v.is_null() => v.clone(),
            (_, "prompt_interpolation_method") => json!("linear"),
            (_, "vace_context_scale") => json!(1.0),
            _ => continue,
        };
        out.push((key.to_owned(), value));
    }
    for (k, v) in params {
        if !PARAMETERS.contains(&k.as_str()) && !v.is_null() {
            out.push((k.clone(), v.clone()));
        }
    }
    out
}

/// Python's `repr` of a JSON value, for log lines that print a dict.
fn py_repr(v: &Value) -> String {
    match v {
        Value::Null => "None".to_owned(),
        Value::Bool(true) => "True".to_owned(),
        Value::Bool(false) => "False".to_owned(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'")),
        Value::Array(a) => format!("[{}]", a.iter().map(py_repr).collect::<Vec<_>>().join(", ")),
        Value::Object(m) => format!(
            "{{{}}}",
            m.iter()
                .map(|(k, v)| format!("'{k}': {}", py_repr(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// `frame_processor.py:FrameProcessor.start` in local mode: it runs only the pipelines named in
/// `initialParameters.pipeline_ids`, and only if each of them is loaded.
fn start_frame_processor(state: &crate::state::AppState, ids: Vec<String>) -> FrameProcessor {
    let log = "scope.server.frame_processor";
    let error = if ids.is_empty() {
        Some("No pipeline IDs provided, cannot start".to_owned())
    } else {
        state
            .pipelines
            .first_missing(&ids)
            .map(|id| format!("Pipeline setup failed: Pipeline {id} not loaded"))
    };
    match &error {
        Some(e) => scope_log(log, "ERROR", e),
        None => scope_log(
            log,
            "INFO",
            &format!(
                "[FRAME-PROCESSOR] Started with {} pipeline(s): {}",
                ids.len(),
                py_repr(&json!(ids))
            ),
        ),
    }
    FrameProcessor {
        running: error.is_none(),
        pipeline_ids: ids,
        error,
    }
}

/// aiortc's `RTCSessionDescription.__post_init__` and `RTCPeerConnection.__validate_description`
/// for a remote description in state "stable" (`pranswer` and `rollback` pass that check; what
/// aiortc does with them next is not mirrored: they are taken as offers).
fn description_error(kind: &str) -> Option<String> {
    match kind {
        "offer" | "pranswer" | "rollback" => None,
        "answer" => Some("Cannot handle answer in signaling state \"stable\"".to_owned()),
        other => Some(format!(
            "'type' must be in ['offer', 'pranswer', 'answer', 'rollback'] (got '{other}')"
        )),
    }
}

/// `app.py:handle_webrtc_offer` → `webrtc.py:WebRTCManager.handle_offer`.
pub async fn webrtc_offer(State(state): Shared, body: Bytes) -> ApiResult {
    let obj = body_model(&body)?;
    let mut f = Fields::new(&obj, &[json!("body")]);
    let sdp = f.req_str("sdp").map(str::to_owned);
    let kind = f.req_str("type").map(str::to_owned);
    let (ids, recording) = check_parameters(&mut f);
    f.opt_str("user_id");
    f.opt_str("connection_id");
    f.opt_dict("connection_info");
    f.finish()?;
    let (Some(sdp), Some(kind)) = (sdp, kind) else {
        return Err(ApiError::internal_plain());
    };

    if !state.pipelines.is_loaded() {
        return Err(ApiError::bad_request(
            "Pipeline not loaded. Please load pipeline first.",
        ));
    }

    let initial_parameters = obj.get("initialParameters").cloned().unwrap_or(Value::Null);
    let dumped: Vec<String> = model_dump(initial_parameters.as_object())
        .iter()
        .map(|(k, v)| format!("'{k}': {}", py_repr(v)))
        .collect();
    scope_log(
        "scope.server.webrtc",
        "INFO",
        &format!("Received initial parameters: {{{}}}", dumped.join(", ")),
    );

    let id = uuid4();
    let frame_processor = start_frame_processor(&state, ids);
    if let Some(e) = description_error(&kind) {
        scope_log(
            "scope.server.webrtc",
            "ERROR",
            &format!("Error handling WebRTC offer: {e}"),
        );
        scope_log(
            "scope.server.app",
            "ERROR",
            &format!("Error handling WebRTC offer: {e}"),
        );
        return Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e));
    }

    // A browser's offer gets a real peer, which loops its video back while the frame processor
    // runs. Anything str0m cannot accept (the SDP fragments the router's tests send) gets a made-up
    // answer: a test-only leniency, where aiortc would answer 500.
    let (answer, peer) =
        match crate::peer::start(&state.peers, &id, &sdp, frame_processor.running).await {
            Ok((answer, handle)) => (answer, Some(handle)),
            Err(why) => {
                if !state.opts.quiet && sdp.contains("a=fingerprint:") {
                    eprintln!("INFO scope.webrtc: session {id}: fake answer ({why})");
                }
                (fake_answer_sdp(&sdp, &id), None)
            }
        };
    {
        let mut sessions = lock(&state.sessions);
        sessions.next_seq += 1;
        let seq = sessions.next_seq;
        sessions.live.insert(
            id.clone(),
            Session {
                seq,
                offer_sdp: sdp,
                initial_parameters,
                candidates: Vec::new(),
                peer,
                frame_processor,
                recording,
            },
        );
    }
    Ok(ok_json(
        &json!({ "sdp": answer, "type": "answer", "sessionId": id }),
    ))
}

/// `schema.py:IceCandidateRequest` / `IceCandidateInit`.
fn parse_candidates(body: &[u8]) -> Result<Vec<Value>, ApiError> {
    let obj = body_model(body)?;
    let mut f = Fields::new(&obj, &[json!("body")]);
    let mut out = Vec::new();
    if obj.get("candidates").is_none() {
        f.req_str("candidates");
    } else if let Some(items) = f.opt_list("candidates") {
        for (i, item) in items.iter().enumerate() {
            let mut loc = f.loc_of("candidates");
            loc.push(json!(i));
            let Some(map) = item.as_object() else {
                f.errors.push(model_type(Value::Array(loc), item.clone()));
                continue;
            };
            let mut g = Fields::new(map, &loc);
            let candidate = g.req_str("candidate").map(str::to_owned);
            let mid = g.opt_str("sdpMid").map(str::to_owned);
            let index = g.opt_int("sdpMLineIndex");
            f.errors.append(&mut g.errors);
            if let Some(candidate) = candidate {
                out.push(json!({"candidate": candidate, "sdpMid": mid, "sdpMLineIndex": index}));
            }
        }
    }
    f.finish()?;
    Ok(out)
}

/// aiortc's `candidate_from_sdp` and `addIceCandidate`, as `webrtc.py:add_ice_candidate` reports
/// their failures.
fn candidate_error(c: &Value) -> Option<String> {
    let text = c["candidate"].as_str().unwrap_or("");
    let bits: Vec<&str> = text.split_whitespace().collect();
    if bits.len() < 8 {
        return Some(String::new());
    }
    for i in [1, 3, 5] {
        let bit = bits.get(i).copied().unwrap_or("");
        if bit.parse::<i64>().is_err() {
            return Some(format!("invalid literal for int() with base 10: '{bit}'"));
        }
    }
    if c["sdpMid"].is_null() && c["sdpMLineIndex"].is_null() {
        return Some("Candidate must have either sdpMid or sdpMLineIndex".to_owned());
    }
    None
}

/// `PATCH /api/v1/webrtc/offer/{id}`: `app.py:add_ice_candidate`; candidates are applied in order
/// and the first bad one answers.
pub async fn add_candidates(
    State(state): Shared,
    id: Result<Path<String>, PathRejection>,
    body: Bytes,
) -> ApiResult {
    let id = path_param(id)?;
    let candidates = parse_candidates(&body)?;
    if candidates.is_empty() {
        // Nothing to add: upstream looks the session up per candidate, so this is a 204 even for
        // an unknown id.
        return Ok(no_content());
    }
    let mut sessions = lock(&state.sessions);
    let Some(session) = sessions.find(&id) else {
        return Err(ApiError::not_found(format!("Session {id} not found")));
    };
    for c in candidates {
        if let Some(e) = candidate_error(&c) {
            scope_log(
                "scope.server.webrtc",
                "ERROR",
                &format!("Failed to add ICE candidate to session {id}: {e}"),
            );
            return Err(ApiError::not_found(format!("Invalid ICE candidate: {e}")));
        }
        if let Some(peer) = &session.peer {
            peer.add_candidates(std::slice::from_ref(&c));
        }
        session.candidates.push(c);
    }
    Ok(no_content())
}

/// `DELETE /api/v1/webrtc/offer/{id}`: `app.py:close_webrtc_session` → `remove_session`; 204
/// whether or not the session exists.
pub async fn delete_session(
    State(state): Shared,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult {
    let id = path_param(id)?;
    let mut sessions = lock(&state.sessions);
    match sessions.live.remove(&id) {
        Some(s) if !s.gone() => {
            let connected = s.peer.as_ref().is_some_and(|p| p.is_connected());
            let pc_state = if connected { "connected" } else { "new" };
            scope_log(
                "scope.server.webrtc",
                "INFO",
                &format!("Removing session: Session({id}, state={pc_state})"),
            );
            sessions.deleted.push(id);
        }
        Some(_) => {
            // The real server removed it when its connection closed; the mock still had it.
            scope_log(
                "scope.server.webrtc",
                "WARNING",
                &format!("Attempted to remove non-existent session: {id}"),
            );
            sessions.deleted.push(id);
        }
        None => scope_log(
            "scope.server.webrtc",
            "WARNING",
            &format!("Attempted to remove non-existent session: {id}"),
        ),
    }
    Ok(no_content())
}
