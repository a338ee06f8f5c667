//! The schema-driven contract: cases generated from routes.yaml and schemas/, run through the real router.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // tests fail loudly by design

mod common;

use common::*;
use scope_router::contract::{self, Expect};
use scope_router::snapshot::Snapshot;
use serde_json::{Value, json};
use std::path::Path;
use std::process::Command;

fn table(routes: &Path) -> Snapshot {
    scope_router::snapshot::offline(routes).unwrap()
}

/// Runs every case one by one on one connection, checking that refused ones never reach the backend.
async fn run_all(routes: &Path) -> Vec<(String, Option<String>)> {
    let m = mock(&[]);
    let r = router(routes, &m.http(), &[]);
    let table = table(routes);
    let mut runner = contract::Runner::connect(&table, &r.ws_url())
        .await
        .unwrap();
    let mut out = Vec::new();
    for case in contract::cases(&table) {
        let refused = matches!(case.expect, Expect::Refused { .. });
        let before = mock_stats(&m).await["total"].as_u64().unwrap();
        let result = runner.run_case(case).await;
        if refused {
            let after = mock_stats(&m).await["total"].as_u64().unwrap();
            assert_eq!(
                before, after,
                "{}: a refused message reached the backend",
                result.case.name
            );
        }
        out.push((result.case.name, result.failure));
    }
    runner.close().await;
    out
}

#[tokio::test]
async fn every_example_of_the_default_routes_keeps_the_contract() {
    let routes = repo().join("routes.yaml");
    let cases = contract::cases(&table(&routes));
    // Every inbound route is covered, both ways where the schema has invalid examples.
    for route in [
        "ping",
        "get_ice_servers",
        "offer",
        "icecandidate",
        "api",
        "$default",
    ] {
        assert!(
            cases
                .iter()
                .any(|c| c.route == route && c.expect == Expect::Valid),
            "no valid case for {route}"
        );
    }
    for route in ["offer", "icecandidate", "api"] {
        assert!(
            cases
                .iter()
                .any(|c| c.route == route && c.expect != Expect::Valid),
            "no invalid case for {route}"
        );
    }
    let results = run_all(&routes).await;
    let failures: Vec<_> = results.iter().filter(|(_, f)| f.is_some()).collect();
    assert!(failures.is_empty(), "contract failures: {failures:#?}");
    assert_eq!(results.len(), cases.len());
}

#[tokio::test]
async fn a_field_removed_from_a_reply_template_breaks_the_contract() {
    let routes = default_routes_with(&[(
        "reply: { type: ice_servers, data: \"${response.json}\", status: \"${response.status}\" }",
        "reply: { type: ice_servers, data: \"${response.json}\" }",
    )]);
    let results = run_all(&routes.path).await;
    let broken: Vec<_> = results.iter().filter(|(_, f)| f.is_some()).collect();
    assert!(!broken.is_empty(), "removing `status` must fail a case");
    assert!(
        broken
            .iter()
            .all(|(name, _)| name.starts_with("get_ice_servers#")),
        "{broken:#?}"
    );
    assert!(
        broken
            .iter()
            .any(|(_, f)| f.as_deref().unwrap().contains("status")),
        "{broken:#?}"
    );
}

#[tokio::test]
async fn a_new_route_with_a_schema_and_examples_adds_passing_cases() {
    let dir = tempfile::tempdir().unwrap();
    let schemas = dir.path().join("schemas");
    std::fs::create_dir(&schemas).unwrap();
    for f in std::fs::read_dir(repo().join("schemas")).unwrap().flatten() {
        std::fs::copy(f.path(), schemas.join(f.file_name())).unwrap();
    }
    std::fs::write(
        schemas.join("status.json"),
        json!({
            "type": "object",
            "properties": {"type": {"const": "status"}, "verbose": {"type": "boolean"}},
            "required": ["type"],
            "examples": [{"type": "status"}, {"type": "status", "verbose": true}],
            "x-invalid-examples": [{"why": "verbose not a boolean", "field": "verbose", "message": {"type": "status", "verbose": "yes"}}]
        })
        .to_string(),
    )
    .unwrap();
    std::fs::write(
        schemas.join("pipeline_status.json"),
        json!({
            "type": "object",
            "properties": {"type": {"const": "pipeline_status"}, "state": {"enum": ["not_loaded", "loading", "loaded", "error"]}},
            "required": ["type", "state"]
        })
        .to_string(),
    )
    .unwrap();
    let text = std::fs::read_to_string(repo().join("routes.yaml")).unwrap()
        + "  status:\n    schema: status.json\n    reply_schemas: [pipeline_status.json]\n    forward:\n      method: GET\n      path: /api/v1/pipeline/status\n      reply: { type: pipeline_status, state: \"${response.json.status}\" }\n";
    let routes = dir.path().join("routes.yaml");
    std::fs::write(&routes, text).unwrap();
    let cases = contract::cases(&table(&routes));
    assert_eq!(cases.iter().filter(|c| c.route == "status").count(), 3);
    let results = run_all(&routes).await;
    let status: Vec<_> = results
        .iter()
        .filter(|(n, _)| n.starts_with("status#"))
        .collect();
    assert_eq!(status.len(), 3);
    assert!(status.iter().all(|(_, f)| f.is_none()), "{status:#?}");
}

fn check_cmd(url: &str, routes: &Path, extra: &[&str]) -> (bool, String) {
    let (code, out, _) = router_check(url, routes, extra);
    (code == Some(0), out)
}

#[tokio::test]
async fn check_passes_against_the_local_router_and_fails_against_a_broken_one() {
    let routes = repo().join("routes.yaml");
    let (_m, r) = stack();
    let url = r.ws_url();
    let (ok, out) = tokio::task::spawn_blocking({
        let routes = routes.clone();
        move || check_cmd(&url, &routes, &["--include-mutating"])
    })
    .await
    .unwrap();
    assert!(ok, "{out}");
    assert!(out.contains("PASS  offer#0"), "{out}");
    assert!(
        out.lines().last().unwrap().ends_with(" passed, 0 failed"),
        "{out}"
    );

    // Without --include-mutating the offer is skipped.
    let url = r.ws_url();
    let (ok, out) = tokio::task::spawn_blocking({
        let routes = routes.clone();
        move || check_cmd(&url, &routes, &["--only", "ping,offer"])
    })
    .await
    .unwrap();
    assert!(ok, "{out}");
    assert!(
        !out.contains("PASS  offer#0") && out.contains("PASS  ping#0"),
        "{out}"
    );
    assert!(out.contains("skipped"), "{out}");

    // A router whose pong lost its type breaks the contract that `routes` describes.
    let broken = default_routes_with(&[("reply: { type: pong }", "reply: { type: pong_v2 }")]);
    let m2 = mock(&[]);
    let r2 = router(&broken.path, &m2.http(), &[]);
    let url2 = r2.ws_url();
    let (ok, out) =
        tokio::task::spawn_blocking(move || check_cmd(&url2, &routes, &["--only", "ping"]))
            .await
            .unwrap();
    assert!(!ok, "{out}");
    assert!(out.contains("FAIL  ping#0"), "{out}");
}

#[test]
fn asyncapi_document_lists_every_route() {
    let out = Command::new(ROUTER)
        .args(["asyncapi", "--routes"])
        .arg(repo().join("routes.yaml"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["asyncapi"], "3.0.0");
    assert_eq!(doc["channels"]["ws"]["address"], "/ws");
    let ops = doc["operations"].as_object().unwrap();
    for route in [
        "ping",
        "get_ice_servers",
        "offer",
        "icecandidate",
        "api",
        "unknown",
    ] {
        let op = &ops[route];
        assert_eq!(op["action"], "receive", "{route}");
        // Every reference resolves inside the document.
        for r in op["messages"]
            .as_array()
            .unwrap()
            .iter()
            .chain(op["reply"]["messages"].as_array().into_iter().flatten())
        {
            let pointer = r["$ref"].as_str().unwrap().trim_start_matches('#');
            let target = doc
                .pointer(pointer)
                .unwrap_or_else(|| panic!("dangling {pointer}"));
            let msg = doc
                .pointer(target["$ref"].as_str().unwrap().trim_start_matches('#'))
                .unwrap();
            assert!(msg["name"].is_string());
        }
    }
    assert!(
        ops["ping"]["reply"]["messages"][0]["$ref"]
            .as_str()
            .unwrap()
            .ends_with("/pong")
    );
    assert!(doc["components"]["messages"]["offer"]["payload"]["properties"]["sdp"].is_object());
}

#[test]
fn every_schema_accepts_its_examples_and_refuses_its_invalid_ones() {
    let mut checked = 0;
    for f in std::fs::read_dir(repo().join("schemas")).unwrap().flatten() {
        let path = f.path();
        if path.file_name().unwrap() == "routes.schema.json" {
            continue;
        }
        let s = scope_router::validate::CompiledSchema::load(&path).unwrap();
        assert!(
            !s.examples().is_empty(),
            "{} has no examples",
            path.display()
        );
        for ex in s.examples() {
            assert_eq!(
                s.check(ex),
                None,
                "{}: example refused: {ex}",
                path.display()
            );
        }
        for bad in s.invalid_examples() {
            let problem = s.check(&bad.message).unwrap_or_else(|| {
                panic!("{}: invalid example accepted: {}", path.display(), bad.why)
            });
            assert!(
                problem.contains(&bad.field),
                "{}: {:?} does not name {}",
                path.display(),
                problem,
                bad.field
            );
        }
        checked += 1;
    }
    assert!(
        checked >= 13,
        "inbound and outbound schemas expected, found {checked}"
    );
}

#[tokio::test]
async fn validate_replies_warn_logs_a_broken_reply() {
    let routes = default_routes_with(&[
        ("reply: { type: pong }", "reply: { type: pong_v2 }"),
        ("version: 1\n", "version: 1\nvalidate_replies: warn\n"),
    ]);
    let m = mock(&[]);
    let r = router(&routes.path, &m.http(), &[]);
    let mut ws = Ws::connect(&r.ws_url()).await;
    let v = ws.call("p", json!({"type": "ping"})).await;
    assert_eq!(v["type"], "pong_v2");
    let line = r.wait_for_line("reply breaks the contract").await;
    assert!(line.contains("ping"), "{line}");
}
