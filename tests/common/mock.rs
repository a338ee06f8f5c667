//! mock-scope's `/_mock/` control plane (request log, sessions, faults) and the bytes it serves.

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{Proc, get_json, http};

/// The mock's request counters and log (`total`, `by_route`, `recent`).
pub async fn mock_stats(m: &Proc) -> Value {
    get_json(&format!("{}/_mock/stats", m.http())).await.1
}

/// Requests the client's messages caused so far: every request the mock counted (health
/// probes and `/_mock/*` are not), less the connection hooks of the default routes (the
/// `PUT` after `ready` and the `DELETE` on disconnect of `/api/v1/internal/fal-connection-id`),
/// which every connection makes whatever it sends.
pub async fn mock_total(m: &Proc) -> u64 {
    let stats = mock_stats(m).await;
    let hooks: u64 = ["PUT", "DELETE"]
        .iter()
        .map(|method| {
            stats["by_route"][format!("{method} /api/v1/internal/fal-connection-id")]
                .as_u64()
                .unwrap_or(0)
        })
        .sum();
    stats["total"].as_u64().expect("stats.total") - hooks
}

/// The recorded requests (`/_mock/stats` `recent`) matching method and path prefix.
pub async fn mock_recent(m: &Proc, method: &str, path_prefix: &str) -> Vec<Value> {
    let stats = mock_stats(m).await;
    stats["recent"]
        .as_array()
        .expect("stats.recent")
        .iter()
        .filter(|r| {
            r["method"] == method
                && r["path"]
                    .as_str()
                    .is_some_and(|p| p.starts_with(path_prefix))
        })
        .cloned()
        .collect()
}

/// The mock's live WebRTC sessions.
pub async fn mock_sessions(m: &Proc) -> Vec<Value> {
    let (_, v) = get_json(&format!("{}/_mock/sessions", m.http())).await;
    v["sessions"].as_array().expect("sessions").clone()
}

/// Session ids the mock has seen DELETEd.
pub async fn mock_deleted(m: &Proc) -> Vec<String> {
    mock_deleted_at(&m.http()).await
}

/// Session ids the mock at `base` (e.g. a supervised one, known by its URL) has seen DELETEd.
pub async fn mock_deleted_at(base: &str) -> Vec<String> {
    let (_, v) = get_json(&format!("{base}/_mock/deleted")).await;
    v["deleted"]
        .as_array()
        .expect("deleted")
        .iter()
        .map(|s| s.as_str().expect("id").to_owned())
        .collect()
}

/// Sets the mock's fault rules (`{"delay_ms": {...}, "status": {...}}`), replacing earlier ones.
pub async fn set_faults(m: &Proc, faults: Value) {
    let (status, body) = http(
        &format!("{}/_mock/faults", m.http()),
        "POST",
        Some(&faults.to_string()),
    )
    .await;
    assert_eq!(status, 200, "setting faults failed: {body}");
}

/// Stops the mock at once (`POST /_mock/exit`), whatever it is serving.
pub async fn mock_exit(m: &Proc) {
    let (code, _) = http(&format!("{}/_mock/exit", m.http()), "POST", None).await;
    assert_eq!(code, 200, "/_mock/exit");
}

/// The deterministic byte pattern of the mock's binary endpoints.
pub fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| ((i * 31 + 7) % 251) as u8).collect()
}

/// Lower-case hex SHA-256, as the mock reports digests.
pub fn sha256_hex(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}
