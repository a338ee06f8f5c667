//! A tiny HTTP/1.1 client over raw TCP (tests must not depend on the code under test).

use serde_json::Value;
use tokio::net::TcpStream;

use super::WAIT;

/// GET a URL on a process, returning status and JSON body (`Null` if the body is not JSON).
pub async fn get_json(url: &str) -> (u16, Value) {
    let (status, body) = http(url, "GET", None).await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// One request with `Connection: close`; returns the status and the (de-chunked) body.
pub async fn http(url: &str, method: &str, body: Option<&str>) -> (u16, String) {
    let (status, _head, body) = http_with(url, method, &[], body).await;
    (status, body)
}

/// One request with extra header lines (`("Authorization", "Bearer …")`); returns the status,
/// the response head (status line and headers) and the (de-chunked) body.
pub async fn http_with(
    url: &str,
    method: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_owned()), |(h, p)| (h, format!("/{p}")));
    let mut s = tokio::time::timeout(WAIT, TcpStream::connect(host))
        .await
        .unwrap()
        .unwrap();
    let body = body.unwrap_or("");
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{extra}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (status, head.to_owned(), body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}
