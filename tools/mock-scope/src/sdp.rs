//! The made-up SDP answer for offers str0m cannot accept (the SDP fragments the router's tests send): a test-only leniency where aiortc would answer 500.

use std::fmt::Write as _;

use sha2::{Digest, Sha256};

use crate::fastapi::hex;

/// Mirrors the offer's media sections so clients that inspect the answer (mids, kinds, codecs)
/// see something consistent; no real ICE/DTLS happens behind it.
pub fn fake_answer_sdp(offer: &str, session_id: &str) -> String {
    struct Section {
        kind: String,
        proto: String,
        formats: String,
        mid: Option<String>,
        direction: &'static str,
        codec_lines: Vec<String>,
    }
    let mut sections: Vec<Section> = Vec::new();
    for line in offer.lines() {
        if let Some(m) = line.strip_prefix("m=") {
            let mut parts = m.split_whitespace();
            let kind = parts.next().unwrap_or("video").to_owned();
            let _port = parts.next();
            let proto = parts.next().unwrap_or("UDP/TLS/RTP/SAVPF").to_owned();
            let formats = parts.collect::<Vec<_>>().join(" ");
            sections.push(Section {
                kind,
                proto,
                formats,
                mid: None,
                direction: "sendrecv",
                codec_lines: Vec::new(),
            });
        } else if let Some(section) = sections.last_mut() {
            if let Some(mid) = line.strip_prefix("a=mid:") {
                section.mid.get_or_insert_with(|| mid.to_owned());
            } else if line.starts_with("a=rtpmap:")
                || line.starts_with("a=fmtp:")
                || line.starts_with("a=rtcp-fb:")
            {
                section.codec_lines.push(line.to_owned());
            } else {
                section.direction = match line {
                    "a=sendonly" => "recvonly",
                    "a=recvonly" => "sendonly",
                    "a=inactive" => "inactive",
                    "a=sendrecv" => "sendrecv",
                    _ => section.direction,
                };
            }
        }
    }
    if sections.is_empty() {
        sections.push(Section {
            kind: "video".to_owned(),
            proto: "UDP/TLS/RTP/SAVPF".to_owned(),
            formats: "96".to_owned(),
            mid: None,
            direction: "sendrecv",
            codec_lines: vec!["a=rtpmap:96 VP8/90000".to_owned()],
        });
    }

    let digest = Sha256::digest(session_id.as_bytes());
    let fingerprint = digest
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":");
    let digest_hex = hex(&digest);
    let ufrag: String = session_id.chars().take(8).collect();
    let pwd: String = digest_hex.chars().take(24).collect();
    let mids: Vec<String> = sections
        .iter()
        .enumerate()
        .map(|(i, s)| s.mid.clone().unwrap_or_else(|| i.to_string()))
        .collect();

    let mut sdp = String::new();
    let _ = write!(
        sdp,
        "v=0\r\no=mock-scope {} 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE {}\r\na=msid-semantic:WMS *\r\n",
        u64::from_str_radix(
            &session_id
                .replace('-', "")
                .chars()
                .take(12)
                .collect::<String>(),
            16
        )
        .unwrap_or(1),
        mids.join(" ")
    );
    for (section, mid) in sections.iter().zip(&mids) {
        let formats = if section.formats.is_empty() {
            "96"
        } else {
            section.formats.as_str()
        };
        let _ = write!(
            sdp,
            "m={} 9 {} {}\r\nc=IN IP4 0.0.0.0\r\na=ice-ufrag:{ufrag}\r\na=ice-pwd:{pwd}\r\na=fingerprint:sha-256 {fingerprint}\r\na=setup:active\r\na=mid:{mid}\r\n",
            section.kind, section.proto, formats
        );
        if section.kind == "application" {
            sdp.push_str("a=sctp-port:5000\r\n");
        } else {
            let _ = write!(sdp, "a={}\r\na=rtcp-mux\r\n", section.direction);
            for line in &section.codec_lines {
                sdp.push_str(line);
                sdp.push_str("\r\n");
            }
        }
        sdp.push_str(
            "a=candidate:1 1 udp 2130706431 127.0.0.1 9 typ host\r\na=end-of-candidates\r\n",
        );
    }
    sdp
}
