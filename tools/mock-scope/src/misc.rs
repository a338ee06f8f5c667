//! The rest of Scope's API the router forwards: `/health`, hardware info, LoRAs, model downloads, the current log, plugins, and the SPA fallback every unknown GET lands in.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::header::{ALLOW, CONTENT_DISPOSITION, CONTENT_TYPE};
use axum::http::{HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::clock::{iso_now, log_file_name, log_text, unix_now};
use crate::fastapi::{
    ApiError, ApiResult, Fields, body_model, detail, json_bytes, lock, ok_json, path_param,
    required_query,
};
use crate::serve::Shared;

/// `importlib.metadata.version("daydream-scope")` of the server the mock stands in for.
pub const VERSION: &str = "0.2.3";
/// `git rev-parse --short HEAD` of that source (`6fcc8ebf^`).
const GIT_COMMIT: &str = "03ee99b";
/// How long a `POST /api/v1/models/download` "downloads" the models of a pipeline that has some.
const DOWNLOAD_TIME: Duration = Duration::from_millis(500);
/// The built-in pipelines whose schema says `requires_models: false`: their download has nothing
/// to fetch and is over at once (never a 409).
const NO_MODELS: [&str; 4] = ["passthrough", "controller-viz", "gray", "optical-flow"];

pub struct Plugin {
    pub name: String,
    pub package: String,
    /// Shipped with the image (newer backends mark them; cleanup keeps them).
    pub bundled: bool,
}

/// `app.py:health_check`: exactly five keys; `timestamp` is `datetime.now().isoformat()`.
pub async fn health(State(state): Shared) -> Response {
    ok_json(&json!({
        "status": "healthy",
        "timestamp": iso_now(),
        "server_start_time": state.server_start_time,
        "version": VERSION,
        "git_commit": GIT_COMMIT,
    }))
}

/// `app.py:get_hardware_info` on a 24 GiB GPU machine without Spout, NDI or Syphon.
pub async fn hardware_info() -> Response {
    json_bytes(
        StatusCode::OK,
        Bytes::from_static(
            br#"{"vram_gb":24.0,"spout_available":false,"ndi_available":false,"syphon_available":false}"#,
        ),
    )
}

/// `app.py:list_lora_files` with an empty LoRA directory.
pub async fn lora_list() -> Response {
    json_bytes(StatusCode::OK, Bytes::from_static(br#"{"lora_files":[]}"#))
}

/// `POST /api/v1/loras`: the real one downloads from civitai.com or huggingface.co; the mock
/// (test-only leniency) answers 200 without looking at the body.
pub async fn lora_install() -> Response {
    ok_json(&json!({ "message": "LoRA installed" }))
}

/// `app.py:get_model_status`: `pipeline_id` is a required query parameter. The mock's models are
/// all present (`downloaded: true`) except while a download runs.
pub async fn models_status(State(state): Shared, uri: Uri) -> ApiResult {
    let id = required_query(&uri, "pipeline_id")?;
    let started = lock(&state.downloads).get(&id).copied();
    let elapsed = started.map(|t| unix_now() - t);
    Ok(match elapsed {
        Some(e) if e < DOWNLOAD_TIME.as_secs_f64() => ok_json(&json!({
            "downloaded": false,
            "progress": {
                "is_downloading": true,
                "percentage": (e / DOWNLOAD_TIME.as_secs_f64() * 100.0).min(99.0),
                "current_artifact": null,
            },
        })),
        _ => {
            lock(&state.downloads).remove(&id);
            ok_json(&json!({ "downloaded": true, "progress": null }))
        }
    })
}

/// `app.py:download_pipeline_models` with `DownloadModelsRequest`.
pub async fn models_download(State(state): Shared, body: Bytes) -> ApiResult {
    let obj = body_model(&body)?;
    let mut f = Fields::new(&obj, &[json!("body")]);
    let id = f.req_str("pipeline_id").map(str::to_owned);
    f.finish()?;
    let id = id.unwrap_or_default();
    if id.is_empty() {
        return Err(ApiError::bad_request("pipeline_id is required"));
    }
    let mut downloads = lock(&state.downloads);
    if downloads
        .get(&id)
        .is_some_and(|t| unix_now() - t < DOWNLOAD_TIME.as_secs_f64())
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("Download already in progress for {id}"),
        ));
    }
    if !NO_MODELS.contains(&id.as_str()) {
        downloads.insert(id.clone(), unix_now());
    }
    Ok(ok_json(
        &json!({ "message": format!("Model download started for {id}") }),
    ))
}

/// `app.py:get_current_logs`: the server's log (here: what the mock logged in Scope's format).
pub async fn logs_current() -> ApiResult {
    let Some(text) = log_text() else {
        return Err(ApiError::not_found(
            "Log file not found. The application may not have logged anything yet.",
        ));
    };
    let disposition = format!("attachment; filename=\"{}\"", log_file_name());
    let mut resp = (
        StatusCode::OK,
        [(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        )],
        text,
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&disposition) {
        resp.headers_mut().insert(CONTENT_DISPOSITION, v);
    }
    Ok(resp)
}

/// `schema.py:PluginInfo`, every key present.
fn plugin_info(name: &str, package: Option<&str>) -> Value {
    let source = match package {
        Some(p) if p.contains("://") || p.starts_with("git+") => "git",
        _ => "pypi",
    };
    json!({
        "name": name, "version": null, "author": null, "description": null, "source": source,
        "editable": false, "editable_path": null, "pipelines": [], "latest_version": null,
        "update_available": null, "package_spec": package, "bundled": false,
    })
}

/// `scope-foo==1.2`, `git+https://host/org/scope-foo.git@v1` and `scope-foo[x]` all name `scope-foo`.
fn plugin_name(package: &str) -> String {
    let base = if package.contains("://") {
        let no_ref = package
            .rsplit_once('@')
            .map_or(package, |(a, b)| if b.contains('/') { package } else { a });
        no_ref
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .unwrap_or(package)
            .trim_end_matches(".git")
    } else {
        package
            .split(['=', '<', '>', '!', '~', ';', '[', ' '])
            .next()
            .unwrap_or(package)
    };
    base.to_owned()
}

/// `app.py:list_plugins`.
pub async fn plugins_list(State(state): Shared) -> Response {
    let plugins = lock(&state.plugins);
    let list: Vec<Value> = plugins
        .iter()
        .map(|p| {
            let mut info = plugin_info(&p.name, Some(&p.package));
            if let Some(o) = info.as_object_mut() {
                o.insert("bundled".to_owned(), Value::Bool(p.bundled));
            }
            info
        })
        .collect();
    ok_json(&json!({ "plugins": list, "total": list.len(), "failed_plugins": [] }))
}

/// `app.py:install_plugin`: the body is read by hand, outside the handler's `try`, so a bad one is
/// starlette's text/plain 500, not a 422.
pub async fn plugin_install(State(state): Shared, body: Bytes) -> ApiResult {
    let obj = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(m)) => m,
        _ => return Err(ApiError::internal_plain()),
    };
    let Some(package) = obj.get("package").and_then(Value::as_str) else {
        return Err(ApiError::internal_plain());
    };
    let editable = obj.get("editable").and_then(Value::as_bool) == Some(true);
    let name = plugin_name(package.trim());
    {
        let mut plugins = lock(&state.plugins);
        plugins.retain(|p| p.name != name);
        plugins.push(Plugin {
            name: name.clone(),
            package: package.to_owned(),
            bundled: false,
        });
    }
    let message = if editable {
        format!("Successfully installed {package} (editable). Restart server to load.")
    } else {
        format!("Successfully installed {package}. Restart server to load.")
    };
    let plugin = plugin_info(&name, None);
    Ok(ok_json(
        &json!({ "success": true, "message": message, "plugin": plugin }),
    ))
}

/// `app.py:uninstall_plugin`: the installed plugin whose name is exactly `{name}`.
pub async fn plugin_uninstall(
    State(state): Shared,
    name: Result<Path<String>, PathRejection>,
) -> ApiResult {
    let name = path_param(name)?;
    let mut plugins = lock(&state.plugins);
    let before = plugins.len();
    plugins.retain(|p| p.name != name);
    if plugins.len() < before {
        Ok(ok_json(&json!({
            "success": true,
            "message": format!("Successfully uninstalled {name}"),
            "unloaded_pipelines": [],
        })))
    } else {
        Err(ApiError::not_found(format!("Plugin '{name}' not found")))
    }
}

/// `app.py:serve_frontend`, the catch-all `GET /{path:path}` of a pip-installed server (no
/// `frontend/dist`).
pub async fn frontend_not_built() -> Response {
    detail(StatusCode::NOT_FOUND, "Frontend not built")
}

/// Any other method on a path no route has: the catch-all GET matches it, so starlette answers 405
/// with `Allow: GET`.
pub async fn method_not_allowed_any() -> Response {
    let mut resp = detail(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
    resp.headers_mut()
        .insert(ALLOW, HeaderValue::from_static("GET"));
    resp
}

/// A known path with a method it does not take.
pub async fn method_not_allowed() -> Response {
    detail(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed")
}
