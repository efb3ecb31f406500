//! HTTP/1.1 pieces shared by every subcommand: the loopback-only target URL, a chunked
//! transfer-coding decoder (Verdaccio answers chunked), and a small blocking keep-alive
//! client for setup work (login, loading, fetching documents to lay out for nginx).
//! The load generator itself is in `loadgen.rs`; this client is not on any measured path.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// A registry base URL such as `http://127.0.0.1:4873`. Only loopback addresses are
/// accepted: every load this crate generates stays on the machine.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    /// `http://HOST:PORT` without a trailing slash.
    pub(crate) base: String,
    /// `HOST:PORT`, sent as `Host` so that AgentRegistry serves its pre-rendered bytes.
    pub(crate) authority: String,
    pub(crate) addr: SocketAddr,
}

impl Target {
    pub(crate) fn parse(url: &str) -> Result<Target> {
        let rest = url
            .strip_prefix("http://")
            .with_context(|| format!("{url}: only http:// targets are supported"))?;
        let authority = rest.trim_end_matches('/').to_owned();
        anyhow::ensure!(
            !authority.contains('/'),
            "{url}: give the registry's base URL without a path"
        );
        let host = authority.replace("localhost", "127.0.0.1");
        let addr: SocketAddr = host
            .parse()
            .with_context(|| format!("{url}: expected http://IP:PORT"))?;
        anyhow::ensure!(
            addr.ip().is_loopback(),
            "{url}: this harness only drives loopback targets"
        );
        Ok(Target {
            base: format!("http://{authority}"),
            authority,
            addr,
        })
    }
}

/// Incremental decoder of a chunked body. `feed` consumes bytes until the terminating
/// empty line; bytes after it (none without pipelining) are ignored.
#[derive(Debug)]
pub(crate) struct ChunkDecoder {
    state: ChunkState,
}

#[derive(Debug, Clone, Copy)]
enum ChunkState {
    Size { value: u64, digits: u32 },
    Extension { value: u64 },
    SizeLf { value: u64 },
    Data(u64),
    DataCr,
    DataLf,
    Trailer { line_empty: bool },
    TrailerLf { line_empty: bool },
    Done,
}

impl Default for ChunkDecoder {
    fn default() -> Self {
        ChunkDecoder {
            state: ChunkState::Size {
                value: 0,
                digits: 0,
            },
        }
    }
}

impl ChunkDecoder {
    /// Feeds `data`; payload bytes go to `out` when given. Returns true once the body ended.
    pub(crate) fn feed(&mut self, mut data: &[u8], mut out: Option<&mut Vec<u8>>) -> Result<bool> {
        while !data.is_empty() {
            match self.state {
                ChunkState::Done => return Ok(true),
                ChunkState::Data(remaining) => {
                    let take = usize::try_from(remaining)
                        .unwrap_or(usize::MAX)
                        .min(data.len());
                    if let Some(out) = out.as_deref_mut() {
                        out.extend_from_slice(&data[..take]);
                    }
                    data = &data[take..];
                    let left = remaining - take as u64;
                    self.state = if left == 0 {
                        ChunkState::DataCr
                    } else {
                        ChunkState::Data(left)
                    };
                    continue;
                }
                _ => {}
            }
            let byte = data[0];
            data = &data[1..];
            self.state = match (self.state, byte) {
                (ChunkState::Size { value, digits }, b) if b.is_ascii_hexdigit() => {
                    anyhow::ensure!(digits < 15, "chunk size too long");
                    let digit = u64::from(char::from(b).to_digit(16).unwrap_or(0));
                    ChunkState::Size {
                        value: value * 16 + digit,
                        digits: digits + 1,
                    }
                }
                (ChunkState::Size { value, digits }, b';' | b' ' | b'\t') if digits > 0 => {
                    ChunkState::Extension { value }
                }
                (ChunkState::Size { value, digits }, b'\r') if digits > 0 => {
                    ChunkState::SizeLf { value }
                }
                (ChunkState::Extension { value }, b'\r') => ChunkState::SizeLf { value },
                (ChunkState::Extension { value }, _) => ChunkState::Extension { value },
                (ChunkState::SizeLf { value }, b'\n') => {
                    if value == 0 {
                        ChunkState::Trailer { line_empty: true }
                    } else {
                        ChunkState::Data(value)
                    }
                }
                (ChunkState::DataCr, b'\r') => ChunkState::DataLf,
                (ChunkState::DataLf, b'\n') => ChunkState::Size {
                    value: 0,
                    digits: 0,
                },
                (ChunkState::Trailer { line_empty }, b'\r') => ChunkState::TrailerLf { line_empty },
                (ChunkState::Trailer { .. }, _) => ChunkState::Trailer { line_empty: false },
                (ChunkState::TrailerLf { line_empty }, b'\n') => {
                    if line_empty {
                        ChunkState::Done
                    } else {
                        ChunkState::Trailer { line_empty: true }
                    }
                }
                (state, b) => bail!("malformed chunked body at {state:?} (byte {b:#04x})"),
            };
        }
        Ok(matches!(self.state, ChunkState::Done))
    }
}

/// A response read by the blocking client.
#[derive(Debug)]
pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    /// The body as sent (still gzip-encoded when `Content-Encoding: gzip`).
    pub(crate) body: Vec<u8>,
}

impl Response {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn is_gzip(&self) -> bool {
        self.header("content-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("gzip"))
    }

    /// The body with any gzip content coding removed.
    pub(crate) fn decoded_body(&self) -> Result<Vec<u8>> {
        if self.is_gzip() {
            gunzip(&self.body)
        } else {
            Ok(self.body.clone())
        }
    }

    pub(crate) fn text(&self) -> String {
        let body = self.decoded_body().unwrap_or_else(|_| self.body.clone());
        let text = String::from_utf8_lossy(&body);
        text.chars().take(400).collect()
    }
}

pub(crate) fn gunzip(bytes: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(bytes.len() * 4);
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .context("gunzip")?;
    Ok(out)
}

/// A blocking keep-alive connection for setup work.
pub(crate) struct Conn {
    target: Target,
    host_header: String,
    stream: Option<BufReader<TcpStream>>,
    timeout: Duration,
}

impl Conn {
    pub(crate) fn new(target: &Target) -> Conn {
        Conn {
            target: target.clone(),
            host_header: target.authority.clone(),
            stream: None,
            timeout: Duration::from_secs(120),
        }
    }

    /// Sends `Host: host` instead of the target's authority (AgentRegistry then renders
    /// tarball URLs for that host; used to lay out documents for nginx).
    pub(crate) fn with_host(mut self, host: &str) -> Conn {
        host.clone_into(&mut self.host_header);
        self
    }

    fn stream(&mut self) -> Result<&mut BufReader<TcpStream>> {
        if self.stream.is_none() {
            let stream = TcpStream::connect_timeout(&self.target.addr, Duration::from_secs(10))
                .with_context(|| format!("connecting to {}", self.target.base))?;
            stream.set_nodelay(true)?;
            stream.set_read_timeout(Some(self.timeout))?;
            stream.set_write_timeout(Some(self.timeout))?;
            self.stream = Some(BufReader::with_capacity(64 * 1024, stream));
        }
        self.stream.as_mut().context("connection vanished")
    }

    /// One request; retried once on a fresh connection when a kept-alive one was closed.
    pub(crate) fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Result<Response> {
        let reused = self.stream.is_some();
        match self.request_once(method, path, headers, body) {
            Ok(r) => Ok(r),
            Err(e) if reused => {
                self.stream = None;
                self.request_once(method, path, headers, body)
                    .with_context(|| format!("retry after: {e:#}"))
            }
            Err(e) => {
                self.stream = None;
                Err(e)
            }
        }
    }

    fn request_once(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Result<Response> {
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: agentregistry-perf\r\n",
            self.host_header
        );
        for (name, value) in headers {
            head.push_str(name);
            head.push_str(": ");
            head.push_str(value);
            head.push_str("\r\n");
        }
        if let Some(body) = body {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        let what = format!("{method} {}{path}", self.target.base);
        let stream = self.stream()?;
        {
            let socket = stream.get_mut();
            socket
                .write_all(head.as_bytes())
                .with_context(|| format!("{what}: sending"))?;
            if let Some(body) = body {
                socket
                    .write_all(body)
                    .with_context(|| format!("{what}: sending body"))?;
            }
        }
        let response = read_response(stream, method == "HEAD").with_context(|| what.clone())?;
        let close = response
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        if close {
            self.stream = None;
        }
        Ok(response)
    }
}

fn read_response(stream: &mut BufReader<TcpStream>, head_only: bool) -> Result<Response> {
    let mut line = String::new();
    loop {
        line.clear();
        let n = stream.read_line(&mut line).context("reading status line")?;
        anyhow::ensure!(n > 0, "connection closed before a response");
        let status = parse_status(&line)?;
        let mut headers = Vec::new();
        loop {
            line.clear();
            stream.read_line(&mut line).context("reading headers")?;
            let trimmed = line.trim_end();
            if trimmed.is_empty() {
                break;
            }
            let (name, value) = trimmed
                .split_once(':')
                .with_context(|| format!("bad header line {trimmed:?}"))?;
            headers.push((name.trim().to_owned(), value.trim().to_owned()));
        }
        if (100..200).contains(&status) {
            continue;
        }
        let mut response = Response {
            status,
            headers,
            body: Vec::new(),
        };
        if head_only || status == 204 || status == 304 {
            return Ok(response);
        }
        let chunked = response
            .header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        if chunked {
            let mut decoder = ChunkDecoder::default();
            loop {
                let buf = stream.fill_buf().context("reading chunked body")?;
                anyhow::ensure!(!buf.is_empty(), "connection closed inside a chunked body");
                let len = buf.len();
                let done = decoder.feed(buf, Some(&mut response.body))?;
                stream.consume(len);
                if done {
                    break;
                }
            }
        } else if let Some(length) = response.header("content-length") {
            let length: usize = length.parse().context("bad Content-Length")?;
            response.body.resize(length, 0);
            stream
                .read_exact(&mut response.body)
                .context("reading body")?;
        } else {
            stream
                .read_to_end(&mut response.body)
                .context("reading body to close")?;
        }
        return Ok(response);
    }
}

fn parse_status(line: &str) -> Result<u16> {
    let mut parts = line.split_ascii_whitespace();
    let version = parts.next().unwrap_or_default();
    anyhow::ensure!(version.starts_with("HTTP/1."), "bad status line {line:?}");
    parts
        .next()
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {line:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_decoding_across_splits() -> Result<()> {
        let body = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
        for split in 0..body.len() {
            let mut decoder = ChunkDecoder::default();
            let mut out = Vec::new();
            let first = decoder.feed(&body[..split], Some(&mut out))?;
            assert!(!first || split == body.len());
            assert!(decoder.feed(&body[split..], Some(&mut out))?);
            assert_eq!(out, b"hello world");
        }
        Ok(())
    }

    #[test]
    fn targets_must_be_loopback() {
        assert!(Target::parse("http://127.0.0.1:4873").is_ok());
        assert!(Target::parse("http://localhost:4873/").is_ok());
        assert!(Target::parse("http://10.0.0.1:4873").is_err());
        assert!(Target::parse("https://127.0.0.1:4873").is_err());
    }
}
