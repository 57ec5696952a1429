//! Accepting connections for every listener: admission by the [`Gate`], the TLS handshake
//! under its deadline, and serving HTTP/1.1 (EST, CRL/OCSP) with hyper. gRPC connections go
//! from [`accept`] to tonic, which serves HTTP/2 on them.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::Router;
use http::Request;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tower::ServiceExt;

use super::conn::{Conn, Gate, Io, Listener, TrackedBody};
use super::tls::{Protocol, TlsReloader};

/// How a listener's connections are secured.
#[derive(Clone)]
pub enum Security {
    /// Public data (CRL, OCSP, CA certificates, health): no TLS.
    Plain,
    /// TLS with the service's certificate and medid's client verifier.
    Tls(Arc<TlsReloader>, Protocol),
}

/// Accepts connections until `stop` turns true, admitting each through `gate` and completing
/// its TLS handshake (if any) concurrently, within the gate's greeting deadline. A connection
/// over a cap is closed at once; a failed or slow handshake is logged and dropped. The listening socket is closed as soon as
/// `stop` turns, so a leaving node refuses new connections at once.
pub fn accept(
    listener: TcpListener,
    gate: Arc<Gate>,
    security: Security,
    mut stop: watch::Receiver<bool>,
) -> ReceiverStream<Result<Conn, std::io::Error>> {
    let name = match &security {
        Security::Tls(_, Protocol::Grpc) => Listener::Grpc,
        Security::Tls(_, Protocol::Http1) => Listener::Est,
        Security::Tls(_, Protocol::Console) => Listener::Console,
        Security::Plain => Listener::Http,
    };
    // A handshake is the first thing a TLS client sends: it has the greeting's deadline.
    let handshake_timeout = gate.limits().header_timeout;
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(async move {
        let mut logged_full = false;
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = stop.wait_for(|s| *s) => break,
                () = tx.closed() => break,
            };
            let (tcp, peer) = match accepted {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let admission = match gate.admit(peer.ip(), name) {
                Ok(a) => {
                    logged_full = false;
                    a
                }
                Err(why) => {
                    // One line per run of refusals, not one per socket: a flood must not
                    // flood the log too. The counters keep the totals.
                    if !logged_full {
                        tracing::warn!(%peer, reason = ?why, open = gate.open(), "connection refused: over the connection cap");
                        logged_full = true;
                    }
                    drop(tcp);
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let tx = tx.clone();
            match &security {
                Security::Plain => {
                    let _ = tx
                        .send(Ok(Conn::new(Io::Plain(tcp), peer, admission)))
                        .await;
                }
                Security::Tls(tls, protocol) => {
                    let acceptor = TlsAcceptor::from(tls.current(*protocol));
                    tokio::spawn(async move {
                        let handshake =
                            tokio::time::timeout(handshake_timeout, acceptor.accept(tcp));
                        // Evicted while still shaking hands: give the place up at once.
                        let outcome = tokio::select! {
                            outcome = handshake => outcome,
                            () = admission.closed() => return,
                        };
                        match outcome {
                            Ok(Ok(stream)) => {
                                let io = Io::Tls(Box::new(stream));
                                let _ = tx.send(Ok(Conn::new(io, peer, admission))).await;
                            }
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed")
                            }
                            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                        }
                    });
                }
            }
        }
    });
    ReceiverStream::new(rx)
}

/// Serves HTTP/1.1 on the accepted connections with `app` until `stop` turns true, then lets
/// in-flight requests finish (the caller closes what remains at the end of its drain).
/// Each request carries its connection's [`super::conn::ConnInfo`] as an extension.
pub async fn serve_http1(
    mut conns: ReceiverStream<Result<Conn, std::io::Error>>,
    app: Router,
    header_timeout: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let conn = tokio::select! {
            next = conns.next() => match next {
                Some(Ok(conn)) => conn,
                Some(Err(_)) => continue,
                None => break,
            },
            _ = stop.wait_for(|s| *s) => break,
        };
        let info = conn.info().clone();
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut request: Request<_>| {
            request.extensions_mut().insert(info.clone());
            let guard = info.begin();
            let response = app.clone().oneshot(request.map(Body::new));
            async move {
                let response = response.await?;
                Ok::<_, std::convert::Infallible>(
                    response.map(|body| TrackedBody::new(body, guard)),
                )
            }
        });
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(header_timeout)
            .serve_connection(hyper_util::rt::TokioIo::new(conn), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "HTTP connection ended with an error");
            }
        });
    }
    graceful.shutdown().await;
}
