//! The fal deployment example: its Python compiles, its routes validate, and its start command runs here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // tests fail loudly by design

mod common;

use std::process::Command;

use common::*;
use serde_json::{Value, json};

fn fal_dir() -> std::path::PathBuf {
    repo().join("examples/fal")
}

#[test]
fn fal_app_compiles_and_prints_its_start_command() {
    // Compile into a temporary cache, so the test writes nothing into the repository.
    let cache = tempfile::tempdir().unwrap();
    let ok = Command::new("python3")
        .args(["-m", "py_compile"])
        .arg(fal_dir().join("fal_app.py"))
        .env("PYTHONPYCACHEPREFIX", cache.path())
        .status()
        .unwrap();
    assert!(ok.success());
    let out = Command::new("python3")
        .arg(fal_dir().join("fal_app.py"))
        .arg("--print-command")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .unwrap();
    assert!(out.status.success());
    let cmd: Vec<String> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(cmd[1], "serve");
    assert!(
        cmd.windows(2)
            .any(|w| w[0] == "--listen" && w[1] == "0.0.0.0:8080"),
        "{cmd:?}"
    );
    assert!(
        cmd.windows(2)
            .any(|w| w[0] == "--routes" && w[1].ends_with("examples/fal/routes.yaml")),
        "{cmd:?}"
    );
}

#[test]
fn fal_routes_validate_and_run_the_real_scope_command() {
    let routes = fal_dir().join("routes.yaml");
    let out = Command::new(ROUTER)
        .args(["validate", "--routes"])
        .arg(&routes)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&routes).unwrap();
    assert!(text.contains(r#"command: ["uv", "run", "daydream-scope", "--no-browser""#));
    // The Dockerfile lays files out as routes.yaml expects.
    let docker = std::fs::read_to_string(fal_dir().join("Dockerfile")).unwrap();
    assert!(
        docker.contains("/opt/scope-router/examples/fal/routes.yaml")
            && docker.contains("/opt/scope-router/schemas")
    );
}

#[tokio::test]
async fn the_start_command_serves_with_mock_scope_in_place_of_scope() {
    let dir = tempfile::tempdir().unwrap();
    let backend_port = free_port();
    let router_port = free_port();
    // The fal routes, with mock-scope standing in for `uv run daydream-scope`.
    let text = std::fs::read_to_string(fal_dir().join("routes.yaml"))
        .unwrap()
        .replace(
            r#"["uv", "run", "daydream-scope", "--no-browser", "--host", "127.0.0.1", "--port", "8000"]"#,
            &json!([MOCK.as_str(), "--no-browser", "--host", "127.0.0.1", "--port", backend_port.to_string()]).to_string(),
        )
        .replace("http://127.0.0.1:8000", &format!("http://127.0.0.1:{backend_port}"))
        .replace("schemas: ../../schemas", &format!("schemas: {}", repo().join("schemas").display()))
        .replace("/tmp/daydream-scope", &dir.path().join("scope").display().to_string())
        .replace("/data/models", &dir.path().join("models").display().to_string());
    let routes = dir.path().join("routes.yaml");
    std::fs::write(&routes, text).unwrap();

    let mut cmd = Command::new("python3");
    cmd.arg(fal_dir().join("fal_app.py"))
        .arg("--run")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("SCOPE_ROUTER_BIN", ROUTER)
        .env("SCOPE_ROUTES", &routes)
        .env("SCOPE_ROUTER_PORT", router_port.to_string())
        // The fal secret that guards the operator endpoints (routes.yaml `operator`).
        .env("SCOPE_ROUTER_OPERATOR_TOKEN", "fal-op-3e9a51c7");
    let mut app = Proc::start(cmd, "scope-router listening on");
    assert_eq!(app.addr.port(), router_port);
    let ready = eventually("the supervised backend to be ready", || async {
        let (code, body) = get_json(&format!("{}/readyz", app.http())).await;
        (code == 200).then_some(body)
    })
    .await;
    // Without the operator token: `ready` alone, and the operator endpoints refuse.
    assert_eq!(ready, json!({"ready": true}));
    let (code, _) = http(&format!("{}/admin/config", app.http()), "GET", None).await;
    assert_eq!(code, 401);
    let (code, body) = get_json(&format!("{}/readyz?token=fal-op-3e9a51c7", app.http())).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        body["backend"]["url"],
        format!("http://127.0.0.1:{backend_port}")
    );
    let mut ws = Ws::connect(&app.ws_url()).await;
    assert_eq!(ws.call("p", json!({"type": "ping"})).await["type"], "pong");
    let v = ws
        .call(
            "s",
            json!({"type": "api", "method": "GET", "path": "/api/v1/pipeline/status"}),
        )
        .await;
    assert_eq!(v["status"], 200);
    // JSON logs, as the start command asks for.
    let line = app.wait_for_line("\"backend is healthy\"").await;
    assert!(serde_json::from_str::<Value>(&line).is_ok(), "{line}");

    // fal stops the runner with SIGTERM: the router (exec'd in place of python) stops Scope too.
    let pid = app.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    assert_eq!(ws.closed().await, Some(1001));
    let (status, _app) = tokio::task::spawn_blocking(move || (app.child.wait().unwrap(), app))
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
    eventually("the backend port to be free", || async {
        tokio::net::TcpStream::connect(("127.0.0.1", backend_port))
            .await
            .is_err()
            .then_some(())
    })
    .await;
}
