//! The README's "Adding a route without recompiling", run as written: its shell blocks are read
//! from README.md and executed literally (only the binary's path and the router's URL are
//! rewritten) in a copy of examples/local and schemas/, while the router serves that copy in front
//! of mock-scope; the walkthrough's `check` command must pass and print what the README shows.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // tests fail loudly by design

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::*;

const SECTION: &str = "### Adding a route without recompiling";
/// The binary as the README names it (a release build); the test runs its own build instead.
const README_BINARY: &str = "./target/release/scope-router";
/// The router's address as the README names it (examples/local's `listen`); the test's router
/// listens on a free port.
const README_URL: &str = "ws://127.0.0.1:8080/ws";

/// The fenced blocks of the walkthrough section, in order: (info string, text).
fn walkthrough_blocks() -> Vec<(String, String)> {
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("read README.md");
    let start = readme
        .find(SECTION)
        .unwrap_or_else(|| panic!("README.md has no {SECTION:?} section"));
    let body = &readme[start + SECTION.len()..];
    let end = ["\n## ", "\n### "]
        .iter()
        .filter_map(|h| body.find(h))
        .min()
        .unwrap_or(body.len());
    let mut blocks = Vec::new();
    let mut lines = body[..end].lines();
    while let Some(line) = lines.next() {
        let Some(info) = line.trim_start().strip_prefix("```") else {
            continue;
        };
        let mut text = String::new();
        for l in lines.by_ref() {
            if l.trim_start().starts_with("```") {
                break;
            }
            text.push_str(l);
            text.push('\n');
        }
        blocks.push((info.trim().to_owned(), text));
    }
    blocks
}

/// A copy of what the walkthrough touches, laid out as in the repository: examples/local (its
/// routes file, with the assets directory its cleanup empties moved into the copy), examples/browser
/// (its `static_files`) and schemas/.
fn repo_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    for sub in ["examples/local", "examples/browser", "schemas"] {
        std::fs::create_dir_all(root.join(sub)).unwrap();
    }
    for sub in ["examples/browser", "schemas"] {
        for entry in std::fs::read_dir(repo().join(sub)).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() {
                std::fs::copy(&path, root.join(sub).join(path.file_name().unwrap())).unwrap();
            }
        }
    }
    let routes = std::fs::read_to_string(repo().join("examples/local/routes.yaml")).unwrap();
    let assets = "DAYDREAM_SCOPE_ASSETS_DIR: /tmp/scope-router-local/assets";
    assert_eq!(
        routes.matches(assets).count(),
        1,
        "examples/local/routes.yaml names its assets directory once"
    );
    let routes = routes.replace(
        assets,
        &format!(
            "DAYDREAM_SCOPE_ASSETS_DIR: {:?}",
            root.join("assets").display().to_string()
        ),
    );
    std::fs::write(root.join("examples/local/routes.yaml"), routes).unwrap();
    dir
}

/// Runs one README block with `sh -e` in `cwd`: literally, but for the binary and the URL.
fn run_block(block: &str, cwd: &Path, url: &str) -> Output {
    let script = block
        .replace(README_BINARY, ROUTER)
        .replace(README_URL, url);
    Command::new("sh")
        .args(["-e", "-c", &script])
        .current_dir(cwd)
        .output()
        .expect("run sh")
}

fn shown(out: &Output) -> String {
    format!(
        "{}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A line of `check` output as the README may show it: no latency on PASS lines (it varies),
/// any count of left-out cases (it grows with the schemas' examples), spaces collapsed.
fn normalized(line: &str) -> String {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        [verdict @ ("PASS" | "FAIL"), name, ..] => format!("{verdict} {name}"),
        [first, rest @ ..] if first.starts_with('(') && line.contains("left out by --only") => {
            let n = first.trim_start_matches('(');
            assert!(
                n.parse::<u64>().is_ok(),
                "a count of cases left out: {line:?}"
            );
            format!("(N {})", rest.join(" "))
        }
        _ => words.join(" "),
    }
}

#[tokio::test]
async fn the_readme_walkthrough_ends_with_check_passing() {
    let blocks = walkthrough_blocks();
    let sh: Vec<&str> = blocks
        .iter()
        .filter(|(info, _)| info == "sh")
        .map(|(_, text)| text.as_str())
        .collect();
    assert!(
        sh.len() >= 2,
        "the walkthrough has its setup block(s) and then its check block: {blocks:?}"
    );
    let (setup, check) = sh.split_at(sh.len() - 1);
    let check = check[0];
    for needle in [
        README_BINARY,
        " check ",
        README_URL,
        "--routes examples/local/routes.yaml",
        "--only load_pipeline",
        "--include-mutating",
    ] {
        assert!(
            check.contains(needle),
            "the last sh block is the check command, with {needle:?}: {check}"
        );
    }
    assert!(
        setup.iter().any(|b| b.contains(README_BINARY)),
        "the setup validates with the binary the README names"
    );
    // What the README says the check prints: the text block after the check block.
    let check_at = blocks
        .iter()
        .position(|(info, text)| info == "sh" && text == check)
        .unwrap();
    let expected = blocks[check_at + 1..]
        .iter()
        .find(|(info, _)| info == "text")
        .map(|(_, text)| text.clone())
        .expect("a ```text block with the check's output after the check command");

    let copy = repo_copy();
    let root = copy.path();
    let routes = root.join("examples/local/routes.yaml");
    let m = mock(&[]);
    let r = router(&routes, &m.http(), &[]);
    wait_backend_ready(&r).await;

    // The setup blocks write the schemas and the route into the copy and validate it.
    for block in setup {
        let out = run_block(block, root, &r.ws_url());
        assert!(
            out.status.success(),
            "README block failed:\n{block}\n{}",
            shown(&out)
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !stderr.contains("route `load_pipeline` names no reply_schemas"),
            "the walkthrough's route names its reply schema: {stderr}"
        );
    }
    assert!(
        root.join("schemas/load_pipeline.json").is_file()
            && root.join("schemas/pipeline_loading.json").is_file(),
        "the walkthrough writes its two schemas"
    );

    // The running router picked the new route up, with its reply schema.
    let config = format!("{}/admin/config", r.http());
    eventually(
        "the router serving load_pipeline with its reply schema",
        async || {
            let (_, body) = get_json(&config).await;
            let route = body["routes"]
                .as_array()?
                .iter()
                .find(|route| route["name"] == "load_pipeline")?
                .clone();
            (route["reply_schemas"] == serde_json::json!(["pipeline_loading.json"])).then_some(())
        },
    )
    .await;

    // Without --include-mutating, as the README says, the POST is skipped and nothing is sent.
    let url = r.ws_url();
    let root_owned = root.to_path_buf();
    let without = check.replace(" --include-mutating", "");
    let out = tokio::task::spawn_blocking(move || run_block(&without, &root_owned, &url))
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout
            .contains("(1 cases that change backend state skipped; --include-mutating runs them)")
            && stdout.contains("0 passed, 0 failed"),
        "{}",
        shown(&out)
    );
    assert!(
        mock_recent(&m, "POST", "/api/v1/pipeline/load")
            .await
            .is_empty(),
        "check sent the POST without --include-mutating"
    );

    let url = r.ws_url();
    let root_owned = root.to_path_buf();
    let check_block = check.to_owned();
    let out = tokio::task::spawn_blocking(move || run_block(&check_block, &root_owned, &url))
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "the README's check failed:\n{}",
        shown(&out)
    );
    let stdout = String::from_utf8_lossy(&out.stdout).replace(&r.ws_url(), README_URL);
    assert_eq!(
        stdout.lines().last(),
        Some("1 passed, 0 failed"),
        "{}",
        shown(&out)
    );
    assert!(stdout.contains("PASS  load_pipeline#0"), "{stdout}");
    assert!(
        !stdout.contains("warning:"),
        "checked against its reply schema, not structurally: {stdout}"
    );

    // Every line the README shows, in order, modulo latency and the count of other cases.
    let actual: Vec<String> = stdout.lines().map(normalized).collect();
    let mut at = 0;
    for line in expected.lines().filter(|l| !l.trim().is_empty()) {
        let want = normalized(line);
        match actual[at..].iter().position(|a| *a == want) {
            Some(i) => at += i + 1,
            None => {
                panic!("the README shows {line:?}, which check did not print (in order):\n{stdout}")
            }
        }
    }

    // The check reached the backend with the body the walkthrough's route builds.
    let loads = mock_recent(&m, "POST", "/api/v1/pipeline/load").await;
    assert_eq!(loads.len(), 1, "{loads:?}");
    assert_eq!(
        loads[0]["body_json"]["pipeline_ids"],
        serde_json::json!(["passthrough"]),
        "{loads:?}"
    );
}
