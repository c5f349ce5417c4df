//! A small client of the daemon's API for the CLI (`memscale status`): plain HTTP/1.1 over a
//! TCP connection to the loopback address, no extra dependencies.

use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach memscale at {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("bad answer from memscale: {0}")]
    Bad(String),
    #[error("memscale answered {code}: {message}")]
    Status { code: u16, message: String },
}

pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    token: Option<&str>,
) -> Result<Value, ClientError> {
    let conn = |source| ClientError::Connect { addr, source };
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(conn)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(conn)?;
    let body = body.unwrap_or("");
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .map_err(conn)?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).map_err(conn)?;
    let text = String::from_utf8_lossy(&out);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| ClientError::Bad("no header end".into()))?;
    let code: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| ClientError::Bad("no status code".into()))?;
    let v: Value = serde_json::from_str(body).map_err(|e| ClientError::Bad(e.to_string()))?;
    if code >= 400 {
        let message = v["error"].as_str().unwrap_or("").to_string();
        return Err(ClientError::Status { code, message });
    }
    Ok(v)
}

fn mib(v: &Value) -> String {
    match v.as_u64() {
        Some(b) => format!("{}", b / (1024 * 1024)),
        None => "-".into(),
    }
}

/// The guests as a table, one line each.
pub fn status_table(guests: &Value) -> String {
    let mut out = format!(
        "{:<14} {:<8} {:<11} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>6} {:>5}  {}\n",
        "GUEST",
        "HOST",
        "STATE",
        "SIZE",
        "TARGET",
        "FLOOR",
        "CEIL",
        "USED",
        "AVAIL",
        "VCPUS",
        "AGE",
        "LAST DECISION"
    );
    for g in guests.as_array().map(|a| a.as_slice()).unwrap_or(&[]) {
        let age = g["stats_age_seconds"]
            .as_f64()
            .map(|a| format!("{a:.0}s"))
            .unwrap_or_else(|| "-".into());
        let last = match g["last_decision"]["kind"].as_str() {
            Some(k) => format!("{k}: {}", g["why"].as_str().unwrap_or("")),
            None => String::new(),
        };
        let vcpus = match (
            g["vcpus"]["current"].as_u64(),
            g["vcpus"]["ceiling"].as_u64(),
        ) {
            (Some(c), Some(m)) => format!("{c}/{m}"),
            _ => "-".into(),
        };
        out.push_str(&format!(
            "{:<14} {:<8} {:<11} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>6} {:>5}  {}\n",
            g["name"].as_str().unwrap_or("?"),
            g["host"].as_str().unwrap_or("?"),
            g["state"].as_str().unwrap_or("?"),
            mib(&g["current"]),
            mib(&g["target"]),
            mib(&g["envelope"]["floor"]),
            mib(&g["envelope"]["ceiling"]),
            mib(&g["used"]),
            mib(&g["available"]),
            vcpus,
            age,
            last
        ));
    }
    out.push_str("(sizes in MiB)\n");
    out
}

/// Proposed migrations (open first), then the recent migrations from the audit.
pub fn migrations_table(proposals: &Value, history: &Value) -> String {
    let mut out = String::new();
    let empty = Vec::new();
    let ps = proposals.as_array().unwrap_or(&empty);
    let open: Vec<&Value> = ps
        .iter()
        .filter(|p| p["state"] == "proposed" || p["state"] == "approved")
        .collect();
    out.push_str(&format!("PROPOSALS ({} open)\n", open.len()));
    out.push_str(&format!(
        "{:>4}  {:<10} {:<16} {:<12} {:<12} {:>9} {:>9}  {}\n",
        "ID", "STATE", "GUEST", "FROM", "TO", "SIZE", "DEFICIT", "NOTE"
    ));
    for p in ps.iter().rev().take(20) {
        out.push_str(&format!(
            "{:>4}  {:<10} {:<16} {:<12} {:<12} {:>9} {:>9}  {}\n",
            p["id"],
            p["state"].as_str().unwrap_or("?"),
            p["guest"].as_str().unwrap_or("?"),
            p["from"].as_str().unwrap_or("?"),
            p["to"].as_str().unwrap_or("?"),
            mib(&p["size"]),
            mib(&p["deficit"]),
            p["error"].as_str().unwrap_or(""),
        ));
    }
    let hs = history.as_array().unwrap_or(&empty);
    out.push_str(&format!("\nMIGRATIONS ({} recorded)\n", hs.len()));
    for r in hs.iter().rev().take(20) {
        out.push_str(&format!(
            "{:>14.0}  {:<16} {:<12} -> {:<12} {:>9}  {}\n",
            r["time"].as_f64().unwrap_or(0.0),
            r["guest"].as_str().unwrap_or("?"),
            r["host"].as_str().unwrap_or("?"),
            r["reason"]["to"].as_str().unwrap_or("?"),
            mib(&r["before"]),
            r["result"].as_str().unwrap_or("?"),
        ));
    }
    if open.iter().any(|p| p["state"] == "proposed") {
        out.push_str("\napprove one with: memscale migrations approve ID\n");
    }
    out
}
