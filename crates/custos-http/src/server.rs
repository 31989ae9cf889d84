//! Serving connections: hyper's HTTP/1.1 under the router, with a limit on request heads and
//! graceful shutdown. There is no timeout on reading a head: hyper's arms a timer per request,
//! which cost the gate about 4% of its CPU per request (BENCHMARKS.md); slow clients are for
//! the load balancer in front to cut off.
//!
//! A request hyper can't parse (not HTTP, a path with raw bytes no URI may hold, headers past
//! the limit) never reaches the router: hyper answers it itself, with a bare status and no
//! body, and closes the connection. Every answer of custos must be problem+json, so each
//! connection's writes pass through [`ProblemsOnParseErrors`], which replaces exactly those
//! bare answers (a 400, 414 or 431 head with no `content-type`, which no answer of the router
//! ever is) by the same status as a problem.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::problem::Problem;

/// The largest request head (request line and headers) custos reads.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Serves `router` on `listener` until `shutdown` resolves; then accepts no more connections,
/// lets each finish the request it is answering, and returns once all have closed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let (stop, stopping) = watch::channel(());
    let (open, all_closed) = watch::channel(());
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of file descriptors, say: wait a moment rather than spin.
                    tracing::warn!(%error, "could not accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let (mut stopping, closed) = (stopping.clone(), all_closed.clone());
        tokio::spawn(async move {
            let io = TokioIo::new(ProblemsOnParseErrors::new(stream));
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.max_header_size(MAX_HEAD_BYTES);
            let mut connection = std::pin::pin!(builder.serve_connection(io, service));
            loop {
                tokio::select! {
                    _ = connection.as_mut() => break,
                    _ = stopping.changed() => connection.as_mut().graceful_shutdown(),
                }
            }
            drop(closed);
        });
    }
    drop(stop);
    drop(all_closed);
    open.closed().await;
    Ok(())
}

/// The problem that replaces hyper's bare answer of `status` to a request it could not parse.
fn problem_for(status: u16) -> Option<Vec<u8>> {
    use axum::http::StatusCode;
    let (code, kind, detail) = match status {
        400 => (
            StatusCode::BAD_REQUEST,
            "malformed-request",
            "the request is not HTTP/1.1 that custos can read (its request line or a header is malformed, or the path holds bytes no URI may hold; percent-encode them)",
        ),
        414 => (
            StatusCode::URI_TOO_LONG,
            "uri-too-long",
            "the request's path is longer than custos reads",
        ),
        431 => (
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers-too-large",
            "the request's headers are larger than custos reads (at most 100 header fields and 64 KiB in all)",
        ),
        _ => return None,
    };
    let problem = Problem::new(code, kind, detail);
    let body = serde_json::to_vec(&problem.body()).ok()?;
    let mut answer = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        code.as_u16(),
        code.canonical_reason().unwrap_or("Error"),
        crate::problem::PROBLEM_JSON,
        body.len()
    )
    .into_bytes();
    answer.extend_from_slice(&body);
    Some(answer)
}

/// If `bytes` are hyper's whole answer to a request it could not parse, the status of it.
fn bare_parse_error(bytes: &[u8]) -> Option<u16> {
    let head = bytes.strip_suffix(b"\r\n\r\n")?;
    let status = head.strip_prefix(b"HTTP/1.1 ")?.get(..3)?;
    let status: u16 = std::str::from_utf8(status).ok()?.parse().ok()?;
    let has_content_type = head
        .split(|b| *b == b'\n')
        .any(|line| line.to_ascii_lowercase().starts_with(b"content-type:"));
    (!has_content_type && matches!(status, 400 | 414 | 431)).then_some(status)
}

/// A connection whose bare parse-error answers are written as problems (see the module doc).
struct ProblemsOnParseErrors {
    inner: TcpStream,
    /// A replacement answer still to be written, and how much of it is.
    pending: Option<(Vec<u8>, usize)>,
}

impl ProblemsOnParseErrors {
    fn new(inner: TcpStream) -> ProblemsOnParseErrors {
        ProblemsOnParseErrors {
            inner,
            pending: None,
        }
    }

    /// Writes what is pending of a replacement answer.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((answer, written)) = &mut self.pending {
            let rest = answer.get(*written..).unwrap_or_default();
            if rest.is_empty() {
                self.pending = None;
                break;
            }
            match Pin::new(&mut self.inner).poll_write(cx, rest) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => *written += n,
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for ProblemsOnParseErrors {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for ProblemsOnParseErrors {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.drain(cx)?.is_pending() {
            return Poll::Pending;
        }
        if let Some(answer) = bare_parse_error(buf).and_then(problem_for) {
            self.pending = Some((answer, 0));
            // The bare answer is taken whole; the problem goes out in its place.
            let _ = self.drain(cx)?;
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.drain(cx)?.is_pending() {
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.drain(cx)?.is_pending() {
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    // Each answer comes as one buffer, so that a bare head is seen whole.
    fn is_write_vectored(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bare_parse_error_heads_are_taken_for_them() {
        assert_eq!(
            bare_parse_error(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\ndate: x\r\n\r\n"),
            Some(400)
        );
        assert_eq!(
            bare_parse_error(b"HTTP/1.1 431 Request Header Fields Too Large\r\n\r\n"),
            Some(431)
        );
        // The router's own 400s carry a problem.
        assert_eq!(
            bare_parse_error(
                b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/problem+json\r\ncontent-length: 2\r\n\r\n"
            ),
            None
        );
        // A head with a body after it, another status, or part of a head is not one.
        assert_eq!(
            bare_parse_error(b"HTTP/1.1 400 Bad Request\r\n\r\n{}"),
            None
        );
        assert_eq!(bare_parse_error(b"HTTP/1.1 404 Not Found\r\n\r\n"), None);
        assert_eq!(bare_parse_error(b"HTTP/1.1 400 Bad Req"), None);
    }

    #[test]
    fn each_replacement_is_a_whole_problem_answer() {
        for status in [400, 414, 431] {
            let answer = String::from_utf8(problem_for(status).unwrap()).unwrap();
            let (head, body) = answer.split_once("\r\n\r\n").unwrap();
            assert!(head.starts_with(&format!("HTTP/1.1 {status} ")), "{head}");
            assert!(head.contains("content-type: application/problem+json"));
            assert!(head.contains(&format!("content-length: {}", body.len())));
            let problem: serde_json::Value = serde_json::from_str(body).unwrap();
            assert_eq!(problem["status"], status);
            for field in ["type", "title", "detail"] {
                assert!(problem[field].as_str().is_some_and(|s| !s.is_empty()));
            }
        }
    }
}
