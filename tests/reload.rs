//! Live reload of routes.yaml and schemas: checked swaps, no lost messages, errors shown with their line.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // tests fail loudly by design

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

const DEBOUNCE: &str = "50ms";

fn routes_text(schemas: &Path, variant: &str, extra_routes: &str) -> String {
    format!(
        r#"version: 1
listen: "127.0.0.1:0"
schemas: {}
backend: {{ url: "http://127.0.0.1:9" }}
routes:
  ping:
    schema: ping.json
    reply: {{ type: pong, variant: {variant} }}
{extra_routes}"#,
        schemas.display()
    )
}

struct Fixture {
    dir: tempfile::TempDir,
    routes: PathBuf,
    schemas: PathBuf,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let schemas = dir.path().join("schemas");
    std::fs::create_dir(&schemas).unwrap();
    std::fs::copy(repo().join("schemas/ping.json"), schemas.join("ping.json")).unwrap();
    let routes = dir.path().join("routes.yaml");
    std::fs::write(&routes, routes_text(&schemas, "A", "")).unwrap();
    Fixture {
        dir,
        routes,
        schemas,
    }
}

fn start(routes: &Path, extra: &[&str]) -> Proc {
    let mut args = vec!["--reload-debounce", DEBOUNCE];
    args.extend_from_slice(extra);
    router(routes, "http://127.0.0.1:9", &args)
}

/// Saves like an editor: write a temporary file, then rename it over the target.
fn save_by_rename(path: &Path, text: &str) {
    let tmp = path.with_extension("yaml.swp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

async fn ping_variant(ws: &mut Ws, rid: &str) -> Value {
    ws.call(rid, json!({"type": "ping"})).await["variant"].clone()
}

/// Pings until the reply carries `want`. Every 2 ms: the reload latency the README quotes is
/// measured through this wait.
async fn until_variant(ws: &mut Ws, want: &str, tag: &str) {
    let mut k = 0;
    eventually_every(
        Duration::from_millis(2),
        format_args!("{tag}: variant {want} answered"),
        async || {
            k += 1;
            (ping_variant(ws, &format!("{tag}-{k}")).await == want).then_some(())
        },
    )
    .await;
}

async fn admin(r: &Proc) -> Value {
    get_json(&format!("{}/admin/config", r.http())).await.1
}

#[tokio::test]
async fn hundred_rewrites_under_load_lose_nothing() {
    let f = fixture();
    let r = start(&f.routes, &[]);
    let url = r.ws_url();

    // Four connections ping continuously and check every reply.
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for w in 0..4 {
        let (stop, answered, url) = (stop.clone(), answered.clone(), url.clone());
        workers.push(tokio::spawn(async move {
            let mut ws = Ws::connect(&url).await;
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let rid = format!("w{w}-{n}");
                let v = ws.call(&rid, json!({"type": "ping"})).await;
                assert_eq!(v["type"], "pong", "{v}");
                assert!(v["variant"] == "A" || v["variant"] == "B", "{v}");
                n += 1;
                answered.fetch_add(1, Ordering::Relaxed);
            }
            n
        }));
    }

    let mut probe = Ws::connect(&url).await;
    // A baseline of the workers' rate with no reloads, for the throughput figure below.
    let base_from = (Instant::now(), answered.load(Ordering::Relaxed));
    // The baseline window: one second of pings before any rewrite.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let baseline = (answered.load(Ordering::Relaxed) - base_from.1) as f64
        / base_from.0.elapsed().as_secs_f64();
    let during_from = (Instant::now(), answered.load(Ordering::Relaxed));
    let mut latencies = Vec::new();
    for i in 0..100 {
        let want = if i % 2 == 0 { "B" } else { "A" };
        let text = routes_text(&f.schemas, want, "");
        let written = Instant::now();
        if i % 3 == 0 {
            save_by_rename(&f.routes, &text);
        } else {
            std::fs::write(&f.routes, &text).unwrap();
        }
        until_variant(&mut probe, want, &format!("probe-{i}")).await;
        latencies.push(written.elapsed());
    }
    let during = (answered.load(Ordering::Relaxed) - during_from.1) as f64
        / during_from.0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let mut sent = 0;
    for w in workers {
        sent += w.await.unwrap();
    }
    assert_eq!(sent, answered.load(Ordering::Relaxed));
    assert!(sent > 0);
    latencies.sort();
    eprintln!(
        "reload latency over 100 writes (debounce {DEBOUNCE}): p50 {:?}, p99 {:?}, max {:?}; {sent} pings answered; \
         4-connection ping rate {baseline:.0}/s without reloads, {during:.0}/s during them ({:.1}%)",
        latencies[49],
        latencies[98],
        latencies[99],
        100.0 * during / baseline
    );
    let cfg = admin(&r).await;
    assert_eq!(cfg["last_reload_error"], Value::Null);
}

#[tokio::test]
async fn invalid_files_keep_the_old_routes_and_say_where() {
    let f = fixture();
    let r = start(&f.routes, &[]);
    let mut ws = Ws::connect(&r.ws_url()).await;
    assert_eq!(ping_variant(&mut ws, "p0").await, "A");
    let good_version = admin(&r).await["version"].clone();

    let cases: [(&str, String, &str); 3] = [
        (
            "yaml syntax",
            routes_text(&f.schemas, "B", "").replace("variant: B }", "variant: \"B }"),
            "routes.yaml:8:35: unclosed quote",
        ),
        (
            "unknown field",
            routes_text(&f.schemas, "B", "").replace(
                "    schema: ping.json\n",
                "    schema: ping.json\n    shema: oops\n",
            ),
            "routes.yaml:8:5: unknown field `shema`",
        ),
        (
            "schema that does not compile",
            routes_text(
                &f.schemas,
                "B",
                "  broken:\n    schema: broken.json\n    reply: { type: x }\n",
            ),
            "broken.json: not a valid JSON Schema",
        ),
    ];
    std::fs::write(f.schemas.join("broken.json"), r#"{"type": 12}"#).unwrap();
    for (what, text, needle) in cases {
        std::fs::write(&f.routes, &text).unwrap();
        let cfg = eventually(what, || async {
            let cfg = admin(&r).await;
            cfg["last_reload_error"]
                .as_str()
                .is_some_and(|e| e.contains(needle))
                .then_some(cfg)
        })
        .await;
        assert_eq!(cfg["version"], good_version, "{what}: table changed");
        assert_eq!(
            ping_variant(&mut ws, &format!("p-{what}")).await,
            "A",
            "{what}: old routes must keep serving"
        );
        let (_, ready) = get_json(&format!("{}/readyz", r.http())).await;
        assert!(
            ready["config"]["last_reload_error"]
                .as_str()
                .unwrap()
                .contains(needle),
            "{ready}"
        );
    }
    let (_, metrics) = http(&format!("{}/metrics", r.http()), "GET", None).await;
    assert!(
        metrics.contains("scope_router_reload_total{result=\"error\"}"),
        "{metrics}"
    );

    // A good file clears the error.
    std::fs::write(&f.routes, routes_text(&f.schemas, "B", "")).unwrap();
    eventually("recovery", || async {
        let cfg = admin(&r).await;
        cfg["last_reload_error"].is_null().then_some(())
    })
    .await;
    assert_eq!(ping_variant(&mut ws, "p-last").await, "B");
}

#[tokio::test]
async fn symlink_swap_is_picked_up() {
    // The layout a Kubernetes ConfigMap volume uses: routes.yaml -> ..data/routes.yaml, ..data -> ..v1.
    let f = fixture();
    let cm = f.dir.path().join("cm");
    std::fs::create_dir(&cm).unwrap();
    let v1 = cm.join("..v1");
    std::fs::create_dir(&v1).unwrap();
    std::fs::write(v1.join("routes.yaml"), routes_text(&f.schemas, "A", "")).unwrap();
    std::os::unix::fs::symlink("..v1", cm.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/routes.yaml", cm.join("routes.yaml")).unwrap();
    let r = start(&cm.join("routes.yaml"), &[]);
    let mut ws = Ws::connect(&r.ws_url()).await;
    assert_eq!(ping_variant(&mut ws, "s0").await, "A");

    let v2 = cm.join("..v2");
    std::fs::create_dir(&v2).unwrap();
    std::fs::write(v2.join("routes.yaml"), routes_text(&f.schemas, "B", "")).unwrap();
    std::os::unix::fs::symlink("..v2", cm.join("..data_tmp")).unwrap();
    std::fs::rename(cm.join("..data_tmp"), cm.join("..data")).unwrap();
    until_variant(&mut ws, "B", "swap").await;
}

#[tokio::test]
async fn a_new_route_and_its_schema_go_live_together() {
    let f = fixture();
    let r = start(&f.routes, &[]);
    let mut ws = Ws::connect(&r.ws_url()).await;
    let route = "  greet:\n    schema: greet.json\n    reply: { type: greeting, text: \"hi ${message.name}\" }\n";
    // The worse order: the routes file names the schema before it exists.
    std::fs::write(&f.routes, routes_text(&f.schemas, "A", route)).unwrap();
    let cfg = eventually("the failed reload", || async {
        let cfg = admin(&r).await;
        cfg["last_reload_error"]
            .as_str()
            .is_some_and(|e| e.contains("greet.json"))
            .then_some(cfg)
    })
    .await;
    assert!(
        cfg["routes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["name"] != "greet")
    );
    // Meanwhile the route does not exist at all (never without its schema).
    let v = ws.call("g0", json!({"type": "greet"})).await;
    assert_eq!(v["error"], "Unknown message type: greet");

    let schema = json!({
        "type": "object",
        "properties": {"type": {"const": "greet"}, "name": {"type": "string"}},
        "required": ["type", "name"],
        "examples": [{"type": "greet", "name": "ada"}]
    });
    std::fs::write(f.schemas.join("greet.json"), schema.to_string()).unwrap();
    let reply = eventually("the new route to go live", async || {
        let v = ws.call("g1", json!({"type": "greet", "name": "ada"})).await;
        if v["type"] == "greeting" {
            return Some(v);
        }
        // Before the swap the route must not exist at all: never a reply without validation.
        assert_eq!(v["error"], "Unknown message type: greet", "{v}");
        None
    })
    .await;
    assert_eq!(reply["text"], "hi ada");
    let bad = ws.call("g-bad", json!({"type": "greet"})).await;
    assert_eq!(bad["type"], "error");
    assert!(bad["error"].as_str().unwrap().contains("name"), "{bad}");
}

#[tokio::test]
async fn sighup_reloads_without_a_watcher_and_restart_only_fields_are_reported() {
    let f = fixture();
    let r = start(&f.routes, &["--no-watch"]);
    let mut ws = Ws::connect(&r.ws_url()).await;
    let text = routes_text(&f.schemas, "B", "")
        .replace("listen: \"127.0.0.1:0\"", "listen: \"127.0.0.1:1\"");
    std::fs::write(&f.routes, &text).unwrap();
    // No watcher: nothing changes until SIGHUP. (A ping round trip proves the router is serving.)
    assert_eq!(ping_variant(&mut ws, "h0").await, "A");
    let ok = Command::new("kill")
        .args(["-HUP", &r.child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    until_variant(&mut ws, "B", "hup").await;
    // `--listen` was given on the command line, so a changed `listen` is no news...
    assert_eq!(admin(&r).await["pending_restart"], json!([]));
}

#[tokio::test]
async fn restart_only_fields_are_reported() {
    let f = fixture();
    let mut cmd = Command::new(ROUTER);
    cmd.args(["serve", "--routes"]).arg(&f.routes).args([
        "--reload-debounce",
        DEBOUNCE,
        "--no-supervise",
    ]);
    let r = Proc::start(cmd, "scope-router listening on");
    let text = routes_text(&f.schemas, "B", "")
        .replace("listen: \"127.0.0.1:0\"", "listen: \"127.0.0.1:1\"")
        .replace(
            "backend: { url: \"http://127.0.0.1:9\" }",
            "backend: { url: \"http://127.0.0.1:10\", command: [\"true\"] }",
        );
    std::fs::write(&f.routes, &text).unwrap();
    let cfg = eventually("pending restart fields", || async {
        let cfg = admin(&r).await;
        (cfg["pending_restart"]
            .as_array()
            .is_some_and(|a| !a.is_empty()))
        .then_some(cfg)
    })
    .await;
    assert_eq!(cfg["pending_restart"], json!(["listen", "backend.command"]));
    // The rest applied live, including the backend URL.
    let (_, ready) = get_json(&format!("{}/readyz", r.http())).await;
    assert_eq!(ready["backend"]["url"], "http://127.0.0.1:10");
    let mut ws = Ws::connect(&r.ws_url()).await;
    assert_eq!(ping_variant(&mut ws, "x").await, "B");
}

#[test]
fn schema_command_matches_the_checked_in_file() {
    let out = Command::new(ROUTER).arg("schema").output().unwrap();
    assert!(out.status.success());
    let checked_in = std::fs::read_to_string(repo().join("schemas/routes.schema.json")).unwrap();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim_end(),
        checked_in.trim_end()
    );
}

#[test]
fn shipped_routes_files_validate_against_the_routes_schema() {
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("schemas/routes.schema.json")).unwrap(),
    )
    .unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    for file in ["routes.yaml", "examples/local/routes.yaml"] {
        let text = std::fs::read_to_string(repo().join(file)).unwrap();
        let first = text.lines().next().unwrap();
        assert!(
            first.starts_with("# yaml-language-server: $schema="),
            "{file} lacks the editor schema line"
        );
        let doc: Value = serde_saphyr::from_str(&text).unwrap();
        let errors: Vec<String> = validator
            .iter_errors(&doc)
            .map(|e| format!("{}: {e}", e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{file}: {errors:?}");
    }
}
