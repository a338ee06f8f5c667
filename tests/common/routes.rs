//! Routes files for a test: the repo's default routes.yaml, copies with knobs turned, and stacks built on them.

use std::path::PathBuf;

use super::{Proc, mock, repo, router};

/// A routes file written into a temporary directory (kept alive as long as this value).
pub struct TempRoutes {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
}

impl TempRoutes {
    /// Writes `text` as `routes.yaml` in a fresh temporary directory.
    pub fn new(text: &str) -> TempRoutes {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("routes.yaml");
        std::fs::write(&path, text).expect("write routes");
        TempRoutes { dir, path }
    }

    /// Writes another file (e.g. a schema) relative to the directory.
    pub fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(&p, text).expect("write file");
        p
    }
}

/// The repo's default routes.yaml with each `(from, to)` replacement applied (each `from` must occur
/// exactly once), its schema directory pointed at the repo's `schemas/`, written to a tempdir.
pub fn default_routes_with(replacements: &[(&str, &str)]) -> TempRoutes {
    let mut text = std::fs::read_to_string(repo().join("routes.yaml")).expect("read routes.yaml");
    let schemas = format!(
        "schemas: {:?}",
        repo().join("schemas").display().to_string()
    );
    text = replace_once(&text, "\nschemas: schemas\n", &format!("\n{schemas}\n"));
    for (from, to) in replacements {
        text = replace_once(&text, from, to);
    }
    TempRoutes::new(&text)
}

fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(
        text.matches(from).count(),
        1,
        "{from:?} must occur exactly once in routes.yaml"
    );
    text.replacen(from, to, 1)
}

/// The repo's default routes in front of a fresh mock: (mock, router).
pub fn stack() -> (Proc, Proc) {
    let m = mock(&[]);
    let r = router(&repo().join("routes.yaml"), &m.http(), &[]);
    (m, r)
}

/// A default-routes router (with replacements) in front of a fresh mock.
pub fn stack_with(replacements: &[(&str, &str)]) -> (Proc, Proc, TempRoutes) {
    let routes = default_routes_with(replacements);
    let m = mock(&[]);
    let r = router(&routes.path, &m.http(), &[]);
    (m, r, routes)
}
