//! `scope-router validate`: good files pass; broken ones fail with `file:LINE:COL` (the routes file's, or a broken schema's own) and the route named.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // tests fail loudly by design

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

fn validate(routes: &Path) -> Output {
    Command::new(ROUTER)
        .args(["validate", "--routes"])
        .arg(routes)
        .env_remove("SCOPE_ROUTER_ROUTES")
        .output()
        .expect("run scope-router validate")
}

fn fixture(name: &str) -> PathBuf {
    repo().join("tests/fixtures/validate").join(name)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs validate on a broken fixture: non-zero exit, stderr names the file; returns stderr.
fn broken(name: &str) -> String {
    let path = fixture(name);
    assert!(path.exists(), "missing fixture {}", path.display());
    let out = validate(&path);
    let stderr = text(&out.stderr);
    assert!(
        !out.status.success(),
        "{name} must fail validation; stdout:\n{}\nstderr:\n{stderr}",
        text(&out.stdout)
    );
    assert!(
        stderr.contains(&path.display().to_string()),
        "stderr must name the file {}:\n{stderr}",
        path.display()
    );
    stderr
}

/// Runs validate on a fixture whose route names a broken schema: non-zero exit, and the error is
/// told where it is, in the schema file (`schemas/<schema>` beside the fixture, or wherever the
/// fixture's `schemas:` points), with the route named; returns stderr.
fn broken_schema(name: &str, schema: &str) -> String {
    let path = fixture(name);
    assert!(path.exists(), "missing fixture {}", path.display());
    let out = validate(&path);
    let stderr = text(&out.stderr);
    assert!(
        !out.status.success(),
        "{name} must fail validation; stdout:\n{}\nstderr:\n{stderr}",
        text(&out.stdout)
    );
    let line = stderr
        .lines()
        .find(|l| l.starts_with("error: ") && l.contains(&format!("/{schema}")))
        .unwrap_or_else(|| panic!("{name}: no error naming the schema file {schema}:\n{stderr}"));
    assert!(
        line.contains("(schema of route `"),
        "{name}: the route is named: {line}"
    );
    stderr
}

/// Asserts stderr places the error at `file:LINE:COL` (any column).
fn assert_placed(stderr: &str, name: &str, line: u32) {
    let prefix = format!("{}:{line}:", fixture(name).display());
    let at = stderr.find(&prefix).unwrap_or_else(|| {
        panic!("{name}: expected the error at line {line} ({prefix}COL) in:\n{stderr}")
    });
    let rest = &stderr[at + prefix.len()..];
    let col: String = rest.chars().take_while(char::is_ascii_digit).collect();
    assert!(
        !col.is_empty() && col != "0",
        "{name}: expected a column after {prefix} in:\n{stderr}"
    );
    assert!(
        rest[col.len()..].starts_with(':'),
        "{name}: expected `:` after the column in:\n{stderr}"
    );
}

fn assert_mentions(stderr: &str, name: &str, needles: &[&str]) {
    for n in needles {
        assert!(
            stderr.contains(n),
            "{name}: stderr must mention {n:?}:\n{stderr}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Good files

#[test]
fn default_routes_validate() {
    let path = repo().join("routes.yaml");
    let out = validate(&path);
    assert!(
        out.status.success(),
        "stdout:\n{}\nstderr:\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(text(&out.stdout).contains("ok"), "{}", text(&out.stdout));
}

#[test]
fn default_routes_validate_from_the_default_path() {
    // Without --routes, `routes.yaml` in the working directory is checked.
    let out = Command::new(ROUTER)
        .arg("validate")
        .current_dir(repo())
        .env_remove("SCOPE_ROUTER_ROUTES")
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn example_routes_validate() {
    let path = repo().join("examples/local/routes.yaml");
    if !path.exists() {
        return;
    }
    let out = validate(&path);
    assert!(
        out.status.success(),
        "stdout:\n{}\nstderr:\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

#[test]
fn missing_file_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("nope.yaml");
    let out = validate(&path);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("nope.yaml"),
        "{}",
        text(&out.stderr)
    );
}

// ---------------------------------------------------------------------------------------------
// Structural errors: placed at file:LINE:COL

#[test]
fn yaml_syntax_error_is_placed() {
    let e = broken("syntax_error.yaml");
    assert_placed(&e, "syntax_error.yaml", 10);
}

#[test]
fn unknown_field_is_placed_and_named() {
    let e = broken("unknown_field.yaml");
    assert_placed(&e, "unknown_field.yaml", 11);
    assert_mentions(&e, "unknown_field.yaml", &["replyy"]);
}

#[test]
fn wrong_type_is_placed() {
    let e = broken("wrong_type.yaml");
    assert_placed(&e, "wrong_type.yaml", 8);
}

#[test]
fn bad_duration_is_placed() {
    let e = broken("bad_duration.yaml");
    assert_placed(&e, "bad_duration.yaml", 9);
    assert_mentions(&e, "bad_duration.yaml", &["invalid duration"]);
    assert!(!e.contains("soon"), "the value is not quoted back: {e}");
}

#[test]
fn unsupported_version_fails() {
    let e = broken("bad_version.yaml");
    assert_mentions(&e, "bad_version.yaml", &["version"]);
}

#[test]
fn yaml_error_in_a_tempdir_file_is_placed() {
    // The same check on a file written on the fly, with the error further down.
    let mut text = String::from("version: 1\nbackend:\n  url: http://127.0.0.1:8000\nroutes:\n");
    for i in 0..20 {
        text.push_str(&format!("  r{i}:\n    reply: {{ type: r{i} }}\n"));
    }
    // Line 47: an unknown route field.
    text.push_str("  r20:\n    reply: { type: r20 }\n    bogus_field: 1\n");
    let routes = TempRoutes::new(&text);
    let out = validate(&routes.path);
    let stderr = self::text(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("{}:47:", routes.path.display())),
        "{stderr}"
    );
    assert!(stderr.contains("bogus_field"), "{stderr}");
}

// ---------------------------------------------------------------------------------------------
// Cross-field errors: the route is named

#[test]
fn route_naming_a_missing_schema_fails_and_names_the_route() {
    let e = broken_schema("missing_schema.yaml", "widget_does_not_exist.json");
    assert_mentions(
        &e,
        "missing_schema.yaml",
        &["route `widget`", "cannot read"],
    );
}

#[test]
fn schema_that_is_not_json_fails_and_names_the_route() {
    let e = broken_schema("schema_not_json.yaml", "not_json.json");
    // Placed in the schema file, at its line.
    let at = format!("{}:5:", fixture("schemas/not_json.json").display());
    assert!(
        e.contains(&at),
        "schema_not_json.yaml: expected {at}COL in:\n{e}"
    );
    assert_mentions(&e, "schema_not_json.yaml", &["route `thing`", "not JSON"]);
}

#[test]
fn schema_that_is_not_a_json_schema_fails_and_names_the_route() {
    let e = broken_schema("schema_invalid.yaml", "not_a_schema.json");
    assert_mentions(
        &e,
        "schema_invalid.yaml",
        &["route `thing`", "not a valid JSON Schema"],
    );
}

#[test]
fn unknown_template_variable_fails_and_names_the_route() {
    let e = broken("bad_template.yaml");
    assert_mentions(&e, "bad_template.yaml", &["greet", "nope.x"]);
}

#[test]
fn template_variable_out_of_scope_fails_and_names_the_route() {
    let e = broken("not_in_scope.yaml");
    assert_mentions(&e, "not_in_scope.yaml", &["pong_status", "response.status"]);
}

#[test]
fn route_with_two_handlers_fails_and_names_the_route() {
    let e = broken("two_handlers.yaml");
    assert_mentions(&e, "two_handlers.yaml", &["both"]);
}

#[test]
fn from_message_with_fixed_path_fails_and_names_the_route() {
    let e = broken("from_message_with_path.yaml");
    assert_mentions(
        &e,
        "from_message_with_path.yaml",
        &["`api`", "from_message"],
    );
}

#[test]
fn close_sessions_without_an_offer_route_fails() {
    let e = broken("close_sessions_without_offer.yaml");
    assert_mentions(&e, "close_sessions_without_offer.yaml", &["close_sessions"]);
}

#[test]
fn every_broken_fixture_is_covered() {
    // Guards against a fixture added without a test (or a test whose fixture was renamed).
    let mut names: Vec<String> = std::fs::read_dir(repo().join("tests/fixtures/validate"))
        .expect("fixtures dir")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    names.sort();
    let covered = [
        "bad_duration.yaml",
        "bad_template.yaml",
        "bad_version.yaml",
        "close_sessions_without_offer.yaml",
        "from_message_with_path.yaml",
        "missing_schema.yaml",
        "not_in_scope.yaml",
        "schema_invalid.yaml",
        "schema_not_json.yaml",
        "syntax_error.yaml",
        "two_handlers.yaml",
        "unknown_field.yaml",
        "wrong_type.yaml",
    ];
    assert_eq!(names, covered);
}
