//! The CLI's way into a running server: one HTTP/1.1 request over loopback TCP to the URL in
//! `<home>/server.json`, authenticated with `<home>/admin.token`. Plain `std::net`: the only
//! peer is our own server on this machine.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

use serde::de::DeserializeOwned;

use super::{ServerFile, ADMIN_TOKEN_FILE, SERVER_FILE};

/// How long to wait to connect to the server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an admin job may take before the CLI gives up waiting (the job itself goes on).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(6 * 60 * 60);
/// Largest answer accepted (a report lists every finding).
const ANSWER_BYTES_MAX: u64 = 256 << 20;

/// Why the server could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "the data directory is in use by another process, but {} cannot be read ({source}); \
         stop that process and retry",
        .path.display()
    )]
    NoServerFile {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not valid: {detail}", .path.display())]
    BadServerFile {
        path: std::path::PathBuf,
        detail: String,
    },
    #[error("cannot read the admin token {}: {source}", .path.display())]
    Token {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("the server at {url} did not answer: {source}")]
    Unreachable { url: String, source: std::io::Error },
    #[error("the server at {url} answered {status}: {message}")]
    Refused {
        url: String,
        status: u16,
        message: String,
    },
    #[error("the server at {url} sent an answer this CLI cannot read: {detail}")]
    BadAnswer { url: String, detail: String },
}

/// The running server of `home`, as `server.json` names it.
pub(super) struct Server {
    url: String,
    addr: SocketAddr,
    token: String,
}

impl Server {
    /// Reads `server.json` and `admin.token`.
    pub(super) fn of_home(home: &Path) -> Result<Server, ClientError> {
        let path = home.join(SERVER_FILE);
        let bytes = std::fs::read(&path).map_err(|source| ClientError::NoServerFile {
            path: path.clone(),
            source,
        })?;
        let bad = |detail: String| ClientError::BadServerFile {
            path: path.clone(),
            detail,
        };
        let file: ServerFile = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
        let authority = file
            .url
            .strip_prefix("http://")
            .ok_or_else(|| bad(format!("url {:?} is not http://", file.url)))?;
        let addr = authority
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| bad(format!("url {:?} names no address", file.url)))?;
        let token_path = home.join(ADMIN_TOKEN_FILE);
        let token = std::fs::read_to_string(&token_path).map_err(|source| ClientError::Token {
            path: token_path,
            source,
        })?;
        Ok(Server {
            url: file.url,
            addr,
            token: token.trim().to_owned(),
        })
    }

    /// The server's URL.
    pub(super) fn url(&self) -> &str {
        &self.url
    }

    /// True when the server answers `GET /-/ping` within `timeout`.
    pub(super) fn answers_ping(&self, timeout: Duration) -> bool {
        let head = format!(
            "GET /-/ping HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.addr
        );
        matches!(self.exchange(head.as_bytes(), timeout), Ok((200, _)))
    }

    /// POSTs `body` (JSON) to `path` and decodes the 200 answer.
    pub(super) fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<T, ClientError> {
        let body = serde_json::to_vec(body).expect("a JSON value serializes");
        let mut request = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.addr,
            self.token,
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(&body);
        let (status, answer) =
            self.exchange(&request, ANSWER_TIMEOUT)
                .map_err(|source| ClientError::Unreachable {
                    url: self.url.clone(),
                    source,
                })?;
        if status != 200 {
            let message = serde_json::from_slice::<serde_json::Value>(&answer)
                .ok()
                .and_then(|v| v["message"].as_str().map(str::to_owned))
                .unwrap_or_else(|| String::from_utf8_lossy(&answer).into_owned());
            return Err(ClientError::Refused {
                url: self.url.clone(),
                status,
                message,
            });
        }
        serde_json::from_slice(&answer).map_err(|e| ClientError::BadAnswer {
            url: self.url.clone(),
            detail: e.to_string(),
        })
    }

    /// Sends `request` on a new connection and reads the answer to EOF (`Connection: close`).
    fn exchange(&self, request: &[u8], timeout: Duration) -> std::io::Result<(u16, Vec<u8>)> {
        let mut stream = TcpStream::connect_timeout(&self.addr, CONNECT_TIMEOUT)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(CONNECT_TIMEOUT))?;
        stream.write_all(request)?;
        let mut raw = Vec::new();
        stream.take(ANSWER_BYTES_MAX).read_to_end(&mut raw)?;
        parse_answer(&raw).ok_or_else(|| std::io::Error::other("malformed HTTP answer"))
    }
}

/// Status and body of a complete HTTP/1.1 answer (body cut to its `Content-Length`).
fn parse_answer(raw: &[u8]) -> Option<(u16, Vec<u8>)> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let mut body = raw[end + 4..].to_vec();
    let length = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok());
    if let Some(length) = length {
        if body.len() < length {
            return None;
        }
        body.truncate(length);
    }
    Some((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_answers() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";
        assert_eq!(parse_answer(raw), Some((200, b"{}".to_vec())));
        let short = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n{}";
        assert_eq!(parse_answer(short), None);
        assert_eq!(parse_answer(b"garbage"), None);
    }
}
