//! Assets (`app.py:list_assets`, `upload_asset`, `serve_asset`) and recordings (`app.py:download_recording`), on disk under `DAYDREAM_SCOPE_ASSETS_DIR` when it is set, else in memory.

use std::collections::BTreeMap;
use std::path::{Component, Path as FsPath, PathBuf};
use std::sync::Mutex;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::header::{CONTENT_DISPOSITION, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::clock::{scope_log, unix_now};
use crate::fastapi::{
    ApiError, ApiResult, lock, ok_json, path_param, query_param, required_query, sha256_hex,
};
use crate::serve::Shared;
use crate::state::BodyDigest;
use crate::testing::{pattern_response, size_param};

const IMAGE: [&str; 5] = [".png", ".jpg", ".jpeg", ".webp", ".bmp"];
const VIDEO: [&str; 5] = [".mp4", ".avi", ".mov", ".mkv", ".webm"];
const AUDIO: [&str; 4] = [".wav", ".mp3", ".flac", ".ogg"];

struct MemAsset {
    bytes: Bytes,
    created_at: f64,
}

/// Where assets live: `dir` (absolute), written to disk only when `DAYDREAM_SCOPE_ASSETS_DIR` was set.
pub struct Assets {
    dir: PathBuf,
    on_disk: bool,
    /// Relative path → content, when not on disk.
    mem: Mutex<BTreeMap<PathBuf, MemAsset>>,
}

/// `Path(name).suffix.lower()`: from the last dot of the last component, unless that dot is the
/// first or the last character.
fn suffix(path: &str) -> String {
    let name = path.trim_end_matches('/').rsplit('/').next().unwrap_or("");
    match name.rfind('.') {
        Some(i) if i > 0 && i + 1 < name.len() => name.get(i..).unwrap_or("").to_lowercase(),
        _ => String::new(),
    }
}

/// `"image" | "video" | "audio"` by extension, as `list_assets` and `upload_asset` decide it.
fn asset_type(ext: &str) -> Option<&'static str> {
    if IMAGE.contains(&ext) {
        Some("image")
    } else if AUDIO.contains(&ext) {
        Some("audio")
    } else if VIDEO.contains(&ext) {
        Some("video")
    } else {
        None
    }
}

/// `serve_asset`'s media types: images and videos by extension, everything else (audio too)
/// `application/octet-stream`.
fn media_type(ext: &str) -> &'static str {
    match ext {
        ".png" => "image/png",
        ".jpg" | ".jpeg" => "image/jpeg",
        ".webp" => "image/webp",
        ".bmp" => "image/bmp",
        ".mp4" => "video/mp4",
        ".avi" => "video/x-msvideo",
        ".mov" => "video/quicktime",
        ".mkv" => "video/x-matroska",
        ".webm" => "video/webm",
        _ => "application/octet-stream",
    }
}

/// `Path.resolve()` without following symlinks: `.` and `..` folded away.
fn normalize(p: &FsPath) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

fn ctime(meta: &std::fs::Metadata) -> f64 {
    use std::os::unix::fs::MetadataExt as _;
    meta.ctime() as f64 + f64::from(u32::try_from(meta.ctime_nsec()).unwrap_or(0)) / 1e9
}

impl Assets {
    pub fn new((dir, on_disk): (PathBuf, bool)) -> Self {
        let dir = if dir.is_absolute() {
            normalize(&dir)
        } else {
            normalize(&std::env::current_dir().unwrap_or_default().join(dir))
        };
        Self {
            dir,
            on_disk,
            mem: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn clear(&self) {
        lock(&self.mem).clear();
    }

    /// `AssetFileInfo` for a file of `len` bytes at `rel` (relative to the assets dir).
    fn info(&self, rel: &FsPath, len: u64, created_at: f64) -> Option<Value> {
        let rel_s = rel.to_string_lossy();
        let kind = asset_type(&suffix(&rel_s))?;
        let stem = rel
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let folder = rel
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(|p| p.to_string_lossy().into_owned());
        let size_mb = (len as f64 / (1024.0 * 1024.0) * 100.0).round() / 100.0;
        Some(json!({
            "name": stem,
            "path": self.dir.join(rel).to_string_lossy(),
            "size_mb": size_mb,
            "folder": folder,
            "type": kind,
            "created_at": created_at,
        }))
    }

    fn walk(&self, dir: &FsPath, out: &mut Vec<Value>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            // metadata() follows symlinks, as os.walk(followlinks=True) does.
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                self.walk(&path, out);
            } else if let Ok(rel) = path.strip_prefix(&self.dir)
                && let Some(info) = self.info(rel, meta.len(), ctime(&meta))
            {
                out.push(info);
            }
        }
    }

    fn list(&self) -> Vec<Value> {
        let mut out = Vec::new();
        if self.on_disk {
            self.walk(&self.dir.clone(), &mut out);
        } else {
            for (rel, a) in lock(&self.mem).iter() {
                out.extend(self.info(rel, a.bytes.len() as u64, a.created_at));
            }
        }
        out
    }
}

/// `GET /api/v1/assets[?type=image|video|audio]`.
pub async fn assets_list(State(state): Shared, uri: Uri) -> Response {
    let wanted =
        query_param(&uri, "type").filter(|t| matches!(t.as_str(), "image" | "video" | "audio"));
    let mut list: Vec<Value> = state
        .assets
        .list()
        .into_iter()
        .filter(|a| wanted.as_deref().is_none_or(|t| a["type"] == t))
        .collect();
    // Newest first, then folder, then name.
    list.sort_by(|a, b| {
        let t = |v: &Value| v["created_at"].as_f64().unwrap_or(0.0);
        let s = |v: &Value, k: &str| v[k].as_str().unwrap_or("").to_owned();
        t(b).total_cmp(&t(a))
            .then_with(|| s(a, "folder").cmp(&s(b, "folder")))
            .then_with(|| s(a, "name").cmp(&s(b, "name")))
    });
    ok_json(&json!({ "assets": list }))
}

/// `POST /api/v1/assets?filename=<name>`: the raw body becomes the file. The reply is
/// `AssetFileInfo` plus four test-only fields the real server does not send (`filename`,
/// `size_bytes`, `sha256`, and `content_type`, the request's Content-Type), which the router's
/// transfer tests read.
pub async fn asset_upload(
    State(state): Shared,
    uri: Uri,
    headers: HeaderMap,
    digest: Option<Extension<BodyDigest>>,
    body: Bytes,
) -> ApiResult {
    let filename = required_query(&uri, "filename")?;
    let ext = suffix(&filename);
    let Some(kind) = asset_type(&ext) else {
        let all: Vec<&str> = IMAGE.iter().chain(&VIDEO).chain(&AUDIO).copied().collect();
        return Err(ApiError::bad_request(format!(
            "Invalid file type. Allowed types: {}",
            all.join(", ")
        )));
    };
    let assets = &state.assets;
    let target = normalize(&assets.dir.join(&filename));
    let Some(rel) = target
        .strip_prefix(&assets.dir)
        .ok()
        .map(FsPath::to_path_buf)
    else {
        return Err(ApiError::bad_request("Invalid filename"));
    };
    if rel.as_os_str().is_empty() {
        return Err(ApiError::bad_request("Invalid filename"));
    }
    let created_at = if assets.on_disk {
        let write = async {
            if let Some(parent) = target.parent() {
                tokio::fs::create_dir_all(parent).await?;
            }
            tokio::fs::write(&target, &body).await?;
            tokio::fs::metadata(&target).await
        };
        match write.await {
            Ok(meta) => ctime(&meta),
            Err(e) => {
                return Err(ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    e.to_string(),
                ));
            }
        }
    } else {
        let now = unix_now();
        lock(&assets.mem).insert(
            rel.clone(),
            MemAsset {
                bytes: body.clone(),
                created_at: now,
            },
        );
        now
    };
    scope_log(
        "scope.server.app",
        "INFO",
        &format!("upload_asset: Uploaded {kind} file: {}", target.display()),
    );
    let mut info = assets
        .info(&rel, body.len() as u64, created_at)
        .unwrap_or(Value::Null);
    let content_type = headers.get(CONTENT_TYPE).map_or_else(
        || "application/octet-stream".to_owned(),
        |v| String::from_utf8_lossy(v.as_bytes()).into_owned(),
    );
    let sha256 = digest.map_or_else(|| sha256_hex(&body), |Extension(BodyDigest(d))| d);
    if let Value::Object(m) = &mut info {
        m.insert("filename".to_owned(), json!(filename));
        m.insert("size_bytes".to_owned(), json!(body.len()));
        m.insert("sha256".to_owned(), json!(sha256));
        m.insert("content_type".to_owned(), json!(content_type));
    }
    Ok(ok_json(&info))
}

/// `GET /api/v1/assets/{asset_path:path}`.
pub async fn asset_get(
    State(state): Shared,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult {
    let asset_path = path_param(path)?;
    let assets = &state.assets;
    let file = if asset_path.starts_with('/') || asset_path.starts_with("root/") {
        let name = asset_path
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .unwrap_or("");
        assets.dir.join(name)
    } else {
        assets.dir.join(&asset_path)
    };
    let file = normalize(&file);
    // A string-prefix check, as upstream's.
    if !file
        .to_string_lossy()
        .starts_with(&*assets.dir.to_string_lossy())
    {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "Invalid path"));
    }
    let not_found = || ApiError::not_found("Asset not found");
    let bytes = if assets.on_disk {
        match tokio::fs::metadata(&file).await {
            Ok(m) if m.is_file() => tokio::fs::read(&file)
                .await
                .map(Bytes::from)
                .map_err(|_| not_found())?,
            _ => return Err(not_found()),
        }
    } else {
        let rel = file.strip_prefix(&assets.dir).map_err(|_| not_found())?;
        lock(&assets.mem)
            .get(rel)
            .map(|a| a.bytes.clone())
            .ok_or_else(not_found)?
    };
    let ct = media_type(&suffix(&file.to_string_lossy()));
    Ok((
        StatusCode::OK,
        [(CONTENT_TYPE, HeaderValue::from_static(ct))],
        bytes,
    )
        .into_response())
}

/// `GET /api/v1/recordings/{session_id}`. With `?size=N` (a test-only extension the real server
/// does not have) any id answers N pattern bytes as `video/mp4`, for the router's download tests.
pub async fn recording(
    State(state): Shared,
    id: Result<Path<String>, PathRejection>,
    uri: Uri,
) -> ApiResult {
    let id = path_param(id)?;
    if query_param(&uri, "size").is_some() {
        let size = size_param(&uri)?;
        return Ok(pattern_response(
            size,
            HeaderValue::from_static("video/mp4"),
        ));
    }
    let recording = {
        let mut sessions = lock(&state.sessions);
        match sessions.find(&id) {
            Some(s) => s.recording,
            None => return Err(ApiError::not_found(format!("Session {id} not found"))),
        }
    };
    if query_param(&uri, "node_id").is_some() {
        return Err(ApiError::bad_request(
            "This session has no graph record nodes; omit node_id.",
        ));
    }
    if !recording {
        return Err(ApiError::not_found(
            "No recording available for this session",
        ));
    }
    // A generated "recording": pattern bytes under the real download's headers.
    let mut resp = pattern_response(65_536, HeaderValue::from_static("video/mp4"));
    let name = crate::clock::log_file_name()
        .replace("scope-logs-", "")
        .replace(".txt", "");
    // scope-logs-YYYY-MM-DD-HH-MM-SS → recording-YYYYmmdd_HHMMSS.mp4
    let digits: String = name.chars().filter(char::is_ascii_digit).collect();
    let (date, time) = digits.split_at(digits.len().min(8));
    let disposition = format!("attachment; filename=\"recording-{date}_{time}.mp4\"");
    if let Ok(v) = HeaderValue::from_str(&disposition) {
        resp.headers_mut().insert(CONTENT_DISPOSITION, v);
    }
    Ok(resp)
}
