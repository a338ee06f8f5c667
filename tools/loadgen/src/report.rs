//! `loadgen report`: medians of the raw measurements, as the Markdown table of the README.

use std::fmt::Write as _;

use anyhow::{Context as _, Result};
use serde_json::Value;

use super::ReportArgs;

/// All the lines of one row and mode (`http` = direct, `ws` = router, `idle`).
struct Group<'a> {
    lines: Vec<&'a Value>,
}

impl Group<'_> {
    /// The median over the repeats of the number at `pointer`.
    fn med(&self, pointer: &str) -> Option<f64> {
        let mut v: Vec<f64> = self
            .lines
            .iter()
            .filter_map(|l| l.pointer(pointer).and_then(Value::as_f64))
            .collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let mid = v.len() / 2;
        if v.len() % 2 == 1 {
            v.get(mid).copied()
        } else {
            Some((v.get(mid - 1)? + v.get(mid)?) / 2.0)
        }
    }

    fn sum(&self, pointer: &str) -> u64 {
        self.lines
            .iter()
            .filter_map(|l| l.pointer(pointer).and_then(Value::as_u64))
            .sum()
    }
}

/// One row of the table: a mix at a connection count, with its direct and router runs.
struct Row<'a> {
    name: String,
    /// Which routes file the router ran (`shipped`, `fal`, `bench`).
    config: String,
    mix: String,
    /// A large transfer (`loadgen transfer`) rather than closed-loop messages.
    transfer: bool,
    bytes: u64,
    conns: u64,
    direct: Group<'a>,
    router: Group<'a>,
    idle: Group<'a>,
}

pub fn run(args: &ReportArgs) -> Result<()> {
    let text = std::fs::read_to_string(&args.raw)
        .with_context(|| format!("cannot read {}", args.raw.display()))?;
    let lines: Vec<Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .context("a line is not JSON")?;
    let mut rows: Vec<Row<'_>> = Vec::new();
    for line in &lines {
        let name = line.get("row").and_then(Value::as_str).unwrap_or("");
        let row = match rows.iter().position(|r| r.name == name) {
            Some(i) => rows.get_mut(i),
            None => {
                rows.push(Row {
                    name: name.to_owned(),
                    config: line
                        .get("config")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned(),
                    transfer: line.get("kind").and_then(Value::as_str) == Some("transfer"),
                    bytes: line.get("bytes").and_then(Value::as_u64).unwrap_or(0),
                    mix: line
                        .get("mix")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned(),
                    conns: line.get("conns").and_then(Value::as_u64).unwrap_or(0),
                    direct: Group { lines: Vec::new() },
                    router: Group { lines: Vec::new() },
                    idle: Group { lines: Vec::new() },
                });
                rows.last_mut()
            }
        };
        let Some(row) = row else { continue };
        match line.get("mode").and_then(Value::as_str) {
            Some("http") => row.direct.lines.push(line),
            Some("ws") => row.router.lines.push(line),
            Some("idle") => row.idle.lines.push(line),
            _ => {}
        }
    }
    print!("{}", render(&rows, &args.note));
    Ok(())
}

fn describe(mix: &str) -> &'static str {
    match mix {
        "ping" => "`ping` (direct: `GET /health`)",
        "ping_noschema" => "`ping_noschema` (ping without schema)",
        "api" => "`api` GET `/api/v1/pipeline/status`",
        "mix" => "mix: api GET+POST, get_ice_servers, icecandidate",
        "api1k" => "`api` GET, 1 KiB JSON answer",
        "api64k" => "`api` GET, 64 KiB JSON answer",
        "api1m" => "`api` GET, 1 MiB JSON answer",
        "b64-upload" => "base64 upload in one `api` message (direct: POST)",
        "chunked-upload" => "chunked upload, binary chunks (direct: POST)",
        "download" => "chunked download, binary chunks (direct: GET)",
        _ => "?",
    }
}

fn num(v: Option<f64>) -> String {
    match v {
        None => "—".to_owned(),
        Some(x) if x >= 1000.0 => format!("{x:.0}"),
        Some(x) if x >= 100.0 => format!("{x:.0}"),
        Some(x) => format!("{x:.1}"),
    }
}

fn percentiles(g: &Group<'_>) -> String {
    if g.lines.is_empty() {
        return "—".to_owned();
    }
    ["/p50_us", "/p90_us", "/p99_us", "/p999_us"]
        .iter()
        .map(|p| num(g.med(p)))
        .collect::<Vec<_>>()
        .join(" / ")
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown CPU", |(_, m)| m.trim())
        .to_owned();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cores} cores (nproc), {model}, Linux {}", kernel.trim())
}

fn render(rows: &[Row<'_>], note: &str) -> String {
    let mut o = String::new();
    let repeats = rows
        .iter()
        .map(|r| r.router.lines.len().max(r.direct.lines.len()))
        .max()
        .unwrap_or(0);
    let sample = rows
        .iter()
        .find_map(|r| r.router.lines.first())
        .copied()
        .unwrap_or(&Value::Null);
    let _ = writeln!(o, "### scope-router benchmark\n");
    let _ = writeln!(o, "- Machine: {}", machine());
    let _ = writeln!(
        o,
        "- Date: {}",
        humantime::format_rfc3339_seconds(std::time::SystemTime::now())
    );
    if !note.is_empty() {
        let _ = writeln!(o, "- {note}");
    }
    let _ = writeln!(
        o,
        "- Medians of {repeats} repeats; each measurement {} s after a warm-up; closed loop, one request in flight per connection; latencies in µs.",
        sample
            .get("duration_s")
            .and_then(Value::as_f64)
            .map_or_else(|| "?".to_owned(), |d| format!("{d}"))
    );
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "| routes | workload | conns | direct msg/s | router msg/s | router/direct | direct p50 / p90 / p99 / p99.9 | router p50 / p90 / p99 / p99.9 | router CPU µs/msg |"
    );
    let _ = writeln!(o, "|---|---|--:|--:|--:|--:|--:|--:|--:|");
    let messages = || {
        rows.iter()
            .filter(|r| r.idle.lines.is_empty() && !r.transfer)
    };
    for r in messages() {
        let d = r.direct.med("/throughput");
        let w = r.router.med("/throughput");
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.config,
            describe(&r.mix),
            r.conns,
            num(d),
            num(w),
            ratio(w, d).map_or_else(|| "—".to_owned(), |x| format!("{x:.2}")),
            percentiles(&r.direct),
            percentiles(&r.router),
            num(r.router.med("/cpu_us_per_msg/router")),
        );
    }

    let _ = writeln!(o, "\nCPU per message (µs) and cores used, by process:\n");
    let _ = writeln!(
        o,
        "| routes | workload | conns | direct: loadgen / backend | router run: loadgen / router / backend | router cores | errors (direct / router) |"
    );
    let _ = writeln!(o, "|---|---|--:|--:|--:|--:|--:|");
    for r in messages() {
        let direct = if r.direct.lines.is_empty() {
            "—".to_owned()
        } else {
            format!(
                "{} / {}",
                num(r.direct.med("/cpu_us_per_msg/loadgen")),
                num(r.direct.med("/cpu_us_per_msg/backend"))
            )
        };
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} / {} / {} | {} | {} / {} |",
            r.config,
            describe(&r.mix),
            r.conns,
            direct,
            num(r.router.med("/cpu_us_per_msg/loadgen")),
            num(r.router.med("/cpu_us_per_msg/router")),
            num(r.router.med("/cpu_us_per_msg/backend")),
            num(r.router.med("/cpu_cores/router")),
            r.direct.sum("/errors") + r.direct.sum("/worker_failures"),
            r.router.sum("/errors") + r.router.sum("/worker_failures"),
        );
    }

    let transfers: Vec<&Row<'_>> = rows.iter().filter(|r| r.transfer).collect();
    if !transfers.is_empty() {
        let _ = writeln!(
            o,
            "\nLarge transfers, one at a time on one connection (latency per whole transfer, in ms):\n"
        );
        let _ = writeln!(
            o,
            "| routes | transfer | MiB | direct MB/s | router MB/s | router/direct | direct p50 / p99 / p99.9 | router p50 / p99 / p99.9 | router CPU ms/transfer | router peak RSS |"
        );
        let _ = writeln!(o, "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|");
        let ms = |g: &Group<'_>| {
            if g.lines.is_empty() {
                return "—".to_owned();
            }
            ["/p50_us", "/p99_us", "/p999_us"]
                .iter()
                .map(|p| num(g.med(p).map(|x| x / 1000.0)))
                .collect::<Vec<_>>()
                .join(" / ")
        };
        for r in &transfers {
            let (d, w) = (r.direct.med("/mb_per_s"), r.router.med("/mb_per_s"));
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} MiB |",
                r.config,
                describe(&r.mix),
                r.bytes / (1024 * 1024),
                num(d),
                num(w),
                ratio(w, d).map_or_else(|| "—".to_owned(), |x| format!("{x:.2}")),
                ms(&r.direct),
                ms(&r.router),
                num(r.router.med("/cpu_us_per_msg/router").map(|x| x / 1000.0)),
                num(r.router.med("/rss_peak_kib").map(|x| x / 1024.0)),
            );
        }
    }

    let idle = rows.iter().find(|r| !r.idle.lines.is_empty());
    if let Some(r) = idle {
        let n = r.conns as f64;
        let rss = r.idle.med("/rss_kib");
        let base = r.idle.med("/rss_base_kib");
        let _ = writeln!(o, "\nIdle connections (router RSS):\n");
        let _ = writeln!(
            o,
            "| idle conns | connected (min) | RSS before | RSS with them | RSS / conn | added RSS / conn |"
        );
        let _ = writeln!(o, "|--:|--:|--:|--:|--:|--:|");
        let connected = r
            .idle
            .lines
            .iter()
            .filter_map(|l| l.get("connected").and_then(Value::as_u64))
            .min()
            .unwrap_or(0);
        let _ = writeln!(
            o,
            "| {} | {} | {} MiB | {} MiB | {} KiB | {} KiB |",
            r.conns,
            connected,
            num(base.map(|b| b / 1024.0)),
            num(rss.map(|b| b / 1024.0)),
            num(rss.map(|x| x / n)),
            num(rss.zip(base).map(|(x, b)| (x - b) / n)),
        );
    }

    let find_in = |config: &str, mix: &str, conns: u64| {
        rows.iter()
            .find(|r| r.config == config && r.mix == mix && r.conns == conns)
    };
    let mut validation = Vec::new();
    for with in rows
        .iter()
        .filter(|r| r.mix == "ping" && r.config == "bench")
    {
        if let Some(without) = find_in("bench", "ping_noschema", with.conns) {
            validation.push((with, without));
        }
    }
    if !validation.is_empty() {
        let _ = writeln!(
            o,
            "\nValidation cost (`ping` with `schema: ping.json` vs `ping_noschema`):\n"
        );
        let _ = writeln!(
            o,
            "| conns | msg/s schema / none | p50 schema / none | router CPU µs/msg schema / none | CPU cost of the schema |"
        );
        let _ = writeln!(o, "|--:|--:|--:|--:|--:|");
        for (with, without) in &validation {
            let (cw, cn) = (
                with.router.med("/cpu_us_per_msg/router"),
                without.router.med("/cpu_us_per_msg/router"),
            );
            let _ = writeln!(
                o,
                "| {} | {} / {} | {} / {} | {} / {} | {} |",
                with.conns,
                num(with.router.med("/throughput")),
                num(without.router.med("/throughput")),
                num(with.router.med("/p50_us")),
                num(without.router.med("/p50_us")),
                num(cw),
                num(cn),
                ratio(cw, cn)
                    .map_or_else(|| "—".to_owned(), |x| format!("{:+.1}%", (x - 1.0) * 100.0)),
            );
        }
    }

    let _ = writeln!(o, "\nGoals:\n");
    let mut goal = |ok: Option<bool>, text: String| {
        let mark = match ok {
            Some(true) => "met",
            Some(false) => "**not met**",
            None => "not measured",
        };
        let _ = writeln!(o, "- {mark}: {text}");
    };
    if let Some(r) = find_in("fal", "api", 1) {
        let (p50, p99) = (r.router.med("/p50_us"), r.router.med("/p99_us"));
        let spread = ratio(p99, p50);
        goal(
            spread.map(|x| x <= 3.0),
            format!(
                "fal routes (log push on), api GET at 1 conn: p99 ≤ 3× p50: {} / {} µs ({}×)",
                num(p99),
                num(p50),
                spread.map_or_else(|| "—".to_owned(), |x| format!("{x:.1}"))
            ),
        );
        let added = p50.zip(r.direct.med("/p50_us")).map(|(a, b)| a - b);
        goal(
            added.map(|x| x <= 30.0),
            format!(
                "fal routes, api GET at 1 conn: added p50 over direct ≤ 30 µs: {} µs",
                num(added)
            ),
        );
    }
    for config in ["shipped", "fal"] {
        if let Some(r) = find_in(config, "api", 50) {
            let cpu = r.router.med("/cpu_us_per_msg/router");
            let ratio_v = ratio(r.router.med("/throughput"), r.direct.med("/throughput"));
            goal(
                cpu.map(|x| x <= 12.0),
                format!(
                    "{config} routes, api GET at 50 conns: router CPU ≤ 12 µs per message: {} µs",
                    num(cpu)
                ),
            );
            goal(
                ratio_v.map(|x| x >= 0.6),
                format!(
                    "{config} routes, api GET at 50 conns: ≥ 0.6× direct throughput: {}×",
                    ratio_v.map_or_else(|| "—".to_owned(), |x| format!("{x:.2}"))
                ),
            );
        }
    }
    for config in ["shipped", "fal"] {
        if let Some(r) = find_in(config, "ping", 1) {
            let p99 = r.router.med("/p99_us");
            goal(
                p99.map(|x| x <= 100.0),
                format!(
                    "{config} routes, ping at 1 conn: p99 ≤ 100 µs: {} µs",
                    num(p99)
                ),
            );
        }
    }
    for r in transfers.iter().filter(|r| r.mix == "chunked-upload") {
        let rel = ratio(r.router.med("/mb_per_s"), r.direct.med("/mb_per_s"));
        goal(
            rel.map(|x| x >= 0.5),
            format!(
                "{} routes, {} MiB chunked upload ≥ 0.5× the direct POST's MB/s: {}×",
                r.config,
                r.bytes / (1024 * 1024),
                rel.map_or_else(|| "—".to_owned(), |x| format!("{x:.2}"))
            ),
        );
        let rss = r.router.med("/rss_peak_kib").map(|x| x / 1024.0);
        goal(
            rss.map(|x| x < 64.0),
            format!(
                "{} routes, router peak RSS during the chunked upload < 64 MiB: {} MiB",
                r.config,
                num(rss)
            ),
        );
    }
    if let Some(r) = idle {
        let per = r.idle.med("/rss_kib").map(|x| x / r.conns as f64);
        goal(
            per.map(|x| x <= 30.0),
            format!(
                "{} idle connections ≤ 30 KiB RSS each: {} KiB (total RSS / connections)",
                r.conns,
                num(per)
            ),
        );
    }
    if let Some((with, without)) = validation.last() {
        let rel = ratio(
            with.router.med("/cpu_us_per_msg/router"),
            without.router.med("/cpu_us_per_msg/router"),
        );
        goal(
            rel.map(|x| x <= 1.10),
            format!(
                "schema validation costs ≤ 10% more than none (router CPU per ping, {} conns): {}",
                with.conns,
                rel.map_or_else(|| "—".to_owned(), |x| format!("{:+.1}%", (x - 1.0) * 100.0))
            ),
        );
    }
    o
}
