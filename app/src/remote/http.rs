//! A small blocking HTTP/1.1 client for the studio's own server: one connection per call
//! (`Connection: close`), JSON bodies, chunked or sized answers, and a server-sent-event
//! reader that can be polled for cancellation between reads. Plain `http://` only: put a TLS
//! proxy (nginx) or an SSH tunnel in front for other networks.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use base64::Engine as _;
use serde_json::Value;

/// Where the server is and how to prove who we are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Server {
    host: String,
    port: u16,
    /// A path prefix (a server behind a proxy at `/studio`), without the trailing slash.
    prefix: String,
    authorization: Option<String>,
}

impl Server {
    /// `http://host[:port][/prefix]`, with `user:pass@` for HTTP Basic; a non-empty `token`
    /// is sent as a bearer token instead.
    pub fn parse(url: &str, token: &str) -> Result<Self, String> {
        let url = url.trim();
        let rest = if let Some(r) = url.strip_prefix("http://") {
            r
        } else if url.starts_with("https://") {
            return Err("https:// is not spoken here: connect to the server's http:// address on a trusted network, through an SSH tunnel, or through a TLS proxy on this machine".into());
        } else if url.contains("://") {
            return Err(format!("{url:?} is not an http:// address"));
        } else {
            url
        };
        let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
        let (userinfo, hostport) = authority.rsplit_once('@').map_or((None, authority), |(u, h)| (Some(u), h));
        let port_of = |p: &str| p.parse::<u16>().map_err(|_| format!("bad port in {url:?}"));
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, p) = v6.split_once(']').ok_or(format!("bad address {url:?}"))?;
            (h.to_string(), p.strip_prefix(':').map_or(Ok(80), port_of)?)
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), port_of(p)?),
                None => (hostport.to_string(), 80),
            }
        };
        if host.is_empty() {
            return Err(format!("no host in {url:?}"));
        }
        let token = token.trim();
        let authorization = if !token.is_empty() {
            Some(format!("Bearer {token}"))
        } else {
            userinfo.map(|u| format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(u)))
        };
        Ok(Self {
            host,
            port,
            prefix: path
                .trim_end_matches('/')
                .split('/')
                .filter(|s| !s.is_empty())
                .fold(String::new(), |a, s| a + "/" + s),
            authorization,
        })
    }

    /// The address, for the status bar (without credentials).
    pub fn url(&self) -> String {
        format!("http://{}{}", self.authority(), self.prefix)
    }

    fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    fn connect(&self) -> io::Result<TcpStream> {
        let host = self.host.as_str();
        let mut last = io::Error::new(io::ErrorKind::NotFound, format!("{} does not resolve", self.host));
        for addr in (host, self.port).to_socket_addrs()? {
            match TcpStream::connect_timeout(&addr, Duration::from_secs(10)) {
                Ok(s) => {
                    s.set_nodelay(true)?;
                    return Ok(s);
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Sends a request and reads the status line and headers; the body follows.
    fn send(&self, method: &str, path: &str, body: Option<&Value>, read_timeout: Duration) -> Result<Answer, String> {
        let fail = |e: io::Error| format!("{}: {e}", self.url());
        let stream = self.connect().map_err(fail)?;
        stream.set_read_timeout(Some(read_timeout)).map_err(fail)?;
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut head = format!(
            "{method} {}{path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nAccept: application/json, text/event-stream\r\nContent-Length: {}\r\n",
            self.prefix,
            self.authority(),
            body.len()
        );
        if !body.is_empty() {
            head.push_str("Content-Type: application/json\r\n");
        }
        if let Some(a) = &self.authorization {
            head.push_str(&format!("Authorization: {a}\r\n"));
        }
        head.push_str("\r\n");
        let mut w = &stream;
        w.write_all(head.as_bytes())
            .and_then(|()| w.write_all(body.as_bytes()))
            .map_err(fail)?;
        let mut reader = BufReader::new(stream.try_clone().map_err(fail)?);
        let mut line = String::new();
        reader.read_line(&mut line).map_err(fail)?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("{} did not answer in HTTP ({:?})", self.url(), line.trim()))?;
        let (mut chunked, mut length) = (false, None);
        loop {
            line.clear();
            if reader.read_line(&mut line).map_err(fail)? == 0 || line.trim().is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
                if k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked") {
                    chunked = true;
                } else if k == "content-length" {
                    length = v.parse::<u64>().ok();
                }
            }
        }
        let body: Box<dyn BufRead + Send> = if chunked {
            Box::new(BufReader::new(Chunked::new(reader)))
        } else if let Some(n) = length {
            Box::new(reader.take(n))
        } else {
            Box::new(reader)
        };
        Ok(Answer { status, body, stream })
    }

    /// A JSON call; an answer other than 2xx becomes its error text (FastAPI's `detail`).
    pub fn json(&self, method: &str, path: &str, body: Option<&Value>, timeout: Duration) -> Result<Value, String> {
        let mut a = self.send(method, path, body, timeout)?;
        let mut bytes = vec![];
        a.body.read_to_end(&mut bytes).map_err(|e| format!("{}: {e}", self.url()))?;
        let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if (200..300).contains(&a.status) {
            return Ok(v);
        }
        Err(error_text(a.status, &v, &bytes))
    }

    /// A call answered by server-sent events; `poll` is how long one read waits before the
    /// reader returns `Ok(None)` so the caller can look at its cancel flag.
    pub fn events(&self, path: &str, body: &Value, poll: Duration) -> Result<EventReader, String> {
        let mut a = self.send("POST", path, Some(body), Duration::from_secs(600))?;
        if !(200..300).contains(&a.status) {
            let mut bytes = vec![];
            let _ = a.body.read_to_end(&mut bytes);
            let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            return Err(error_text(a.status, &v, &bytes));
        }
        a.stream.set_read_timeout(Some(poll)).map_err(|e| e.to_string())?;
        Ok(EventReader {
            body: a.body,
            stream: a.stream,
            line: vec![],
            name: String::new(),
            data: String::new(),
        })
    }
}

fn error_text(status: u16, v: &Value, bytes: &[u8]) -> String {
    let detail = match v.get("detail") {
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| {
                let field = i
                    .get("loc")
                    .and_then(Value::as_array)
                    .and_then(|l| l.last())
                    .and_then(Value::as_str)
                    .unwrap_or("body");
                format!("{field}: {}", i.get("msg").and_then(Value::as_str).unwrap_or("invalid"))
            })
            .collect::<Vec<_>>()
            .join("; "),
        Some(Value::String(s)) => s.clone(),
        _ => String::from_utf8_lossy(bytes).trim().chars().take(200).collect(),
    };
    match status {
        401 => format!("the server refused the credentials ({detail}): check the token or user:password"),
        _ => format!("the server answered {status}: {detail}"),
    }
}

struct Answer {
    status: u16,
    body: Box<dyn BufRead + Send>,
    stream: TcpStream,
}

/// Server-sent events, one `(event, data)` at a time.
pub struct EventReader {
    body: Box<dyn BufRead + Send>,
    stream: TcpStream,
    line: Vec<u8>,
    name: String,
    data: String,
}

impl EventReader {
    /// The next event; `Ok(None)` when the poll time passed without one (call again), an
    /// error of kind `UnexpectedEof` when the stream ended.
    pub fn next_event(&mut self) -> io::Result<Option<(String, String)>> {
        loop {
            match self.body.read_until(b'\n', &mut self.line) {
                Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the server closed the stream")),
                Ok(_) => {}
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            if !self.line.ends_with(b"\n") {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the server closed the stream"));
            }
            let text = String::from_utf8_lossy(&self.line).trim_end_matches(['\r', '\n']).to_string();
            self.line.clear();
            if text.is_empty() {
                if !self.name.is_empty() || !self.data.is_empty() {
                    let name = std::mem::take(&mut self.name);
                    let data = std::mem::take(&mut self.data);
                    return Ok(Some((if name.is_empty() { "message".into() } else { name }, data)));
                }
            } else if let Some(v) = text.strip_prefix("event:") {
                self.name = v.trim_start().to_string();
            } else if let Some(v) = text.strip_prefix("data:") {
                if !self.data.is_empty() {
                    self.data.push('\n');
                }
                self.data.push_str(v.strip_prefix(' ').unwrap_or(v));
            }
            // Comments (": keep-alive"), `id:` and `retry:` lines are not needed here.
        }
    }

    /// Hangs up: the server cancels the job the stream belongs to.
    pub fn close(self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    Size,
    Data,
    End,
    Done,
}

/// HTTP/1.1 chunked transfer coding. Every partial read is kept, so a read that times out
/// (the cancel poll) can simply be repeated.
struct Chunked<R> {
    inner: R,
    state: ChunkState,
    left: u64,
    line: Vec<u8>,
}

impl<R: BufRead> Chunked<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            state: ChunkState::Size,
            left: 0,
            line: vec![],
        }
    }
}

impl<R: BufRead> Read for Chunked<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.state {
                ChunkState::Done => return Ok(0),
                ChunkState::Size | ChunkState::End => {
                    self.inner.read_until(b'\n', &mut self.line)?;
                    if !self.line.ends_with(b"\n") {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the answer stopped inside a chunk header",
                        ));
                    }
                    if self.state == ChunkState::End {
                        self.line.clear();
                        self.state = ChunkState::Size;
                        continue;
                    }
                    let text = String::from_utf8_lossy(&self.line).to_string();
                    self.line.clear();
                    let hex = text.split(';').next().unwrap_or("").trim();
                    let n = u64::from_str_radix(hex, 16)
                        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("bad chunk size {hex:?}")))?;
                    if n == 0 {
                        self.state = ChunkState::Done;
                        return Ok(0);
                    }
                    self.left = n;
                    self.state = ChunkState::Data;
                }
                ChunkState::Data => {
                    let buf = self.inner.fill_buf()?;
                    if buf.is_empty() {
                        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the answer stopped inside a chunk"));
                    }
                    let k = buf.len().min(out.len()).min(self.left as usize);
                    out[..k].copy_from_slice(&buf[..k]);
                    self.inner.consume(k);
                    self.left -= k as u64;
                    if self.left == 0 {
                        self.state = ChunkState::End;
                    }
                    return Ok(k);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse() {
        let s = Server::parse("http://me:secret@box.local:7860/studio/", "").expect("parses");
        assert_eq!(s.url(), "http://box.local:7860/studio");
        assert_eq!(s.authorization.as_deref(), Some("Basic bWU6c2VjcmV0"));
        let s = Server::parse("127.0.0.1:9000", " tok ").expect("parses");
        assert_eq!(s.url(), "http://127.0.0.1:9000");
        assert_eq!(s.authorization.as_deref(), Some("Bearer tok"));
        assert_eq!(Server::parse("http://gpu-box", "").expect("parses").url(), "http://gpu-box:80");
        assert!(Server::parse("https://gpu-box", "").is_err_and(|e| e.contains("https")));
        assert!(Server::parse("ftp://x", "").is_err());
        assert!(Server::parse("http://:80", "").is_err());
        assert!(Server::parse("http://x:notaport", "").is_err());
    }

    #[test]
    fn chunked_bodies_decode_across_chunks() {
        let wire = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\n\r\n";
        let mut out = String::new();
        Chunked::new(&wire[..]).read_to_string(&mut out).expect("decodes");
        assert_eq!(out, "hello, world");
        let cut = b"5\r\nhel";
        assert!(Chunked::new(&cut[..]).read_to_string(&mut String::new()).is_err());
    }
}
