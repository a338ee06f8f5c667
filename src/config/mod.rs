//! The configuration, pure: the typed shape of `routes.yaml`, parsing with line and column, and the version hash.

mod types;

use std::fmt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

pub use types::*;

/// A problem with the configuration, placed at a file, line and column where known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<u64>,
    pub column: Option<u64>,
    pub message: String,
    /// Further errors found in the same load (each printed on its own line).
    pub more: Vec<ConfigError>,
}

impl ConfigError {
    pub fn new(file: &Path, message: impl Into<String>) -> Self {
        Self {
            file: file.to_owned(),
            line: None,
            column: None,
            message: message.into(),
            more: Vec::new(),
        }
    }

    /// The first error, with the others after it; `None` for an empty list.
    pub fn all(mut errors: Vec<ConfigError>) -> Option<ConfigError> {
        if errors.is_empty() {
            return None;
        }
        let mut first = errors.remove(0);
        first.more.extend(errors);
        Some(first)
    }

    /// This error and the ones found with it.
    pub fn each(&self) -> impl Iterator<Item = &ConfigError> {
        std::iter::once(self).chain(self.more.iter())
    }

    /// An error at a 1-based line and column of `file`, where known.
    pub fn at_line(
        file: &Path,
        line: Option<u64>,
        column: Option<u64>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            file: file.to_owned(),
            line,
            column,
            message: message.into(),
            more: Vec::new(),
        }
    }

    pub fn at(file: &Path, loc: serde_saphyr::Location, message: impl Into<String>) -> Self {
        let (line, column) = (loc.line(), loc.column());
        Self {
            file: file.to_owned(),
            line: (line > 0).then_some(line),
            column: (column > 0).then_some(column),
            message: message.into(),
            more: Vec::new(),
        }
    }
}

impl ConfigError {
    fn fmt_one(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(l) = self.line {
            write!(f, ":{l}")?;
            if let Some(c) = self.column {
                write!(f, ":{c}")?;
            }
        }
        write!(f, ": {}", self.message)
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.fmt_one(f)?;
        for e in &self.more {
            writeln!(f)?;
            e.fmt_one(f)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// A parsed routes file with its paths resolved.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub file: RoutesFile,
    /// The routes file itself.
    pub path: PathBuf,
    /// The directory schema names are resolved in.
    pub schema_dir: PathBuf,
    /// The routes file's text, for hashing.
    pub text: String,
}

/// Largest routes file accepted.
const MAX_ROUTES_BYTES: u64 = 4 * 1024 * 1024;

/// Reads and parses a routes file (structure only; [`crate::snapshot::load`] checks and compiles the rest).
pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    let meta =
        std::fs::metadata(path).map_err(|e| ConfigError::new(path, format!("cannot read: {e}")))?;
    if meta.len() > MAX_ROUTES_BYTES {
        return Err(ConfigError::new(
            path,
            format!("file is over {MAX_ROUTES_BYTES} bytes"),
        ));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new(path, format!("cannot read: {e}")))?;
    let file = parse(path, &text)?;
    let base = path.parent().unwrap_or(Path::new("."));
    let schema_dir = base.join(&file.schemas);
    Ok(Loaded {
        file,
        path: path.to_owned(),
        schema_dir,
        text,
    })
}

/// Parses routes text; errors carry the line and column.
///
/// After an unknown field the parse goes on without it (the entry is masked out, lines
/// kept), so one run reports every misspelled key, each at its own place.
pub fn parse(path: &Path, text: &str) -> Result<RoutesFile, ConfigError> {
    let first = match parse_once(path, text) {
        Ok(file) => return Ok(file),
        Err(e) => e,
    };
    let mut errors = vec![first];
    let mut masked = text.to_owned();
    while errors.len() < 20 {
        let Some(last) = errors.last() else { break };
        let (Some(line), true) = (last.line, last.message.starts_with("unknown field")) else {
            break;
        };
        masked = mask_entry(&masked, line);
        match parse_once(path, &masked) {
            Ok(_) => break,
            Err(e)
                if errors
                    .iter()
                    .any(|x| x.line == e.line && x.column == e.column) =>
            {
                break;
            }
            Err(e) => errors.push(e),
        }
    }
    Err(ConfigError::all(errors).unwrap_or_else(|| ConfigError::new(path, "cannot parse")))
}

/// `text` with the entry at 1-based `line` (the line and the more indented lines under it)
/// blanked out; the line count stays, so later errors keep their places.
fn mask_entry(text: &str, line: u64) -> String {
    let Ok(line) = usize::try_from(line) else {
        return text.to_owned();
    };
    let indent = |l: &str| l.len() - l.trim_start().len();
    let mut out = String::with_capacity(text.len());
    let mut base: Option<usize> = None;
    for (i, l) in text.split_inclusive('\n').enumerate() {
        let n = i + 1;
        let blank = if n == line {
            base = Some(indent(l));
            true
        } else if let Some(b) = base {
            let nested = l.trim().is_empty() || indent(l) > b;
            if !nested {
                base = None;
            }
            nested
        } else {
            false
        };
        if blank {
            out.push_str(if l.ends_with('\n') { "\n" } else { "" });
        } else {
            out.push_str(l);
        }
    }
    out
}

fn parse_once(path: &Path, text: &str) -> Result<RoutesFile, ConfigError> {
    let options = serde_saphyr::options! {
        with_snippet: false,
    };
    let file: RoutesFile = serde_saphyr::from_str_with_options(text, options).map_err(|e| {
        let mut message = redact(&strip_location(&e.to_string()));
        match e.location() {
            Some(loc) => {
                if let Some((line, column)) = over_indented_next(text, loc.line(), &message) {
                    return ConfigError::at_line(
                        path,
                        Some(line),
                        Some(column),
                        format!("{message}: this line is indented under the value above it (a bad indent?)"),
                    );
                }
                // A route's own check (exactly one handler) cannot see its name: find the
                // key that owns the mapping at this place and name it.
                if message.starts_with(types::ROUTE_HANDLER_ERROR)
                    && let Some(name) = owning_key(text, loc.line(), loc.column())
                {
                    message = format!("route `{name}`: {message}");
                }
                ConfigError::at(path, loc, message)
            }
            None => ConfigError::new(path, message),
        }
    })?;
    if file.version != 1 {
        return Err(ConfigError::new(
            path,
            format!("unsupported version {} (only 1 exists)", file.version),
        ));
    }
    Ok(file)
}

/// A value error whose real cause is the next line, indented under the value so that YAML
/// read it as the value's continuation: that line's place, to report it there.
fn over_indented_next(text: &str, line: u64, message: &str) -> Option<(u64, u64)> {
    if !message.starts_with("invalid") {
        return None;
    }
    let idx = usize::try_from(line).ok()?;
    let mut lines = text.lines().skip(idx.checked_sub(1)?);
    let here = lines.next()?;
    let next = lines.next()?;
    let indent = |l: &str| l.len() - l.trim_start().len();
    let t = next.trim();
    let looks_like_key = t
        .split_once(':')
        .is_some_and(|(k, _)| !k.is_empty() && !k.contains(' '));
    (here.contains(':') && indent(next) > indent(here) && looks_like_key && !t.starts_with('#'))
        .then(|| (line + 1, indent(next) as u64 + 1))
}

/// The error with the file's values taken out: a bad line may hold a secret, and the
/// message travels to logs and `/readyz`. Keys and the kind of error stay.
fn redact(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    // `unknown variant `x`` names the value written; field names elsewhere are keys.
    if let Some(tail) = rest.strip_prefix("unknown variant `")
        && let Some(end) = tail.find('`')
    {
        out.push_str("unknown variant `…`");
        rest = tail.get(end + 1..).unwrap_or_default();
    }
    let mut in_quote = false;
    for c in rest.chars() {
        match (c, in_quote) {
            ('"', false) => {
                out.push_str("\"…");
                in_quote = true;
            }
            ('"', true) => {
                out.push('"');
                in_quote = false;
            }
            (_, true) => {}
            (c, false) => out.push(c),
        }
    }
    out
}

/// The key of the mapping whose first entry is at `line:column` (1-based): the nearest line
/// at or above it that is indented less and names a key.
fn owning_key(text: &str, line: u64, column: u64) -> Option<String> {
    let line = usize::try_from(line).ok()?;
    let column = usize::try_from(column).ok()?.saturating_sub(1);
    let lines: Vec<&str> = text.lines().take(line).collect();
    lines.iter().rev().find_map(|l| {
        let indent = l.len() - l.trim_start().len();
        let t = l.trim_start();
        if indent >= column || t.is_empty() || t.starts_with('#') {
            return None;
        }
        let (key, _) = t.split_once(':')?;
        Some(key.trim().trim_matches(['"', '\'']).to_owned())
    })
}

/// serde-saphyr appends " at line L column C"; we print the place up front instead.
fn strip_location(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) if msg.get(i..).is_some_and(|t| t.contains("column")) => {
            msg.get(..i).unwrap_or(msg).to_owned()
        }
        _ => msg.to_owned(),
    }
}

/// A short hash of the routes text and the schema files it uses: the config's version.
pub fn version_hash<'a>(text: &str, schema_texts: impl Iterator<Item = &'a [u8]>) -> String {
    let mut h = Sha256::new();
    h.update(text.as_bytes());
    for s in schema_texts {
        h.update(s);
    }
    h.finalize()
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        parse(Path::new("routes.yaml"), text)
            .unwrap_err()
            .to_string()
    }

    const MIN: &str = "version: 1\nbackend:\n  url: http://127.0.0.1:1\nroutes:\n  ping:\n    reply: { type: pong }\n";

    #[test]
    fn minimal_file_parses_with_defaults() {
        let f = parse(Path::new("r.yaml"), MIN).unwrap();
        assert_eq!(f.connection.route_on, "type");
        assert_eq!(f.backend.health.path, "/health");
        assert!(f.routes.contains_key("ping"));
    }

    #[test]
    fn unknown_field_is_placed() {
        let text = MIN.replace(
            "    reply: { type: pong }",
            "    reply: { type: pong }\n    replyy: 1",
        );
        insta::assert_snapshot!(err(&text), @"routes.yaml:7:5: unknown field `replyy`, expected one of schema, reply_schemas, reply, forward, signaling, transfer, tunnel");
    }

    #[test]
    fn two_handlers_name_their_route() {
        let text = MIN.replace(
            "    reply: { type: pong }",
            "    reply: { type: pong }\n    signaling: { action: offer }",
        );
        insta::assert_snapshot!(err(&text), @"routes.yaml:6:5: route `ping`: a route needs exactly one of `reply`, `forward`, `signaling`, `transfer` or `tunnel`");
        let flow = MIN.replace("  ping:\n    reply: { type: pong }", "  ping: {}");
        assert!(err(&flow).contains("route `ping`"), "{}", err(&flow));
    }

    #[test]
    fn every_misspelled_key_is_reported_in_one_run() {
        let text = MIN
            .replace(
                "  url: http://127.0.0.1:1",
                "  url: http://127.0.0.1:1\n  comand: [x]",
            )
            .replace(
                "    reply: { type: pong }",
                "    replyy: 1\n    reply: { type: pong }",
            )
            .replace("version: 1", "version: 1\nlisen: x");
        let e = parse(Path::new("routes.yaml"), &text).unwrap_err();
        let lines: Vec<String> = e.to_string().lines().map(str::to_owned).collect();
        assert_eq!(lines.len(), 3, "{e}");
        assert!(
            lines[0].starts_with("routes.yaml:2:1: unknown field `lisen`"),
            "{e}"
        );
        assert!(
            lines[1].starts_with("routes.yaml:5:3: unknown field `comand`"),
            "{e}"
        );
        assert!(
            lines[2].starts_with("routes.yaml:8:5: unknown field `replyy`"),
            "{e}"
        );
    }

    #[test]
    fn values_are_never_quoted_back() {
        let text = MIN.replace("version: 1", "version: 1\nlisten: [\"sk-secret-123\"]");
        let e = err(&text);
        assert!(!e.contains("sk-secret"), "{e}");
        let text = MIN.replace(
            "  url: http://127.0.0.1:1",
            "  url: http://127.0.0.1:1\n  restart: { policy: sk-secret-456 }",
        );
        let e = err(&text);
        assert!(!e.contains("sk-secret"), "{e}");
        assert!(e.contains("routes.yaml:4:"), "{e}");
    }

    #[test]
    fn an_over_indented_line_is_reported_where_it_is() {
        let text = "version: 1\nbackend:\n  url: http://127.0.0.1:1\nconnection:\n  max_in_flight: 3\n    rate: 4\nroutes: {}\n";
        let e = err(text);
        assert!(e.starts_with("routes.yaml:6:5: invalid"), "{e}");
        assert!(e.contains("a bad indent?"), "{e}");
    }

    #[test]
    fn syntax_error_is_placed() {
        insta::assert_snapshot!(err("version: 1\nbackend: [\n"), @"routes.yaml:2:10: expected mapping start");
    }

    #[test]
    fn wrong_type_is_placed() {
        let text = MIN.replace("version: 1", "version: one");
        insta::assert_snapshot!(err(&text), @"routes.yaml:1:10: invalid u32");
    }

    #[test]
    fn bad_duration_is_placed() {
        let text = MIN.replace(
            "  url: http://127.0.0.1:1",
            "  url: http://127.0.0.1:1\n  health: { interval: soon }",
        );
        insta::assert_snapshot!(err(&text), @r#"routes.yaml:4:23: invalid duration "…": expected number at 0"#);
    }

    #[test]
    fn alias_bombs_are_refused() {
        let mut text = String::from(
            "version: 1\nbackend: { url: 'http://x' }\nroutes: {}\nx0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n",
        );
        for i in 1..12 {
            let p = i - 1;
            text.push_str(&format!(
                "x{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        assert!(parse(Path::new("bomb.yaml"), &text).is_err());
    }
}
