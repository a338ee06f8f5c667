//! Scope's pipeline manager: `POST /api/v1/pipeline/load`, `GET /api/v1/pipeline/status` (not_loaded → loading → loaded | error, once) and `GET /api/v1/pipelines/schemas`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Map, Value, json};

use crate::clock::scope_log;
use crate::fastapi::{ApiError, ApiResult, Fields, body_model, json_bytes, lock, ok_json};
use crate::serve::Shared;

/// The pipelines a GPU machine registers (`registry.py:_register_pipelines`); every one of them
/// produces video and none audio. The mock plays a GPU server: on a CPU-only one those with an
/// `estimated_vram_gb` are missing.
pub const REGISTERED: [&str; 12] = [
    "streamdiffusionv2",
    "longlive",
    "krea-realtime-video",
    "reward-forcing",
    "memflow",
    "passthrough",
    "video-depth-anything",
    "controller-viz",
    "rife",
    "scribble",
    "gray",
    "optical-flow",
];

/// Between `POST /pipeline/load`'s answer and the executor thread marking the instance LOADING.
const TASK_START: Duration = Duration::from_millis(20);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Status {
    NotLoaded,
    Loading,
    Loaded,
    Error,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::NotLoaded => "not_loaded",
            Status::Loading => "loading",
            Status::Loaded => "loaded",
            Status::Error => "error",
        }
    }
}

/// One requested instance: (node id = instance key, pipeline id, load params).
type Wanted = (String, String, Value);

#[derive(Default)]
struct Inner {
    /// Loaded instances in load order: key → (pipeline id, load params).
    loaded: Vec<(String, String, Value)>,
    /// `_pipeline_statuses`: every tracked key's status.
    statuses: Vec<(String, Status)>,
    /// `_load_params`: the legacy `load_params` of the last request (or of its first entry).
    load_params: Value,
    loading_stage: Option<String>,
    generation: u64,
}

pub struct Pipelines {
    inner: Mutex<Inner>,
    /// The status body, pre-serialised so the endpoint (polled hard) rarely takes the lock.
    snapshot: ArcSwap<Bytes>,
    /// Set while some instance is in ERROR: the next read must take the lock and consume it.
    error_pending: AtomicBool,
    load_time: Duration,
}

impl Pipelines {
    pub fn new(load_ms: u64) -> Self {
        let p = Self {
            inner: Mutex::new(Inner::default()),
            snapshot: ArcSwap::from_pointee(Bytes::new()),
            error_pending: AtomicBool::new(false),
            load_time: Duration::from_millis(load_ms),
        };
        p.publish(&lock(&p.inner));
        p
    }

    /// `pipeline_manager.py:get_status_info`: the overall status over every tracked instance;
    /// an `error` is returned once, then those instances are NOT_LOADED again.
    fn status_value(inner: &Inner) -> Value {
        let any = |s: Status| inner.statuses.iter().any(|(_, st)| *st == s);
        let all_loaded = inner
            .statuses
            .iter()
            .all(|(_, st)| matches!(st, Status::Loaded | Status::Loading | Status::Error));
        let status = if any(Status::Loading) {
            Status::Loading
        } else if any(Status::Error) {
            Status::Error
        } else if all_loaded && !inner.loaded.is_empty() {
            Status::Loaded
        } else {
            Status::NotLoaded
        };
        let truthy = inner.load_params.as_object().is_some_and(|m| !m.is_empty());
        let load_params = match inner.loaded.first() {
            Some((_, _, params)) if !truthy => params.clone(),
            _ => inner.load_params.clone(),
        };
        json!({
            "status": status.as_str(),
            "pipeline_id": inner.loaded.first().map(|(k, _, _)| k),
            "load_params": load_params,
            "loaded_lora_adapters": null,
            "error": null,
            "loading_stage": inner.loading_stage,
            "produces_video": true,
            "produces_audio": false,
        })
    }

    fn publish(&self, inner: &Inner) {
        let body = Bytes::from(Self::status_value(inner).to_string());
        self.snapshot.store(Arc::new(body));
        self.error_pending.store(
            inner.statuses.iter().any(|(_, s)| *s == Status::Error),
            Ordering::SeqCst,
        );
    }

    /// The status body, consuming a pending `error` as the real read does.
    pub fn read_status(&self) -> Bytes {
        if !self.error_pending.load(Ordering::SeqCst) {
            return Bytes::clone(&self.snapshot.load());
        }
        let mut inner = lock(&self.inner);
        let body = Bytes::from(Self::status_value(&inner).to_string());
        for (_, s) in &mut inner.statuses {
            if *s == Status::Error {
                *s = Status::NotLoaded;
            }
        }
        self.publish(&inner);
        body
    }

    /// Whether `get_status_info()["status"] == "loaded"` (`app.py:handle_webrtc_offer`), with
    /// the same side effect of consuming an `error`.
    pub fn is_loaded(&self) -> bool {
        let body = self.read_status();
        serde_json::from_slice::<Value>(&body)
            .is_ok_and(|v| v.get("status").and_then(Value::as_str) == Some("loaded"))
    }

    /// The first loaded key that is not in `ids` (`pipeline_manager.py:get_pipeline_by_id`).
    pub fn first_missing(&self, ids: &[String]) -> Option<String> {
        let inner = lock(&self.inner);
        ids.iter()
            .find(|id| !inner.loaded.iter().any(|(k, _, _)| k == *id))
            .cloned()
    }

    /// `prewarm_pipeline(PIPELINE)` at startup, done before the mock listens so tests never race it.
    pub fn preload(&self, pipeline_id: &str) {
        let wanted = vec![(pipeline_id.to_owned(), pipeline_id.to_owned(), json!({}))];
        let mut inner = lock(&self.inner);
        inner.load_params = Value::Null;
        Self::finish_load(&mut inner, &wanted);
        self.publish(&inner);
    }

    /// Every wanted instance is loaded with the same pipeline and parameters, and nothing else is.
    fn same_as_loaded(inner: &Inner, wanted: &[Wanted]) -> bool {
        inner.loaded.len() == wanted.len()
            && wanted.iter().all(|(k, p, params)| {
                inner
                    .loaded
                    .iter()
                    .any(|(lk, lp, lparams)| lk == k && lp == p && lparams == params)
            })
    }

    fn finish_load(inner: &mut Inner, wanted: &[Wanted]) {
        let mut failed = false;
        for (key, pid, params) in wanted {
            let status = if REGISTERED.contains(&pid.as_str()) {
                inner
                    .loaded
                    .push((key.clone(), pid.clone(), params.clone()));
                Status::Loaded
            } else {
                failed = true;
                scope_log(
                    "scope.server.pipeline_manager",
                    "ERROR",
                    &format!(
                        "Failed to load pipeline {key}: Invalid pipeline ID: {pid}. If this error persists, consider removing the models directory '{}' and re-downloading models.",
                        models_dir()
                    ),
                );
                scope_log(
                    "scope.server.pipeline_manager",
                    "ERROR",
                    &format!("Failed to load pipeline: {key}"),
                );
                Status::Error
            };
            set_status(inner, key, status);
        }
        if failed {
            scope_log(
                "scope.server.pipeline_manager",
                "ERROR",
                "Some pipelines failed to load",
            );
        }
        inner.loading_stage = None;
    }

    /// `pipeline_manager.py:load_pipelines`, in the background: instances not wanted are unloaded,
    /// the wanted ones go LOADING, then LOADED (or ERROR for an unknown pipeline id).
    /// With `--load-ms 0` (a test shortcut) it is all done before the POST is answered.
    fn start_load(self: &Arc<Self>, wanted: Vec<Wanted>, legacy_params: Value) {
        if self.load_time.is_zero() {
            let mut inner = lock(&self.inner);
            if !Self::same_as_loaded(&inner, &wanted) {
                inner.loaded.clear();
                inner.statuses.clear();
                inner.load_params = legacy_params;
                inner.generation += 1;
                Self::finish_load(&mut inner, &wanted);
                self.publish(&inner);
            }
            return;
        }
        let this = Arc::clone(self);
        tokio::spawn(async move {
            tokio::time::sleep(TASK_START).await;
            let generation = {
                let mut inner = lock(&this.inner);
                if Self::same_as_loaded(&inner, &wanted) {
                    // Already loaded with matching parameters: nothing happens, no "loading".
                    return;
                }
                inner.loaded.clear();
                inner.statuses.clear();
                inner.load_params = legacy_params;
                for (key, _, _) in &wanted {
                    set_status(&mut inner, key, Status::Loading);
                }
                inner.loading_stage = Some("Initializing pipeline...".to_owned());
                inner.generation += 1;
                this.publish(&inner);
                inner.generation
            };
            tokio::time::sleep(this.load_time).await;
            let mut inner = lock(&this.inner);
            if inner.generation != generation {
                return; // A later load replaced this one.
            }
            Self::finish_load(&mut inner, &wanted);
            this.publish(&inner);
        });
    }

    /// `/_mock/reset?all=1`: nothing loaded, nothing tracked.
    pub fn forget(&self) {
        let mut inner = lock(&self.inner);
        let generation = inner.generation + 1;
        *inner = Inner {
            generation,
            ..Inner::default()
        };
        self.publish(&inner);
    }
}

fn set_status(inner: &mut Inner, key: &str, status: Status) {
    match inner.statuses.iter_mut().find(|(k, _)| k == key) {
        Some((_, s)) => *s = status,
        None => inner.statuses.push((key.to_owned(), status)),
    }
}

fn models_dir() -> String {
    std::env::var("DAYDREAM_SCOPE_MODELS_DIR")
        .ok()
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| {
            format!(
                "{}/.daydream-scope/models",
                std::env::var("HOME").unwrap_or_else(|_| "/root".to_owned())
            )
        })
}

/// `app.py:load_pipeline` with `schema.py:PipelineLoadRequest`.
pub async fn pipeline_load(State(state): Shared, body: Bytes) -> ApiResult {
    let obj = body_model(&body)?;
    let mut f = Fields::new(&obj, &[json!("body")]);
    let mut items: Vec<Wanted> = Vec::new();
    if let Some(list) = f.opt_list("pipelines") {
        for (i, item) in list.iter().enumerate() {
            let mut loc = f.loc_of("pipelines");
            loc.push(json!(i));
            let Some(map) = item.as_object() else {
                f.errors
                    .push(crate::fastapi::model_type(Value::Array(loc), item.clone()));
                continue;
            };
            let mut g = Fields::new(map, &loc);
            let node = g.req_str("node_id");
            let pid = g.req_str("pipeline_id");
            let params = g.opt_dict("load_params").cloned();
            f.errors.append(&mut g.errors);
            if let (Some(node), Some(pid)) = (node, pid) {
                let params = Value::Object(params.unwrap_or_default());
                items.push((node.to_owned(), pid.to_owned(), params));
            }
        }
    }
    let ids = f.opt_list_str("pipeline_ids").unwrap_or_default();
    let legacy = f.opt_dict("load_params").cloned();
    f.opt_str("connection_id");
    f.opt_dict("connection_info");
    f.opt_str("user_id");
    f.finish()?;

    let legacy = legacy.map_or(Value::Null, Value::Object);
    let (wanted, stored) = if !items.is_empty() {
        let first = items.first().map_or(Value::Null, |(_, _, p)| p.clone());
        (items, first)
    } else if !ids.is_empty() {
        let params = Value::Object(legacy.as_object().cloned().unwrap_or_else(Map::new));
        let wanted = ids
            .iter()
            .map(|id| (id.clone(), id.clone(), params.clone()))
            .collect();
        (wanted, legacy)
    } else {
        return Err(ApiError::bad_request(
            "Either 'pipelines' or 'pipeline_ids' must be provided",
        ));
    };
    state.pipelines.start_load(wanted, stored);
    Ok(ok_json(
        &json!({ "message": "Pipeline loading initiated successfully" }),
    ))
}

/// `app.py:get_pipeline_status`: always 200, the eight keys of `PipelineStatusResponse`.
pub async fn pipeline_status(State(state): Shared) -> Response {
    json_bytes(StatusCode::OK, state.pipelines.read_status())
}

/// `app.py:get_pipeline_schemas`: `get_schema_with_metadata()` of each registered pipeline
/// (pipeline_schemas.json was generated by the upstream code at `6fcc8ebf^`, all twelve).
pub async fn pipeline_schemas() -> Response {
    json_bytes(
        StatusCode::OK,
        Bytes::from_static(include_bytes!("pipeline_schemas.json")),
    )
}
