//! Connection hygiene for every listener (gRPC, EST, plain HTTP): who gets a socket, and for
//! how long it may sit there doing nothing.
//!
//! - **Admission** ([`Gate`]): one budget of open connections for all listeners, and a share of
//!   it per source address. Past the per-source cap a new connection is closed at once. At the
//!   overall cap the longest-idle connection with nothing in flight is closed to make room;
//!   if every connection is serving a request, the new one is closed instead. Connections
//!   being served are never disturbed.
//! - **Deadlines** ([`Conn`]): a connection must greet within `header_timeout` (HTTP/2: its
//!   24-byte preface; HTTP/1.1: a complete first request head), and is closed once it has had
//!   nothing in flight for `idle_timeout`. TLS handshakes have their own deadline
//!   (`api::tls`). A request in flight (including a long stream) keeps its connection.
//!
//! The deadlines are enforced inside the connection's own reads, so they cost no task or
//! timer wheel entry beyond one sleep per connection.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;

/// The HTTP/2 connection preface a client must send first (RFC 9113 §3.4).
const H2_PREFACE_LEN: u64 = 24;

/// Descriptors kept back from the connection budget for the database, files and logs.
pub const RESERVED_DESCRIPTORS: u64 = 128;
/// Connections asked to close that may still hold their socket: at the cap, a newcomer is
/// admitted by evicting another only while fewer than this many are on their way out, so
/// the descriptors in use stay under `max_connections + EVICTION_SLACK`.
pub const EVICTION_SLACK: usize = 64;

/// The limits every listener applies (docs/CONFIGURATION.md, "Connections").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// A connection that has not greeted by then is closed.
    pub header_timeout: Duration,
    /// A connection with nothing in flight for this long is closed.
    pub idle_timeout: Duration,
    /// Open connections over all listeners.
    pub max_connections: usize,
    /// Open connections from one source address over all listeners.
    pub max_per_source: usize,
}

/// The listener a connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Listener {
    /// gRPC over mTLS.
    Grpc,
    /// EST over HTTPS.
    Est,
    /// Plain HTTP: CRLs, OCSP, CA certificates, health, metrics.
    Http,
    /// The compliance console over HTTPS.
    Console,
}

impl Listener {
    pub const ALL: [Listener; 4] = [
        Listener::Grpc,
        Listener::Est,
        Listener::Http,
        Listener::Console,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Listener::Grpc => "grpc",
            Listener::Est => "est",
            Listener::Http => "http",
            Listener::Console => "console",
        }
    }

    fn wire(self) -> Wire {
        match self {
            Listener::Grpc => Wire::Http2,
            Listener::Est | Listener::Http | Listener::Console => Wire::Http1,
        }
    }
}

/// What a connection is expected to speak, which decides what counts as its greeting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wire {
    /// gRPC: greeted once the HTTP/2 preface has been read.
    Http2,
    /// EST, CRL/OCSP: greeted once a first request head has been read.
    Http1,
}

/// How one connection is doing; shared by its reads, its requests and the gate.
#[derive(Debug)]
pub struct Activity {
    opened: Instant,
    listener: Listener,
    bytes_in: AtomicU64,
    in_flight: AtomicUsize,
    requests: AtomicU64,
    /// Milliseconds after `opened` at which the last request ended.
    idle_since_ms: AtomicU64,
    closing: AtomicBool,
    close: Notify,
}

impl Activity {
    fn new(listener: Listener) -> Self {
        Self {
            opened: Instant::now(),
            listener,
            bytes_in: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            idle_since_ms: AtomicU64::new(0),
            closing: AtomicBool::new(false),
            close: Notify::new(),
        }
    }

    /// Marks a request as in flight until the returned guard is dropped.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    fn greeted(&self) -> bool {
        match self.listener.wire() {
            Wire::Http2 => self.bytes_in.load(Ordering::Relaxed) >= H2_PREFACE_LEN,
            Wire::Http1 => self.requests.load(Ordering::Relaxed) > 0,
        }
    }

    fn idle_since(&self) -> Instant {
        self.opened + Duration::from_millis(self.idle_since_ms.load(Ordering::Relaxed))
    }

    /// When this connection may next be closed, or None while a request is in flight.
    fn deadline(&self, limits: &ConnectionLimits) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            None
        } else if !self.greeted() {
            Some(self.opened + limits.header_timeout)
        } else {
            Some(self.idle_since() + limits.idle_timeout)
        }
    }

    /// Asks the connection to close (eviction, or the end of a shutdown drain).
    pub fn close(&self) {
        self.closing.store(true, Ordering::Release);
        self.close.notify_one();
    }

    /// Resolves when the connection must close: idle or unfinished greeting past its
    /// deadline, or asked to by [`Activity::close`].
    async fn until_closed(self: Arc<Self>, limits: ConnectionLimits) {
        loop {
            if self.closing.load(Ordering::Acquire) {
                return;
            }
            let deadline = self.deadline(&limits);
            if deadline.is_some_and(|d| d <= Instant::now()) {
                return;
            }
            // In flight: look again after a full idle period (the request's end resets it).
            let wake = deadline.unwrap_or_else(|| Instant::now() + limits.idle_timeout);
            tokio::select! {
                () = tokio::time::sleep_until(wake) => {}
                () = self.close.notified() => return,
            }
        }
    }
}

/// A request in flight on a connection; dropping it ends the request.
#[derive(Debug)]
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0;
        let ms = a.opened.elapsed().as_millis().min(u64::MAX as u128) as u64;
        a.idle_since_ms.store(ms, Ordering::Relaxed);
        a.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The source address already has `max_per_source` connections.
    SourceFull,
    /// Every connection is serving a request and the overall cap is reached.
    Full,
}

#[derive(Debug, Default)]
struct GateState {
    next_id: u64,
    per_source: HashMap<IpAddr, usize>,
    open: HashMap<u64, (IpAddr, Arc<Activity>)>,
}

/// The connection budget shared by every listener.
#[derive(Debug)]
pub struct Gate {
    limits: ConnectionLimits,
    state: Mutex<GateState>,
    refused: AtomicU64,
    evicted: AtomicU64,
}

impl Gate {
    pub fn new(limits: ConnectionLimits) -> Arc<Self> {
        Arc::new(Self {
            limits: ConnectionLimits {
                max_connections: limits.max_connections.max(1),
                max_per_source: limits.max_per_source.max(1),
                ..limits
            },
            state: Mutex::default(),
            refused: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
        })
    }

    pub fn limits(&self) -> ConnectionLimits {
        self.limits
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state
            .lock()
            .expect("connection gate lock is never poisoned")
    }

    /// Admits a connection from `source`, or says why not.
    pub fn admit(
        self: &Arc<Self>,
        source: IpAddr,
        listener: Listener,
    ) -> Result<Admission, Refusal> {
        let mut state = self.lock();
        let from_source = state.per_source.get(&source).copied().unwrap_or(0);
        if from_source >= self.limits.max_per_source {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Err(Refusal::SourceFull);
        }
        let open = state.open.len();
        let full = open >= self.limits.max_connections;
        if full && (open >= self.limits.max_connections + EVICTION_SLACK || !self.evict_one(&state))
        {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Err(Refusal::Full);
        }
        state.next_id += 1;
        let id = state.next_id;
        let activity = Arc::new(Activity::new(listener));
        state.open.insert(id, (source, activity.clone()));
        *state.per_source.entry(source).or_insert(0) += 1;
        Ok(Admission {
            gate: self.clone(),
            id,
            source,
            activity,
        })
    }

    /// Closes the connection that has been idle longest (one that never greeted first), if
    /// any has nothing in flight and is not already closing.
    fn evict_one(&self, state: &GateState) -> bool {
        let victim = state
            .open
            .values()
            .map(|(_, a)| a)
            .filter(|a| {
                a.in_flight.load(Ordering::Acquire) == 0 && !a.closing.load(Ordering::Acquire)
            })
            .min_by_key(|a| (a.greeted(), a.idle_since()));
        match victim {
            Some(a) => {
                a.close();
                self.evicted.fetch_add(1, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }

    /// Asks every open connection to close now (the end of a shutdown drain).
    pub fn close_all(&self) {
        for (_, a) in self.lock().open.values() {
            a.close();
        }
    }

    /// Open connections now.
    pub fn open(&self) -> usize {
        self.lock().open.len()
    }

    /// Open connections now, by the listener they came in on.
    pub fn open_by_listener(&self) -> [(Listener, usize); 4] {
        let mut counts = Listener::ALL.map(|l| (l, 0));
        for (_, activity) in self.lock().open.values() {
            if let Some(c) = counts.iter_mut().find(|(l, _)| *l == activity.listener) {
                c.1 += 1;
            }
        }
        counts
    }

    /// Connections refused and evicted since start.
    pub fn counters(&self) -> (u64, u64) {
        (
            self.refused.load(Ordering::Relaxed),
            self.evicted.load(Ordering::Relaxed),
        )
    }
}

/// A connection's place in the budget; released when dropped.
#[derive(Debug)]
pub struct Admission {
    gate: Arc<Gate>,
    id: u64,
    source: IpAddr,
    activity: Arc<Activity>,
}

impl Admission {
    /// Resolves when the gate asks this connection to close (eviction, end of a drain).
    pub async fn closed(&self) {
        loop {
            if self.activity.closing.load(Ordering::Acquire) {
                return;
            }
            self.activity.close.notified().await;
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut state = self.gate.lock();
        state.open.remove(&self.id);
        if let Some(n) = state.per_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                state.per_source.remove(&self.source);
            }
        }
    }
}

/// The byte stream under a connection: plain TCP (public HTTP) or TLS.
#[derive(Debug)]
pub enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Io {
    /// The client certificate the TLS handshake verified, if any (leaf first).
    fn peer_certificates(&self) -> Option<Arc<[rustls_pki_types::CertificateDer<'static>]>> {
        match self {
            Io::Plain(_) => None,
            Io::Tls(tls) => tls
                .get_ref()
                .1
                .peer_certificates()
                .filter(|certs| !certs.is_empty())
                .map(|certs| certs.iter().map(|c| c.clone().into_owned()).collect()),
        }
    }
}

macro_rules! delegate_io {
    ($self:ident, $inner:ident => $call:expr) => {
        match $self.get_mut() {
            Io::Plain($inner) => {
                let $inner = Pin::new($inner);
                $call
            }
            Io::Tls($inner) => {
                let $inner = Pin::new(&mut **$inner);
                $call
            }
        }
    };
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        delegate_io!(self, s => s.poll_read(cx, buf))
    }
}

impl AsyncWrite for Io {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        delegate_io!(self, s => s.poll_write(cx, b))
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate_io!(self, s => s.poll_flush(cx))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate_io!(self, s => s.poll_shutdown(cx))
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        delegate_io!(self, s => s.poll_write_vectored(cx, bufs))
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// What a request learns about the connection it came on (a request extension).
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The client's address.
    pub remote: SocketAddr,
    /// The verified client certificate chain (leaf first), if the client sent one.
    pub peer_certs: Option<Arc<[rustls_pki_types::CertificateDer<'static>]>>,
    activity: Arc<Activity>,
}

impl ConnInfo {
    /// The DER of the client's leaf certificate, if any.
    pub fn leaf(&self) -> Option<&[u8]> {
        self.peer_certs
            .as_ref()
            .and_then(|c| c.first())
            .map(|c| c.as_ref())
    }

    /// Marks a request as in flight on this connection until the guard is dropped.
    pub fn begin(&self) -> InFlight {
        self.activity.begin()
    }
}

/// An admitted connection: its stream, held to its deadlines.
pub struct Conn {
    io: Io,
    info: ConnInfo,
    until_closed: Pin<Box<dyn Future<Output = ()> + Send>>,
    closed: bool,
    _admission: Admission,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("remote", &self.info.remote)
            .finish_non_exhaustive()
    }
}

impl Conn {
    pub fn new(io: Io, remote: SocketAddr, admission: Admission) -> Self {
        let limits = admission.gate.limits;
        let activity = admission.activity.clone();
        let info = ConnInfo {
            remote,
            peer_certs: io.peer_certificates(),
            activity: activity.clone(),
        };
        Self {
            io,
            info,
            until_closed: Box::pin(activity.until_closed(limits)),
            closed: false,
            _admission: admission,
        }
    }

    pub fn info(&self) -> &ConnInfo {
        &self.info
    }

    /// Whether a deadline or the gate has closed this connection; registers for the wake-up.
    fn check(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.closed && self.until_closed.as_mut().poll(cx).is_ready() {
            self.closed = true;
        }
        self.closed
    }
}

fn closed_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "connection closed by medid (idle, no greeting in time, or evicted)",
    )
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.check(cx) {
            return Poll::Ready(Err(closed_error()));
        }
        let before = buf.filled().len();
        let result = Pin::new(&mut this.io).poll_read(cx, buf);
        let read = (buf.filled().len() - before) as u64;
        this.info
            .activity
            .bytes_in
            .fetch_add(read, Ordering::Relaxed);
        result
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.closed {
            return Poll::Ready(Err(closed_error()));
        }
        Pin::new(&mut this.io).poll_write(cx, b)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.closed {
            return Poll::Ready(Err(closed_error()));
        }
        Pin::new(&mut this.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = ConnInfo;
    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

/// Tower layer: each request marks its connection busy until its response body is done.
#[derive(Debug, Clone, Copy, Default)]
pub struct TrackRequests;

impl<S> tower::Layer<S> for TrackRequests {
    type Service = Tracked<S>;
    fn layer(&self, inner: S) -> Tracked<S> {
        Tracked(inner)
    }
}

/// See [`TrackRequests`].
#[derive(Debug, Clone)]
pub struct Tracked<S>(S);

impl<S, B, RB> tower::Service<http::Request<B>> for Tracked<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<TrackedBody<RB>>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let guard = request.extensions().get::<ConnInfo>().map(ConnInfo::begin);
        let response = self.0.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| TrackedBody { body, guard }))
        })
    }
}

/// A response body that keeps its request in flight until it is finished or dropped.
#[derive(Debug)]
pub struct TrackedBody<B> {
    body: B,
    guard: Option<InFlight>,
}

impl<B> TrackedBody<B> {
    pub fn new(body: B, guard: InFlight) -> Self {
        Self {
            body,
            guard: Some(guard),
        }
    }
}

impl<B> http_body::Body for TrackedBody<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let frame = Pin::new(&mut this.body).poll_frame(cx);
        if let Poll::Ready(None) = frame {
            this.guard = None;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Raises the soft limit on open descriptors to the hard limit, and returns the soft limit in
/// force afterwards (None where it cannot be read).
pub fn raise_descriptor_limit() -> Option<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    let before = limit.current;
    if limit.current < limit.maximum {
        limit.current = limit.maximum;
        match setrlimit(Resource::Nofile, limit) {
            Ok(()) => tracing::info!(
                from = before.unwrap_or(u64::MAX),
                to = limit.maximum.unwrap_or(u64::MAX),
                "raised the open-file limit (RLIMIT_NOFILE) to its hard limit"
            ),
            Err(e) => tracing::warn!(error = %e, "could not raise the open-file limit"),
        }
    }
    getrlimit(Resource::Nofile).current
}

/// `configured` connections, reduced to what `descriptors` leaves after the reserve.
pub fn connection_budget(configured: usize, descriptors: Option<u64>) -> usize {
    match descriptors {
        Some(n) => {
            let room = n
                .saturating_sub(RESERVED_DESCRIPTORS + EVICTION_SLACK as u64)
                .max(16);
            configured.min(usize::try_from(room).unwrap_or(usize::MAX))
        }
        None => configured,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max: usize, per_source: usize) -> ConnectionLimits {
        ConnectionLimits {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: max,
            max_per_source: per_source,
        }
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn a_source_past_its_share_is_refused_while_others_are_admitted() {
        let gate = Gate::new(limits(10, 2));
        let _a = gate.admit(ip(2), Listener::Grpc).unwrap();
        let b = gate.admit(ip(2), Listener::Grpc).unwrap();
        assert_eq!(
            gate.admit(ip(2), Listener::Grpc).unwrap_err(),
            Refusal::SourceFull
        );
        assert!(gate.admit(ip(3), Listener::Grpc).is_ok());
        drop(b);
        assert!(gate.admit(ip(2), Listener::Grpc).is_ok());
    }

    #[test]
    fn at_the_cap_the_longest_idle_connection_makes_room_and_busy_ones_are_kept() {
        let gate = Gate::new(limits(2, 10));
        let busy = gate.admit(ip(2), Listener::Http).unwrap();
        let _request = busy.activity.begin();
        let idle = gate.admit(ip(3), Listener::Http).unwrap();
        let newcomer = gate.admit(ip(4), Listener::Http).unwrap();
        assert!(idle.activity.closing.load(Ordering::Acquire));
        assert!(!busy.activity.closing.load(Ordering::Acquire));
        // Both remaining are now busy or closing: the next one is refused.
        let _r = newcomer.activity.begin();
        assert_eq!(
            gate.admit(ip(5), Listener::Http).unwrap_err(),
            Refusal::Full
        );
        assert_eq!(gate.counters(), (1, 1));
    }

    #[test]
    fn deadlines_follow_the_greeting_and_the_last_request() {
        let l = limits(10, 10);
        let a = Arc::new(Activity::new(Listener::Grpc));
        assert_eq!(a.deadline(&l), Some(a.opened + l.header_timeout));
        a.bytes_in.store(H2_PREFACE_LEN, Ordering::Relaxed);
        assert_eq!(a.deadline(&l), Some(a.opened + l.idle_timeout));
        let r = a.begin();
        assert_eq!(a.deadline(&l), None);
        drop(r);
        assert!(a.deadline(&l).unwrap() >= a.opened + l.idle_timeout);
        let h1 = Arc::new(Activity::new(Listener::Http));
        h1.bytes_in.store(1000, Ordering::Relaxed);
        assert_eq!(h1.deadline(&l), Some(h1.opened + l.header_timeout));
    }

    #[test]
    fn the_budget_leaves_room_for_the_database_and_files() {
        assert_eq!(connection_budget(4096, Some(1024)), 832);
        assert_eq!(connection_budget(100, Some(1024)), 100);
        assert_eq!(connection_budget(100, None), 100);
        assert_eq!(connection_budget(4096, Some(10)), 16);
    }
}
