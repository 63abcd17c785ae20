//! A small HTTP/1 client (hyper) for what this crate fetches and posts: the
//! served log's checkpoints and tiles, add-checkpoint requests to cosigners,
//! and the operator's submissions. Every call has a deadline, and every answer
//! body a size cap, so a slow or hostile server costs the caller a bounded
//! wait and bounded memory.
//!
//! Only `http://` URLs: what is fetched authenticates itself (checkpoints are
//! signed, tiles and entries are checked against a signed root, submissions
//! are signed by the operator), so plain HTTP loses no integrity. Put a TLS
//! proxy in front for confidentiality of who reads what (docs/audit.md).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::Request;
use hyper_util::rt::TokioIo;

/// How long one call may take, connection included, unless told otherwise.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A base URL: `http://HOST:PORT[/PREFIX]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseUrl {
    host: String,
    port: u16,
    /// The path prefix, without a trailing `/` (empty for the root).
    prefix: String,
}

/// A call that did not get an answer, or got one too large.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HttpError {
    /// The URL is not `http://HOST:PORT[/PREFIX]`.
    #[error("invalid URL {url:?}: {why} (expected http://HOST:PORT[/PREFIX])")]
    BadUrl {
        /// The URL.
        url: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The connection could not be made.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// host:port.
        addr: String,
        /// What the socket reported.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP exchange failed.
    #[error("HTTP exchange with {addr} failed: {source}")]
    Exchange {
        /// host:port.
        addr: String,
        /// What hyper reported.
        #[source]
        source: hyper::Error,
    },
    /// The request could not be built (a path with characters a URL cannot hold).
    #[error("cannot build the request for {path:?}: {source}")]
    Request {
        /// The path.
        path: String,
        /// What was wrong.
        #[source]
        source: hyper::http::Error,
    },
    /// The answer's body is larger than the caller accepts.
    #[error("the answer from {addr} is larger than {max} bytes")]
    TooLarge {
        /// host:port.
        addr: String,
        /// The cap.
        max: usize,
    },
    /// No answer within the deadline.
    #[error("no answer from {addr} within {timeout:?}")]
    Timeout {
        /// host:port.
        addr: String,
        /// The deadline.
        timeout: Duration,
    },
}

/// An answer.
#[derive(Debug, Clone)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The `Content-Type` header, if it is text.
    pub content_type: Option<String>,
    /// The body.
    pub body: Bytes,
}

impl Response {
    /// The body as UTF-8 text, if it is.
    pub fn text(&self) -> Option<&str> {
        std::str::from_utf8(&self.body).ok()
    }
}

impl BaseUrl {
    /// Parses `http://HOST:PORT[/PREFIX]` (a trailing `/` is dropped).
    pub fn parse(url: &str) -> Result<Self, HttpError> {
        let bad = |why| HttpError::BadUrl {
            url: url.to_string(),
            why,
        };
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| bad("only http:// is supported"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let (host, port) = match authority.strip_prefix('[') {
            // [v6]:port
            Some(v6) => {
                let (h, p) = v6
                    .split_once("]:")
                    .ok_or_else(|| bad("a port is required"))?;
                (format!("[{h}]"), p)
            }
            None => {
                let (h, p) = authority
                    .rsplit_once(':')
                    .ok_or_else(|| bad("a port is required"))?;
                (h.to_string(), p)
            }
        };
        if host.is_empty() || host.contains('@') {
            return Err(bad("no host, or user info (not supported)"));
        }
        let port = p_port(port).ok_or_else(|| bad("the port is not a number 1..=65535"))?;
        if path.contains(['?', '#', ' ']) {
            return Err(bad("a query, fragment or space in the path"));
        }
        Ok(Self {
            host,
            port,
            prefix: path.trim_end_matches('/').to_string(),
        })
    }

    fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// The full path of `path` (which starts with `/`) below the prefix.
    pub fn path(&self, path: &str) -> String {
        format!("{}{path}", self.prefix)
    }

    /// `http://HOST:PORT/PREFIX`.
    pub fn as_string(&self) -> String {
        format!("http://{}{}", self.addr(), self.prefix)
    }

    /// GET `path` (below the prefix): at most `max` body bytes, within `timeout`.
    pub async fn get(
        &self,
        path: &str,
        max: usize,
        timeout: Duration,
    ) -> Result<Response, HttpError> {
        self.call("GET", path, None, max, timeout).await
    }

    /// POST `body` as `content_type` to `path` (below the prefix).
    pub async fn post(
        &self,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
        max: usize,
        timeout: Duration,
    ) -> Result<Response, HttpError> {
        self.call("POST", path, Some((content_type, body)), max, timeout)
            .await
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
        max: usize,
        timeout: Duration,
    ) -> Result<Response, HttpError> {
        let addr = self.addr();
        let exchange = async {
            let stream = tokio::net::TcpStream::connect(&addr)
                .await
                .map_err(|source| HttpError::Connect {
                    addr: addr.clone(),
                    source,
                })?;
            let _ = stream.set_nodelay(true);
            let exchange_error = |source| HttpError::Exchange {
                addr: addr.clone(),
                source,
            };
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(exchange_error)?;
            let driver = tokio::spawn(conn);
            let full_path = self.path(path);
            let mut request = Request::builder()
                .method(method)
                .uri(&full_path)
                .header(HOST, &addr);
            let payload = match body {
                Some((content_type, bytes)) => {
                    request = request.header(CONTENT_TYPE, content_type);
                    bytes
                }
                None => Vec::new(),
            };
            let request = request
                .body(Full::new(Bytes::from(payload)))
                .map_err(|source| HttpError::Request {
                    path: full_path.clone(),
                    source,
                })?;
            let response = sender.send_request(request).await.map_err(exchange_error)?;
            let status = response.status().as_u16();
            let content_type = response
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let body = Limited::new(response.into_body(), max)
                .collect()
                .await
                .map_err(|e| match e.downcast::<hyper::Error>() {
                    Ok(source) => exchange_error(*source),
                    Err(_) => HttpError::TooLarge {
                        addr: addr.clone(),
                        max,
                    },
                })?
                .to_bytes();
            driver.abort();
            Ok(Response {
                status,
                content_type,
                body,
            })
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| HttpError::Timeout {
                addr: addr.clone(),
                timeout,
            })?
    }
}

fn p_port(s: &str) -> Option<u16> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok().filter(|&p| p != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_strictly() {
        let u = BaseUrl::parse("http://127.0.0.1:8080/logs/").unwrap();
        assert_eq!(u.as_string(), "http://127.0.0.1:8080/logs");
        assert_eq!(u.path("/checkpoint"), "/logs/checkpoint");
        let v6 = BaseUrl::parse("http://[::1]:9").unwrap();
        assert_eq!(v6.as_string(), "http://[::1]:9");
        for bad in [
            "https://example.com:443",
            "http://example.com",
            "http://:80",
            "http://a:0",
            "http://a:99999",
            "http://a:80/x?y",
            "http://u@a:80",
            "ftp://a:1",
        ] {
            assert!(BaseUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
