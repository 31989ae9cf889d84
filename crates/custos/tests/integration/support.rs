//! Small helpers that run the real `custos` binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

pub fn custos() -> Command {
    Command::new(env!("CARGO_BIN_EXE_custos"))
}

/// The repository's root folder.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Runs `custos scenario run` on a scenario made of `steps` (and optional extra top-level
/// fields), written to a fresh temporary folder together with `files`.
pub fn run_scenario(document: &Value, files: &[(&str, &str)]) -> Output {
    let folder = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(folder.path().join(name), text).unwrap();
    }
    let path = folder.path().join("scenario.json");
    std::fs::write(&path, serde_json::to_vec_pretty(document).unwrap()).unwrap();
    custos()
        .args(["scenario", "run"])
        .arg(&path)
        .output()
        .unwrap()
}

pub fn run_scenario_text(text: &str) -> (Output, PathBuf, tempfile::TempDir) {
    let folder = tempfile::tempdir().unwrap();
    let path = folder.path().join("scenario.json");
    std::fs::write(&path, text).unwrap();
    let output = custos()
        .args(["scenario", "run"])
        .arg(&path)
        .output()
        .unwrap();
    (output, path, folder)
}

/// An answer of [`http`].
pub struct HttpReply {
    pub status: u16,
    /// The status line and headers.
    pub head: String,
    pub body: String,
}

impl HttpReply {
    /// A header's value (the first of that name), or empty.
    pub fn header(&self, name: &str) -> String {
        let prefix = format!("{}:", name.to_ascii_lowercase());
        self.head
            .lines()
            .find_map(|line| {
                line.to_ascii_lowercase()
                    .starts_with(&prefix)
                    .then(|| line[prefix.len()..].trim().to_owned())
            })
            .unwrap_or_default()
    }
}

/// One HTTP/1.1 request over a plain TCP socket (`Connection: close`). A body is JSON unless
/// `headers` name another Content-Type.
pub fn http(
    address: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> HttpReply {
    try_http(address, method, path, headers, body)
        .unwrap_or_else(|e| panic!("{method} {path} at {address}: {e}"))
}

/// [`http`], answering a failed connection (a server that was killed) as an error.
pub fn try_http(
    address: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> std::io::Result<HttpReply> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address)?;
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    let body = body.unwrap_or("");
    if !body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH") {
        if !headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("content-type"))
        {
            request.push_str("Content-Type: application/json\r\n");
        }
        request.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    // Read the head, then as many bytes as Content-Length says (some servers, ChromeDriver
    // among them, keep the connection open after the answer), or else to the end.
    let mut raw = Vec::new();
    let mut buffer = [0u8; 8192];
    let head_end = loop {
        if let Some(at) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let read = stream.read(&mut buffer)?;
        if read == 0 {
            break raw.len();
        }
        raw.extend_from_slice(buffer.get(..read).unwrap_or_default());
    };
    let head = String::from_utf8_lossy(raw.get(..head_end).unwrap_or_default()).into_owned();
    let length = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse::<usize>().ok())?
    });
    match length {
        Some(length) => {
            while raw.len() < head_end + length {
                let read = stream.read(&mut buffer)?;
                if read == 0 {
                    break;
                }
                raw.extend_from_slice(buffer.get(..read).unwrap_or_default());
            }
        }
        None => {
            stream.read_to_end(&mut raw)?;
        }
    }
    let payload = String::from_utf8_lossy(raw.get(head_end..).unwrap_or_default()).into_owned();
    let head = head.trim_end().to_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok(HttpReply {
        status,
        head,
        body: payload,
    })
}

/// No file under `root`, at any depth, is a `.partial` one: an export interrupted or stopped
/// left nothing half-written behind.
pub fn assert_no_partial_files(root: &Path) {
    let mut pending = vec![root.to_owned()];
    while let Some(folder) = pending.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            assert_ne!(
                path.extension().and_then(|e| e.to_str()),
                Some("partial"),
                "{} was left behind",
                path.display()
            );
            if path.is_dir() {
                pending.push(path);
            }
        }
    }
}
