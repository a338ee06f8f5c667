//! Operator tools that must say exactly what is true: `check`'s selection and summary, reload
//! recovery, metrics help text, flags offered only where they apply, and the operator token
//! in front of `/admin/config`, `/metrics` and the detailed `/readyz`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // tests fail loudly by design

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

/// A schema for a route whose message is `{"type": <name>}`, with one example.
fn schema_for(name: &str) -> String {
    format!(
        r#"{{ "type": "object", "properties": {{ "type": {{ "const": "{name}" }} }}, "required": ["type"],
             "examples": [ {{ "type": "{name}" }} ] }}"#
    )
}

/// The default routes plus two routes without `reply_schemas`: a GET forward (safe) and the
/// README walkthrough's fixed-target POST (it changes backend state).
fn routes_with_custom() -> TempRoutes {
    let t = default_routes_with(&[(
        "\n  ping:\n",
        "\n  pipeline_state:\n    schema: pipeline_state.json\n    forward:\n      method: GET\n      path: /api/v1/pipeline/status\n      reply: { type: pipeline_state, data: \"${response.json}\" }\n  load_pipeline:\n    schema: load_pipeline.json\n    forward:\n      method: POST\n      path: /api/v1/pipeline/load\n      body: { pipeline_ids: [passthrough] }\n      reply: { type: pipeline_loading, status: \"${response.status}\" }\n  ping:\n",
    )]);
    // The routes' schema directory is the repo's; these two schemas live in the tempdir,
    // named by absolute path.
    let state = t.write("pipeline_state.json", &schema_for("pipeline_state"));
    let load = t.write("load_pipeline.json", &schema_for("load_pipeline"));
    let text = std::fs::read_to_string(&t.path).unwrap();
    let text = text
        .replace(
            "schema: pipeline_state.json",
            &format!("schema: {}", state.display()),
        )
        .replace(
            "schema: load_pipeline.json",
            &format!("schema: {}", load.display()),
        );
    std::fs::write(&t.path, text).unwrap();
    t
}

#[tokio::test]
async fn check_passes_routes_without_reply_schemas_and_never_sends_a_fixed_post() {
    let routes = routes_with_custom();
    let m = mock(&[]);
    let r = router(&routes.path, &m.http(), &[]);
    let (url, path) = (r.ws_url(), routes.path.clone());
    let (code, out, _) = tokio::task::spawn_blocking(move || {
        router_check(
            &url,
            &path,
            &["--only", "pipeline_state,load_pipeline,ping"],
        )
    })
    .await
    .unwrap();
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("PASS  pipeline_state#0"), "{out}");
    assert!(
        out.contains("warning: route `pipeline_state` names no reply_schemas"),
        "{out}"
    );
    assert!(
        !out.contains("load_pipeline#0"),
        "a fixed POST is mutating: {out}"
    );
    assert!(
        out.contains("1 cases that change backend state skipped"),
        "{out}"
    );
    assert!(out.contains("left out by --only"), "{out}");
    assert!(
        out.lines().last().unwrap().ends_with("passed, 0 failed"),
        "{out}"
    );
    assert!(
        mock_recent(&m, "POST", "/api/v1/pipeline/load")
            .await
            .is_empty(),
        "check sent a POST without --include-mutating"
    );

    // With --include-mutating it runs, and reaches the backend.
    let (url, path) = (r.ws_url(), routes.path.clone());
    let (code, out, _) = tokio::task::spawn_blocking(move || {
        router_check(
            &url,
            &path,
            &["--only", "load_pipeline", "--include-mutating"],
        )
    })
    .await
    .unwrap();
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("PASS  load_pipeline#0"), "{out}");
    assert_eq!(
        mock_recent(&m, "POST", "/api/v1/pipeline/load").await.len(),
        1
    );
}

#[tokio::test]
async fn check_only_with_an_unknown_route_is_an_error_that_lists_the_routes() {
    let (_m, r) = stack();
    let url = r.ws_url();
    let routes = repo().join("routes.yaml");
    let (code, out, err) =
        tokio::task::spawn_blocking(move || router_check(&url, &routes, &["--only", "pingg"]))
            .await
            .unwrap();
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(err.contains("--only names no route: pingg"), "{err}");
    assert!(
        err.contains("ping") && err.contains("icecandidate"),
        "{err}"
    );
    assert!(!out.contains("0 passed, 0 failed"), "{out}");
}

#[test]
fn validate_warns_about_routes_without_reply_schemas() {
    let routes = routes_with_custom();
    let out = Command::new(ROUTER)
        .args(["validate", "--routes"])
        .arg(&routes.path)
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("warning: route `load_pipeline` names no reply_schemas"),
        "{err}"
    );
}

#[tokio::test]
async fn a_fixed_file_after_a_failed_reload_is_confirmed_in_the_log() {
    let routes = default_routes_with(&[]);
    let good = std::fs::read_to_string(&routes.path).unwrap();
    let m = mock(&[]);
    let r = router(&routes.path, &m.http(), &["--reload-debounce", "20ms"]);
    std::fs::write(&routes.path, good.replace("version: 1", "version: [")).unwrap();
    r.wait_for_line("reload failed").await;
    std::fs::write(&routes.path, &good).unwrap();
    r.wait_for_line("reload recovered").await;
}

/// Every metric the README lists, with its help text, before any connection was made.
#[tokio::test]
async fn metrics_have_help_and_every_gauge_exists_from_startup() {
    let (_m, r) = stack();
    let (status, text) = http(&format!("{}/metrics", r.http()), "GET", None).await;
    assert_eq!(status, 200);
    for name in [
        "scope_router_messages_total",
        "scope_router_message_duration_seconds",
        "scope_router_connections_open",
        "scope_router_backend_restarts_total",
        "scope_router_backend_crash_loop",
        "scope_router_reload_total",
    ] {
        assert!(
            text.contains(&format!("# HELP {name} ")),
            "no help for {name}:\n{text}"
        );
    }
    assert!(
        text.lines().any(|l| l == "scope_router_connections_open 0"),
        "{text}"
    );
}

#[test]
fn subcommands_offer_only_their_own_flags() {
    let help = |args: &[&str]| {
        let out = Command::new(ROUTER).args(args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(!help(&["schema", "--help"]).contains("--log-format"));
    assert!(!help(&["validate", "--help"]).contains("--log-format"));
    assert!(help(&["serve", "--help"]).contains("--log-format"));
}

fn validate(routes: &Path) -> (bool, String) {
    let out = Command::new(ROUTER)
        .args(["validate", "--routes"])
        .arg(routes)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const BASE: &str = "version: 1\nbackend:\n  url: http://127.0.0.1:1\nroutes:\n";

#[test]
fn validate_reports_every_misspelled_key_at_its_own_place() {
    let t = TempRoutes::new(&format!(
        "{BASE}  ping:\n    reply: {{ type: pong }}\n    schemma: ping.json\n  pong:\n    replyy: {{ type: x }}\n    reply: {{ type: y }}\nconection: {{}}\n"
    ));
    let (ok, err) = validate(&t.path);
    assert!(!ok);
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(lines.len(), 3, "{err}");
    let file = t.path.display().to_string();
    assert!(
        lines[0].starts_with(&format!("error: {file}:7:5: unknown field `schemma`")),
        "{err}"
    );
    assert!(
        lines[1].starts_with(&format!("error: {file}:9:5: unknown field `replyy`")),
        "{err}"
    );
    assert!(
        lines[2].starts_with(&format!("error: {file}:11:1: unknown field `conection`")),
        "{err}"
    );
}

#[test]
fn validate_places_a_template_typo_at_the_expression() {
    let t = TempRoutes::new(&format!(
        "{BASE}  ping:\n    reply:\n      type: pong\n      who: \"${{conection.id}}\"\n"
    ));
    let (ok, err) = validate(&t.path);
    assert!(!ok);
    let file = t.path.display().to_string();
    assert!(
        err.contains(&format!(
            "{file}:8:13: route `ping`: reply: unknown variable `${{conection.id}}`"
        )),
        "{err}"
    );
}

#[test]
fn validate_places_a_schema_error_in_the_schema_file_once() {
    let t = TempRoutes::new(&format!(
        "{BASE}  ping:\n    schema: ping.json\n    reply: {{ type: pong }}\n"
    ));
    let schema = t.write("schemas/ping.json", "{\n  \"type\": \"object\",\n  \"properties\": {\n    \"type\": { \"const\": \"ping\" },\n  }\n}\n");
    let (ok, err) = validate(&t.path);
    assert!(!ok);
    let at = format!("error: {}:5:", schema.display());
    assert!(err.contains(&at), "the schema file's own place: {err}");
    assert!(err.contains("(schema of route `ping`)"), "{err}");
    assert!(!err.contains("at line"), "the place is said once: {err}");
    assert!(!err.contains("routes.yaml:"), "{err}");
}

#[test]
fn validate_flags_a_misspelled_schema_keyword() {
    let t = TempRoutes::new(&format!(
        "{BASE}  ping:\n    schema: ping.json\n    reply: {{ type: pong }}\n"
    ));
    let schema = t.write(
        "schemas/ping.json",
        "{\n  \"type\": \"object\",\n  \"properties\": {\n    \"name\": { \"type\": \"string\", \"minLenght\": 1 }\n  }\n}\n",
    );
    let (ok, err) = validate(&t.path);
    assert!(!ok, "a constraint that would silently vanish is an error");
    assert!(
        err.contains(&format!("error: {}:4:33: unknown JSON Schema keyword `minLenght` at /properties/name (did you mean `minLength`?)", schema.display())),
        "{err}"
    );
}

const OPERATOR_TOKEN: &str = "op-7c1e94b2d05a";

/// The default routes with `operator.token_env` naming `SCOPE_TEST_OPERATOR_TOKEN`.
fn routes_with_operator_token() -> TempRoutes {
    default_routes_with(&[(
        "\nbackend:\n",
        "\noperator:\n  token_env: SCOPE_TEST_OPERATOR_TOKEN\nbackend:\n",
    )])
}

/// GET `path` on the router with extra headers: status, response head, body.
async fn get(r: &Proc, path: &str, headers: &[(&str, &str)]) -> (u16, String, String) {
    http_with(&format!("{}{path}", r.http()), "GET", headers, None).await
}

/// What an answer without the operator token must not reveal.
fn assert_reveals_nothing(what: &str, text: &str, backend: &str, routes: &Path) {
    let routes = routes.display().to_string();
    for secret in [
        backend,
        routes.as_str(),
        "routes.yaml",
        "get_ice_servers",
        "scope_router_",
    ] {
        assert!(!text.contains(secret), "{what} reveals {secret:?}: {text}");
    }
}

#[tokio::test]
async fn with_an_operator_token_status_endpoints_answer_only_its_holder() {
    let t = routes_with_operator_token();
    let m = mock(&[]);
    let r = router_env(
        &t.path,
        &m.http(),
        &[("SCOPE_TEST_OPERATOR_TOKEN", OPERATOR_TOKEN)],
    );
    let bearer = format!("Bearer {OPERATOR_TOKEN}");
    let wrong = format!("Bearer {OPERATOR_TOKEN}x");

    // Without the token, or with a wrong one: 401 and a JSON error, nothing else.
    for path in ["/admin/config", "/metrics"] {
        for headers in [vec![], vec![("Authorization", wrong.as_str())]] {
            let (code, head, body) = get(&r, path, &headers).await;
            assert_eq!(code, 401, "{path} {headers:?}: {body}");
            assert!(
                head.to_ascii_lowercase()
                    .contains("www-authenticate: bearer"),
                "{head}"
            );
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(v["code"], "UNAUTHORIZED", "{body}");
            assert_reveals_nothing(path, &format!("{head}{body}"), &m.http(), &t.path);
        }
        // The WebSocket's token parameter is not the operator's.
        let (code, _, _) = get(&r, &format!("{path}?fal_jwt_token={OPERATOR_TOKEN}"), &[]).await;
        assert_eq!(code, 401, "{path} with fal_jwt_token");
    }

    // /readyz without the token: the status and `ready`, nothing about backend, files or versions.
    let minimal = eventually("a ready backend on the minimal /readyz", || async {
        let (code, _, body) = get(&r, "/readyz", &[]).await;
        (code == 200).then_some(body)
    })
    .await;
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&minimal).unwrap(),
        serde_json::json!({"ready": true}),
        "{minimal}"
    );
    assert_reveals_nothing("/readyz", &minimal, &m.http(), &t.path);
    let (code, _, body) = get(&r, "/readyz", &[("Authorization", wrong.as_str())]).await;
    assert_eq!((code, body.as_str()), (200, r#"{"ready":true}"#));

    // With the token, as a Bearer header or `?token=`: the full answers.
    let (code, _, body) = get(&r, "/admin/config", &[("Authorization", bearer.as_str())]).await;
    assert_eq!(code, 200, "{body}");
    let config: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(config["file"], t.path.display().to_string(), "{body}");
    assert!(body.contains("get_ice_servers"), "{body}");
    let (code, _, body) = get(&r, &format!("/admin/config?token={OPERATOR_TOKEN}"), &[]).await;
    assert_eq!(code, 200, "{body}");
    let (code, _, body) = get(&r, "/metrics", &[("Authorization", bearer.as_str())]).await;
    assert_eq!(code, 200);
    assert!(
        body.contains("# HELP scope_router_messages_total "),
        "{body}"
    );
    let (code, _, body) = get(&r, &format!("/readyz?token={OPERATOR_TOKEN}"), &[]).await;
    assert_eq!(code, 200, "{body}");
    let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["backend"]["url"], m.http(), "{body}");
    assert!(ready["config"]["version"].is_string(), "{body}");

    // /healthz stays open.
    let (code, _, _) = get(&r, "/healthz", &[]).await;
    assert_eq!(code, 200);

    // A backend that is gone: the minimal answer says so with 503 and `ready: false`.
    mock_exit(&m).await;
    let body = eventually("/readyz 503 without the token", || async {
        let (code, _, body) = get(&r, "/readyz", &[]).await;
        (code == 503).then_some(body)
    })
    .await;
    assert_eq!(body, r#"{"ready":false}"#);
}

#[tokio::test]
async fn the_operator_token_is_applied_and_lifted_by_a_reload() {
    let open = default_routes_with(&[]);
    let open_text = std::fs::read_to_string(&open.path).unwrap();
    let guarded_text = std::fs::read_to_string(routes_with_operator_token().path).unwrap();
    let m = mock(&[]);
    let r = router_with(
        &open.path,
        &m.http(),
        &["--reload-debounce", "20ms"],
        &[("SCOPE_TEST_OPERATOR_TOKEN", OPERATOR_TOKEN)],
    );
    let bearer = format!("Bearer {OPERATOR_TOKEN}");

    let (code, _, _) = get(&r, "/admin/config", &[]).await;
    assert_eq!(code, 200, "no operator section: open");
    std::fs::write(&open.path, &guarded_text).unwrap();
    eventually("the reload to require the operator token", || async {
        (get(&r, "/admin/config", &[]).await.0 == 401).then_some(())
    })
    .await;
    let (code, _, body) = get(&r, "/metrics", &[]).await;
    assert_eq!(code, 401, "{body}");
    let (code, _, body) = get(&r, "/admin/config", &[("Authorization", bearer.as_str())]).await;
    assert_eq!(code, 200, "{body}");
    std::fs::write(&open.path, &open_text).unwrap();
    eventually("the reload to open the endpoints again", || async {
        (get(&r, "/admin/config", &[]).await.0 == 200).then_some(())
    })
    .await;
}

#[tokio::test]
async fn an_unset_operator_token_variable_locks_the_endpoints_instead_of_opening_them() {
    let t = routes_with_operator_token();
    let m = mock(&[]);
    let r = router(&t.path, &m.http(), &[]);
    r.wait_for_line("operator token unavailable").await;
    for headers in [vec![], vec![("Authorization", "Bearer anything")]] {
        let (code, _, body) = get(&r, "/admin/config", &headers).await;
        assert_eq!(code, 401, "{headers:?}: {body}");
        let (code, _, body) = get(&r, "/metrics", &headers).await;
        assert_eq!(code, 401, "{headers:?}: {body}");
    }
    let body = eventually("the minimal /readyz", || async {
        let (code, _, body) = get(&r, "/readyz", &[]).await;
        (code == 200).then_some(body)
    })
    .await;
    assert_eq!(body, r#"{"ready":true}"#);
}
