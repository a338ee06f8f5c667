//! Time as Scope's Python prints it (`datetime.now().isoformat()`, logging's `asctime`) and Scope-format log lines (`logs_config.py:LOG_FORMAT`), kept for `GET /api/v1/logs/current`.

use std::collections::VecDeque;
use std::io::Write as _;
use std::sync::{Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

/// Lines kept for `/api/v1/logs/current` (the real server keeps a rotating file).
const LOG_KEEP: usize = 2000;

/// Seconds since the Unix epoch, as Python's `time.time()`.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The local UTC offset in seconds, read once from `date +%z`: Python's `datetime.now()` and
/// logging use the C library's local time, so this agrees with them under the same TZ and tzdata
/// (a DST change while the mock runs is not followed). UTC when `date` cannot say.
fn local_offset() -> i64 {
    static OFFSET: OnceLock<i64> = OnceLock::new();
    *OFFSET.get_or_init(|| {
        let out = std::process::Command::new("date").arg("+%z").output();
        let Ok(out) = out else { return 0 };
        let s = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let (sign, digits) = match s.split_at_checked(1) {
            Some(("-", d)) => (-1, d.to_owned()),
            Some(("+", d)) => (1, d.to_owned()),
            _ => return 0,
        };
        let hours = digits.get(..2).and_then(|h| h.parse::<i64>().ok());
        let minutes = digits.get(2..4).and_then(|m| m.parse::<i64>().ok());
        match (hours, minutes) {
            (Some(h), Some(m)) => sign * (h * 3600 + m * 60),
            _ => 0,
        }
    })
}

/// Local civil time: (year, month, day, hour, minute, second, microsecond).
fn local_parts(t: SystemTime) -> (i64, u32, u32, u32, u32, u32, u32) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = i64::try_from(d.as_secs()).unwrap_or(0) + local_offset();
    let micros = d.subsec_micros();
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let n = |v: i64| u32::try_from(v).unwrap_or(0);
    (
        year,
        n(month),
        n(day),
        n(rem / 3600),
        n(rem % 3600 / 60),
        n(rem % 60),
        micros,
    )
}

/// `datetime.now().isoformat()`: `2026-04-22T10:15:30.123456`, local time, no zone; Python leaves
/// the fraction out when the microseconds are 0.
pub fn iso_now() -> String {
    let (y, mo, d, h, mi, s, us) = local_parts(SystemTime::now());
    if us == 0 {
        format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}")
    } else {
        format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{us:06}")
    }
}

/// logging's default `asctime`: `2026-04-22 10:15:30,123`.
pub fn asctime_now() -> String {
    let (y, mo, d, h, mi, s, us) = local_parts(SystemTime::now());
    format!(
        "{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02},{:03}",
        us / 1000
    )
}

/// `scope-logs-YYYY-MM-DD-HH-MM-SS.txt`, the download name `app.py:get_current_logs` gives.
pub fn log_file_name() -> String {
    let (y, mo, d, h, mi, s, _) = local_parts(SystemTime::now());
    format!("scope-logs-{y:04}-{mo:02}-{d:02}-{h:02}-{mi:02}-{s:02}.txt")
}

fn kept() -> &'static Mutex<VecDeque<String>> {
    static LINES: OnceLock<Mutex<VecDeque<String>>> = OnceLock::new();
    LINES.get_or_init(|| Mutex::new(VecDeque::new()))
}

/// Writes one line in Scope's format to stderr (`<asctime> - <logger> - <LEVEL> - <message>`) and
/// keeps it for `/api/v1/logs/current`. Printed whatever `--quiet` says: these are the server's
/// own log, not the access log.
pub fn scope_log(logger: &str, level: &str, message: &str) {
    let line = format!("{} - {logger} - {level} - {message}", asctime_now());
    {
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "{line}");
        let _ = err.flush();
    }
    let mut lines = kept()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if lines.len() >= LOG_KEEP {
        lines.pop_front();
    }
    lines.push_back(line);
}

/// The kept log, one line each, newline-terminated; `None` before anything was logged.
pub fn log_text() -> Option<String> {
    let lines = kept()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if lines.is_empty() {
        return None;
    }
    let mut text = String::new();
    for l in lines.iter() {
        text.push_str(l);
        text.push('\n');
    }
    Some(text)
}

/// `str(uuid.uuid4())`: 36 lower-case characters, version 4, RFC 4122 variant.
pub fn uuid4() -> String {
    let mut b: [u8; 16] = rand::random();
    if let Some(v) = b.get_mut(6) {
        *v = (*v & 0x0f) | 0x40;
    }
    if let Some(v) = b.get_mut(8) {
        *v = (*v & 0x3f) | 0x80;
    }
    let mut out = String::with_capacity(36);
    for (i, x) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        out.push_str(&format!("{x:02x}"));
    }
    out
}
