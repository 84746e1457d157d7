//! The accept loop behind both ports: every connection is served by hyper's HTTP/1 state machine
//! under a watch of our own that closes slow request heads and idle keep-alive connections, and
//! each port holds at most a fixed number of connections, sized so the file descriptors the rest
//! of the base needs stay free however many clients connect.
//!
//! A connection is in one of three phases ([`Phase`]): reading a request head (bounded by the
//! header-read timeout, from the accept or from the head's first byte), busy with a request (from
//! its head to the end of its response body: the module's request timeout bounds its body and
//! its answer, the operations API's minimum upload rate an upload), or idle between requests
//! (bounded by the idle timeout). In any phase, a write the client does not read for the idle
//! timeout closes the connection (a client that never reads its answer). hyper's own
//! `header_read_timeout` is not used: it runs while a keep-alive connection waits for its next
//! request too, so it cannot tell a slow head from an idle connection.
//!
//! At stop a port accepts nothing more, ends its event streams (`text/event-stream` responses,
//! which never end on their own), lets the requests in flight finish for up to the drain timeout
//! and then closes whatever is still open, so stopping always ends.
//!
//! At the cap a port stops accepting: the connection in hand waits until an idle connection
//! (keep-alive, or never sent a byte) is closed for it, the oldest first, or until one ends; the
//! next ones wait in the kernel's listen queue.

use std::{
    collections::HashMap,
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    pin::{Pin, pin},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::{Router, extract::ConnectInfo};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{Notify, OwnedSemaphorePermit, Semaphore, watch},
    time::Instant,
};

use crate::accounting::{ConnectionCounters, Port};

/// How one port treats its connections.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Hygiene {
    /// The whole request head must arrive within this, from the accept (a connection's first
    /// request) or from the head's first byte (the next ones).
    pub(crate) header_read_timeout: Duration,
    /// A keep-alive connection with no request for this long is closed.
    pub(crate) idle_timeout: Duration,
    /// Connections held open at most; at the cap the port stops accepting.
    pub(crate) max_connections: usize,
    /// At stop, how long the requests in flight have to finish before their connections are
    /// closed.
    pub(crate) drain_timeout: Duration,
}

/// How many connections each port may hold, from the process's open-file limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Budget {
    pub(crate) traffic: usize,
    pub(crate) operations: usize,
    /// Descriptors left for everything else: module instances (an eventfd and an epoll each),
    /// `dlopen`, log files, redb, the listeners themselves.
    pub(crate) reserve: u64,
}

impl Budget {
    /// A tenth of the limit but at least 1024 (and at most half) stays in reserve; the operations
    /// port gets 256 (at most an eighth); the traffic port the rest.
    pub(crate) fn from_open_file_limit(limit: u64) -> Self {
        let reserve = (limit / 10).max(1024).min(limit / 2);
        let operations = 256.min(limit / 8);
        let traffic = limit.saturating_sub(reserve + operations).max(16);
        Self { traffic: traffic as usize, operations: operations as usize, reserve }
    }

    /// The budget of this process (whose soft limit [`Base::new`](crate::Base::new) raised).
    pub(crate) fn of_this_process() -> Self {
        let limit = rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft);
        Self::from_open_file_limit(limit)
    }
}

/// Serves `app` on `listener` until `stop` ends; then accepts nothing more, lets every
/// connection finish its request in flight (idle ones close at once, event streams end) for up
/// to the drain timeout, closes those still open and returns once all are closed, like
/// `axum::serve(..).with_graceful_shutdown(stop)` with a deadline.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    port: Port,
    hygiene: Hygiene,
    counters: Arc<ConnectionCounters>,
    stop: impl Future<Output = ()>,
) {
    let mut stop = pin!(stop);
    // Waiting for every slot takes one `u32` count: a larger cap could never be waited for whole.
    let cap = u32::try_from(hygiene.max_connections).unwrap_or(u32::MAX).max(1);
    let slots = Arc::new(Semaphore::new(cap as usize));
    let table = Arc::new(Table::default());
    let (shutdown, shutdown_rx) = watch::channel(Stop::Serving);
    tokio::spawn(report(port, cap as usize, Arc::clone(&counters), shutdown_rx.clone()));
    let mut backoff = AcceptBackoff::default();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut stop => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) if is_about_one_connection(&e) => continue,
            Err(e) => {
                counters.accept_errors.fetch_add(1, Relaxed);
                let pause = backoff.failed(port, &e);
                tokio::select! {
                    () = tokio::time::sleep(pause) => continue,
                    () = &mut stop => break,
                }
            }
        };
        backoff.succeeded();
        let permit = match Arc::clone(&slots).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => match at_capacity(&slots, &table, &counters, &mut stop).await {
                Some(permit) => permit,
                None => break,
            },
        };
        let connection = Connection {
            watch: table.insert(),
            table: Arc::clone(&table),
            counters: Arc::clone(&counters),
            _permit: permit,
        };
        counters.accepted.fetch_add(1, Relaxed);
        counters.open.fetch_add(1, Relaxed);
        tokio::spawn(connection.serve(stream, peer, app.clone(), hygiene, shutdown_rx.clone()));
    }
    drop(listener);
    let _ = shutdown.send(Stop::Draining);
    // Every connection holds a slot until it closes: all slots back means all closed.
    let drained = tokio::time::timeout(hygiene.drain_timeout, slots.acquire_many(cap)).await;
    if drained.is_err() {
        tracing::warn!(
            port = port.label(),
            open = counters.open.load(Relaxed),
            "closing the connections still open after the drain timeout of {:?}",
            hygiene.drain_timeout
        );
        let _ = shutdown.send(Stop::Closing);
        let _ = slots.acquire_many(cap).await;
    }
}

/// Where a port is in stopping, as its connections see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Serving,
    /// Accepting nothing more: finish the request in flight, end event streams, then close.
    Draining,
    /// The drain timeout is over: close now.
    Closing,
}

/// Idle connections closed at once when a port is at its cap, so the next few accepts find a
/// slot without scanning the table again.
const RECLAIM_BATCH: usize = 16;

/// At the cap, with a connection in hand: closes the oldest idle connections for it, or waits
/// for one to end; `None` if the port stops meanwhile.
async fn at_capacity(
    slots: &Arc<Semaphore>,
    table: &Table,
    counters: &ConnectionCounters,
    stop: &mut Pin<&mut impl Future<Output = ()>>,
) -> Option<OwnedSemaphorePermit> {
    let mut paused = false;
    loop {
        if table.reclaim_oldest_idle(RECLAIM_BATCH) == 0 && !paused {
            paused = true;
            counters.paused.fetch_add(1, Relaxed);
        }
        // Rescanned now and then: a busy connection may have gone idle, a reclaimed one may
        // have started a request just before it was told to close.
        tokio::select! {
            permit = Arc::clone(slots).acquire_owned() => return permit.ok(),
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
            () = stop.as_mut() => return None,
        }
    }
}

/// One accepted connection's share of its port: its watch in the table, its slot, its count.
struct Connection {
    watch: Arc<Watch>,
    table: Arc<Table>,
    counters: Arc<ConnectionCounters>,
    _permit: OwnedSemaphorePermit,
}

impl Connection {
    async fn serve(
        self,
        stream: TcpStream,
        peer: SocketAddr,
        app: Router,
        hygiene: Hygiene,
        mut shutdown: watch::Receiver<Stop>,
    ) {
        let _ = stream.set_nodelay(true);
        let watch = Arc::clone(&self.watch);
        let io = TokioIo::new(WatchedIo::new(stream, Arc::clone(&watch)));
        let stopping = shutdown.clone();
        let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let busy = Busy::start(Arc::clone(&watch));
            let mut request = request.map(axum::body::Body::new);
            request.extensions_mut().insert(ConnectInfo(peer));
            let response = tower_service::Service::call(&mut app.clone(), request);
            let mut stopping = stopping.clone();
            async move {
                let response = response.await.unwrap_or_else(|never| match never {});
                let ends_at_stop = is_event_stream(&response).then(|| {
                    let stopped: Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(async move {
                        let _ = stopping.wait_for(|stop| *stop != Stop::Serving).await;
                    });
                    stopped
                });
                Ok::<_, Infallible>(response.map(|body| BusyBody { body, ends_at_stop, _busy: busy }))
            }
        });
        let mut connection = pin!(
            hyper::server::conn::http1::Builder::new()
                .header_read_timeout(None)
                .serve_connection(io, service)
        );
        let mut timer = pin!(tokio::time::sleep(hygiene.idle_timeout));
        let mut draining = false;
        match *shutdown.borrow_and_update() {
            Stop::Serving => {}
            Stop::Draining => {
                draining = true;
                connection.as_mut().graceful_shutdown();
            }
            Stop::Closing => return,
        }
        loop {
            let deadline = self.watch.deadline(&hygiene);
            if let Some((at, _)) = deadline {
                timer.as_mut().reset(at);
            }
            tokio::select! {
                served = connection.as_mut() => {
                    if let Err(e) = served {
                        tracing::debug!(%peer, "connection ended: {e}");
                    }
                    break;
                }
                () = timer.as_mut(), if deadline.is_some() => {
                    match self.watch.deadline(&hygiene) {
                        Some((at, TimedOut::Header)) if at <= Instant::now() => {
                            self.counters.header_timeouts.fetch_add(1, Relaxed);
                            tracing::debug!(%peer, "closed: no complete request head within {:?}", hygiene.header_read_timeout);
                            break;
                        }
                        Some((at, TimedOut::Idle)) if at <= Instant::now() => {
                            self.counters.idle_timeouts.fetch_add(1, Relaxed);
                            break;
                        }
                        Some((at, TimedOut::Write)) if at <= Instant::now() => {
                            self.counters.write_timeouts.fetch_add(1, Relaxed);
                            tracing::debug!(%peer, "closed: the client read nothing for {:?}", hygiene.idle_timeout);
                            break;
                        }
                        _ => {}
                    }
                }
                () = self.watch.changed.notified() => {
                    if self.watch.reclaim_requested.swap(false, Relaxed) && self.watch.reclaimable_since().is_some() {
                        self.counters.reclaimed.fetch_add(1, Relaxed);
                        break;
                    }
                }
                changed = shutdown.changed() => {
                    // A dropped sender means the accept loop is gone: close.
                    match changed.map(|()| *shutdown.borrow_and_update()) {
                        Ok(Stop::Serving) => {}
                        Ok(Stop::Draining) => {
                            if !draining {
                                draining = true;
                                connection.as_mut().graceful_shutdown();
                            }
                        }
                        Ok(Stop::Closing) | Err(_) => break,
                    }
                }
            }
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.table.remove(&self.watch);
        self.counters.open.fetch_sub(1, Relaxed);
    }
}

/// Where a connection is between its requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for a request head: `since` the accept for a connection's first request
    /// (`started` is false until its first byte), since the head's first byte for the next ones.
    Head { since: Instant, started: bool },
    /// A request in flight, from its head to the end of its response body.
    Busy { requests: u32 },
    /// Between requests on a keep-alive connection, `since` the last response ended.
    Idle { since: Instant },
}

/// Which timeout closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TimedOut {
    Header,
    Idle,
    /// A write waited for the client to read for the idle timeout.
    Write,
}

impl Phase {
    /// When the connection is closed unless something happens first, and why.
    fn deadline(self, hygiene: &Hygiene) -> Option<(Instant, TimedOut)> {
        match self {
            Phase::Head { since, .. } => Some((since + hygiene.header_read_timeout, TimedOut::Header)),
            Phase::Idle { since } => Some((since + hygiene.idle_timeout, TimedOut::Idle)),
            Phase::Busy { .. } => None,
        }
    }

    /// Bytes were read from the client.
    fn read(self, now: Instant) -> Self {
        match self {
            Phase::Idle { .. } => Phase::Head { since: now, started: true },
            Phase::Head { since, .. } => Phase::Head { since, started: true },
            busy @ Phase::Busy { .. } => busy,
        }
    }

    /// hyper parsed a request head and called the service.
    fn request_started(self) -> Self {
        match self {
            Phase::Busy { requests } => Phase::Busy { requests: requests + 1 },
            Phase::Head { .. } | Phase::Idle { .. } => Phase::Busy { requests: 1 },
        }
    }

    /// A response body ended (or the request was abandoned).
    fn request_ended(self, now: Instant) -> Self {
        match self {
            Phase::Busy { requests } if requests > 1 => Phase::Busy { requests: requests - 1 },
            Phase::Busy { .. } => Phase::Idle { since: now },
            other => other,
        }
    }

    /// Since when a connection may be closed to make room at the cap: it has no request in
    /// flight and no request head begun (closing it loses nothing a client would not retry).
    fn reclaimable_since(self) -> Option<Instant> {
        match self {
            Phase::Idle { since } | Phase::Head { since, started: false } => Some(since),
            Phase::Head { started: true, .. } | Phase::Busy { .. } => None,
        }
    }
}

/// One connection's phase, shared by its I/O (bytes read), its service (requests) and the
/// port's table (reclaiming at the cap).
#[derive(Debug)]
struct Watch {
    id: u64,
    phase: Mutex<Phase>,
    /// Rings when the deadline may have moved earlier or a reclaim was requested.
    changed: Notify,
    reclaim_requested: AtomicBool,
    /// A response body ended and hyper has not flushed the socket since: bytes it writes now
    /// may be that response's last ones.
    response_unflushed: AtomicBool,
    /// Since when a write has been waiting for the client to read, if one is.
    write_stalled_since: Mutex<Option<Instant>>,
}

/// The earlier of two deadlines.
fn earliest(a: Option<(Instant, TimedOut)>, b: Option<(Instant, TimedOut)>) -> Option<(Instant, TimedOut)> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if b.0 < a.0 { b } else { a }),
        (a, b) => a.or(b),
    }
}

impl Watch {
    fn phase(&self) -> Phase {
        *self.phase.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn update(&self, change: impl FnOnce(Phase) -> Phase) -> (Phase, Phase) {
        let mut phase = self.phase.lock().unwrap_or_else(PoisonError::into_inner);
        let before = *phase;
        *phase = change(before);
        (before, *phase)
    }

    /// The phase's deadline, or a stalled write's if that comes first.
    fn deadline(&self, hygiene: &Hygiene) -> Option<(Instant, TimedOut)> {
        let stalled = *self.write_stalled_since.lock().unwrap_or_else(PoisonError::into_inner);
        earliest(
            self.phase().deadline(hygiene),
            stalled.map(|since| (since + hygiene.idle_timeout, TimedOut::Write)),
        )
    }

    /// A write to the socket could not proceed (the client's receive window is full).
    fn write_stalled(&self) {
        let mut since = self.write_stalled_since.lock().unwrap_or_else(PoisonError::into_inner);
        if since.is_none() {
            *since = Some(Instant::now());
            drop(since);
            self.changed.notify_one();
        }
    }

    /// A write to the socket went through.
    fn write_progressed(&self) {
        *self.write_stalled_since.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// Notes whether a write to the socket went through or has to wait.
    fn writing<T>(&self, polled: Poll<T>) -> Poll<T> {
        if polled.is_pending() {
            self.write_stalled();
        } else {
            self.write_progressed();
        }
        polled
    }

    fn reclaimable_since(&self) -> Option<Instant> {
        self.phase().reclaimable_since()
    }

    fn bytes_read(&self) {
        let (before, after) = self.update(|phase| phase.read(Instant::now()));
        if before != after && matches!(before, Phase::Idle { .. }) {
            self.changed.notify_one();
        }
    }
}

/// A request in flight on a connection; ends when dropped (with the response body, or with the
/// service's future if the connection closes first).
struct Busy(Arc<Watch>);

impl Busy {
    fn start(watch: Arc<Watch>) -> Self {
        // No notification: the deadline only goes away, and the watch finds that out when the
        // timer it had set fires.
        watch.update(Phase::request_started);
        Self(watch)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        // Before the phase changes, so the bytes hyper still has to write are never taken for
        // an answer of its own.
        self.0.response_unflushed.store(true, Relaxed);
        self.0.update(|phase| phase.request_ended(Instant::now()));
        self.0.changed.notify_one();
    }
}

/// A response body that keeps its request [`Busy`] until hyper is done with it; an event stream
/// ends when its port stops.
struct BusyBody {
    body: axum::body::Body,
    ends_at_stop: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    _busy: Busy,
}

/// A response that streams server-sent events (a log follow): it ends only when its client goes.
fn is_event_stream(response: &axum::response::Response) -> bool {
    response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"text/event-stream"))
}

impl http_body::Body for BusyBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        if let Some(stopped) = &mut self.ends_at_stop
            && stopped.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(None);
        }
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// The socket, telling the watch when bytes arrive, and putting a JSON body into the answers
/// hyper writes on its own (`400`, `414`, `431` for a head it refused, with an empty body).
struct WatchedIo {
    inner: TcpStream,
    watch: Arc<Watch>,
    /// Our answer in place of hyper's, and how much of it is written.
    own_answer: Option<(Vec<u8>, usize)>,
}

impl WatchedIo {
    fn new(inner: TcpStream, watch: Arc<Watch>) -> Self {
        Self { inner, watch, own_answer: None }
    }

    /// Whether bytes hyper writes now are an answer of its own: no request was handed to the
    /// service since the last response was flushed, so they cannot belong to a response.
    fn swallows(&mut self, first: &[u8]) -> bool {
        if self.own_answer.is_none()
            && !matches!(self.watch.phase(), Phase::Busy { .. })
            && !self.watch.response_unflushed.load(Relaxed)
        {
            self.own_answer = json_answer_for(first).map(|answer| (answer, 0));
        }
        self.own_answer.is_some()
    }

    /// Writes what is left of our answer.
    fn poll_own_answer(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while let Some((answer, written)) = &mut self.own_answer
            && *written < answer.len()
        {
            let polled = Pin::new(&mut self.inner).poll_write(cx, &answer[*written..]);
            match std::task::ready!(self.watch.writing(polled))? {
                0 => return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into())),
                n => *written += n,
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// Our JSON answer in place of the empty-bodied one hyper starts writing with `head`, for the
/// statuses hyper answers a refused request head with.
fn json_answer_for(head: &[u8]) -> Option<Vec<u8>> {
    let status_line = head.split(|b| *b == b'\r').next()?;
    if !status_line.starts_with(b"HTTP/1.") {
        return None;
    }
    let error = match status_line.get(9..13)? {
        b"431 " => crate::error::Error::RequestHeadTooLarge {
            max_headers: MAX_HEADERS,
            max_head_bytes: MAX_HEAD_BYTES,
        },
        b"414 " => crate::error::Error::UriTooLong,
        b"400 " => crate::error::Error::MalformedRequest,
        _ => return None,
    };
    let body = error.to_json().to_string();
    let mut answer = status_line.to_vec();
    answer.extend_from_slice(
        format!(
            "\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    Some(answer)
}

/// hyper's limits on a request head, which the base keeps (reported in `HEADERS_TOO_LARGE`).
const MAX_HEADERS: usize = 100;
const MAX_HEAD_BYTES: usize = 8192 + 4096 * 100;

impl AsyncRead for WatchedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.watch.bytes_read();
        }
        polled
    }
}

impl AsyncWrite for WatchedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.swallows(buf) {
            return Poll::Ready(Ok(buf.len()));
        }
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch.writing(polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let first = bufs.iter().find(|buf| !buf.is_empty()).map_or(&[][..], |buf| &buf[..]);
        if self.swallows(first) {
            return Poll::Ready(Ok(bufs.iter().map(|buf| buf.len()).sum()));
        }
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch.writing(polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        std::task::ready!(self.poll_own_answer(cx))?;
        std::task::ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
        // hyper flushes its socket once its buffer is written out: a response whose body ended
        // is now wholly written.
        self.watch.response_unflushed.store(false, Relaxed);
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        std::task::ready!(self.poll_own_answer(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The open connections of one port, to find idle ones at the cap.
#[derive(Debug, Default)]
struct Table {
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, Arc<Watch>>>,
}

impl Table {
    fn insert(&self) -> Arc<Watch> {
        let id = self.next_id.fetch_add(1, Relaxed);
        let watch = Arc::new(Watch {
            id,
            phase: Mutex::new(Phase::Head { since: Instant::now(), started: false }),
            changed: Notify::new(),
            reclaim_requested: AtomicBool::new(false),
            response_unflushed: AtomicBool::new(false),
            write_stalled_since: Mutex::new(None),
        });
        self.lock().insert(id, Arc::clone(&watch));
        watch
    }

    fn remove(&self, watch: &Watch) {
        self.lock().remove(&watch.id);
    }

    /// Asks up to `count` of the longest-idle connections to close; how many were asked.
    fn reclaim_oldest_idle(&self, count: usize) -> usize {
        let mut idle: Vec<(Instant, Arc<Watch>)> = self
            .lock()
            .values()
            .filter_map(|watch| Some((watch.reclaimable_since()?, Arc::clone(watch))))
            .collect();
        if idle.len() > count {
            idle.select_nth_unstable_by_key(count, |(since, _)| *since);
            idle.truncate(count);
        }
        for (_, watch) in &idle {
            watch.reclaim_requested.store(true, Relaxed);
            watch.changed.notify_one();
        }
        idle.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Watch>>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Errors that concern the one connection being accepted (it was reset before `accept`
/// returned): the next `accept` may well succeed.
fn is_about_one_connection(error: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    matches!(error.kind(), ConnectionAborted | ConnectionRefused | ConnectionReset)
}

/// The pause after a failed `accept` (out of file descriptors, typically, which retrying at
/// once would only spin on): doubling from 10 ms to a second, logged once per ten seconds.
#[derive(Debug, Default)]
struct AcceptBackoff {
    pause: Duration,
    failures: u64,
    logged: Option<Instant>,
}

impl AcceptBackoff {
    const FIRST: Duration = Duration::from_millis(10);
    const LONGEST: Duration = Duration::from_secs(1);

    fn failed(&mut self, port: Port, error: &std::io::Error) -> Duration {
        self.pause = (self.pause * 2).clamp(Self::FIRST, Self::LONGEST);
        self.failures += 1;
        if self.logged.is_none_or(|at| at.elapsed() >= REPORT_EVERY) {
            tracing::error!(
                port = port.label(),
                failures = self.failures,
                "cannot accept connections: {error}; retrying in up to {:?}",
                Self::LONGEST
            );
            self.logged = Some(Instant::now());
            self.failures = 0;
        }
        self.pause
    }

    fn succeeded(&mut self) {
        self.pause = Duration::ZERO;
    }
}

/// How often, at most, a port logs what its connection limits did.
const REPORT_EVERY: Duration = Duration::from_secs(10);

/// Logs a port's slow heads, reclaims and pauses: at most once per [`REPORT_EVERY`], within a
/// second of the first one after a quiet period. Idle timeouts are routine and only counted.
async fn report(
    port: Port,
    cap: usize,
    counters: Arc<ConnectionCounters>,
    mut shutdown: watch::Receiver<Stop>,
) {
    let snapshot = |c: &ConnectionCounters| {
        [c.header_timeouts.load(Relaxed), c.reclaimed.load(Relaxed), c.paused.load(Relaxed)]
    };
    let mut reported = snapshot(&counters);
    let mut last: Option<Instant> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let now = snapshot(&counters);
        if now == reported || last.is_some_and(|at| at.elapsed() < REPORT_EVERY) {
            continue;
        }
        let [slow_heads, reclaimed, paused] = [0, 1, 2].map(|i| now[i] - reported[i]);
        let what = [
            (slow_heads, "closed for a slow request head".to_owned()),
            (reclaimed, format!("idle, closed to make room at the cap of {cap}")),
            (paused, format!("time(s) at the cap of {cap} with nothing idle to close: accepting paused")),
        ];
        let what: Vec<String> =
            what.iter().filter(|(n, _)| *n > 0).map(|(n, what)| format!("{n} {what}")).collect();
        tracing::warn!(
            port = port.label(),
            slow_heads,
            reclaimed,
            paused,
            open = counters.open.load(Relaxed),
            "connection limits at work on the {} port: {}",
            port.label(),
            what.join("; ")
        );
        reported = now;
        last = Some(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hygiene() -> Hygiene {
        Hygiene {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 100,
            drain_timeout: Duration::from_secs(60),
        }
    }

    /// Serves `app` on a loopback port in this runtime; the address and the stop switch.
    async fn serving(app: Router) -> (SocketAddr, watch::Sender<bool>, tokio::task::JoinHandle<()>) {
        serving_with(app, hygiene()).await
    }

    async fn serving_with(
        app: Router,
        hygiene: Hygiene,
    ) -> (SocketAddr, watch::Sender<bool>, tokio::task::JoinHandle<()>) {
        serving_counted(app, hygiene, Arc::default()).await
    }

    async fn serving_counted(
        app: Router,
        hygiene: Hygiene,
        counters: Arc<ConnectionCounters>,
    ) -> (SocketAddr, watch::Sender<bool>, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, mut stopped) = watch::channel(false);
        let stop_when = async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        };
        let server = tokio::spawn(serve(listener, app, Port::Traffic, hygiene, counters, stop_when));
        (addr, stop, server)
    }

    /// One `Connection: close` request from a blocking client: its local address and the answer.
    async fn get(addr: SocketAddr, path: &'static str) -> (SocketAddr, String) {
        tokio::task::spawn_blocking(move || {
            use std::io::{Read, Write};
            let mut stream = std::net::TcpStream::connect(addr).unwrap();
            write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
            let mut answer = String::new();
            stream.read_to_string(&mut answer).unwrap();
            (stream.local_addr().unwrap(), answer)
        })
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn every_request_carries_its_clients_address() {
        let app = Router::new().route(
            "/",
            axum::routing::get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.to_string() }),
        );
        let (addr, stop, server) = serving(app).await;
        let (client, answer) = get(addr, "/").await;
        assert!(answer.starts_with("HTTP/1.1 200 ") && answer.ends_with(&client.to_string()), "{answer}");
        stop.send(true).unwrap();
        server.await.unwrap();
    }

    /// A `/slow` route whose one request says when it started and answers `finished` once
    /// released.
    fn slow_route() -> (Router, tokio::sync::oneshot::Receiver<()>, tokio::sync::oneshot::Sender<()>) {
        let (started_tx, started) = tokio::sync::oneshot::channel::<()>();
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let handoff = Arc::new(Mutex::new(Some((started_tx, released))));
        let app = Router::new().route(
            "/slow",
            axum::routing::get(move || {
                let handoff = handoff.lock().unwrap().take();
                async move {
                    let (started, released) = handoff.unwrap();
                    let _ = started.send(());
                    let _ = released.await;
                    "finished"
                }
            }),
        );
        (app, started, release)
    }

    #[tokio::test]
    async fn stopping_lets_the_request_in_flight_finish() {
        let (app, started, release) = slow_route();
        let (addr, stop, server) = serving(app).await;
        let request = tokio::spawn(get(addr, "/slow"));
        started.await.unwrap();
        stop.send(true).unwrap();
        // `serve` waits for the request in flight.
        tokio::task::yield_now().await;
        assert!(!server.is_finished());
        release.send(()).unwrap();
        let (_, answer) = request.await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200 ") && answer.ends_with("finished"), "{answer}");
        server.await.unwrap();
    }

    /// A route whose handler never answers, and one whose response never ends.
    fn never_ending(content_type: &'static str) -> Router {
        let forever = move || async move {
            let chunks = futures_util::stream::unfold((), |()| async {
                tokio::time::sleep(Duration::from_millis(10)).await;
                Some((Ok::<_, Infallible>(bytes::Bytes::from(vec![b'x'; 64 * 1024])), ()))
            });
            ([(http::header::CONTENT_TYPE, content_type)], axum::body::Body::from_stream(chunks))
        };
        Router::new()
            .route("/hang", axum::routing::get(std::future::pending::<&'static str>))
            .route("/forever", axum::routing::get(forever))
    }

    /// Connects and sends `GET path` without reading anything back.
    /// (Blocking, but on loopback the kernel completes the connect and takes the few bytes
    /// without the accept loop.)
    async fn request_unread(addr: SocketAddr, path: &str) -> std::net::TcpStream {
        use std::io::Write;
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        stream
    }

    #[tokio::test]
    async fn stopping_waits_for_every_connection_however_large_the_cap() {
        let (app, started, release) = slow_route();
        // A cap that does not fit the `u32` count of permits waited for at stop.
        let huge = Hygiene { max_connections: u32::MAX as usize + 2, ..hygiene() };
        let (addr, stop, server) = serving_with(app, huge).await;
        let request = tokio::spawn(get(addr, "/slow"));
        started.await.unwrap();
        stop.send(true).unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!server.is_finished(), "serve returned with a request in flight");
        release.send(()).unwrap();
        let (_, answer) = request.await.unwrap();
        assert!(answer.ends_with("finished"), "{answer}");
        server.await.unwrap();
    }

    #[tokio::test]
    async fn stopping_closes_what_the_drain_timeout_leaves_open() {
        let short = Hygiene { drain_timeout: Duration::from_millis(200), ..hygiene() };
        let (addr, stop, server) = serving_with(never_ending("text/plain"), short).await;
        let _hanging = request_unread(addr, "/hang").await;
        let _streaming = request_unread(addr, "/forever").await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(30), server)
            .await
            .expect("serve returns once the drain timeout is over")
            .unwrap();
    }

    #[tokio::test]
    async fn an_event_stream_ends_at_stop() {
        let (addr, stop, server) = serving(never_ending("text/event-stream")).await;
        let follow = tokio::task::spawn_blocking(move || {
            use std::io::{Read, Write};
            let mut stream = std::net::TcpStream::connect(addr).unwrap();
            write!(stream, "GET /forever HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            // Read until the base ends the stream (the drain timeout is a minute).
            let mut sink = Vec::new();
            stream.read_to_end(&mut sink).map(|_| sink.len())
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(30), server).await.expect("serve returns").unwrap();
        assert!(follow.await.unwrap().unwrap() > 0);
    }

    #[tokio::test]
    async fn a_client_that_reads_nothing_of_its_answer_is_closed_after_the_idle_timeout() {
        let quick = Hygiene { idle_timeout: Duration::from_millis(300), ..hygiene() };
        let counters = Arc::<ConnectionCounters>::default();
        let (addr, stop, server) =
            serving_counted(never_ending("text/plain"), quick, Arc::clone(&counters)).await;
        let _unread = request_unread(addr, "/forever").await;
        let closed = async {
            while counters.write_timeouts.load(Relaxed) == 0 || counters.open.load(Relaxed) > 0 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(30), closed)
            .await
            .expect("the stalled connection is closed");
        stop.send(true).unwrap();
        server.await.unwrap();
    }

    #[test]
    fn a_stalled_write_is_timed_in_any_phase() {
        let watch = Table::default().insert();
        *watch.phase.lock().unwrap() = Phase::Busy { requests: 1 };
        assert_eq!(watch.deadline(&hygiene()), None);
        watch.write_stalled();
        let since = watch.write_stalled_since.lock().unwrap().unwrap();
        assert_eq!(watch.deadline(&hygiene()), Some((since + Duration::from_secs(60), TimedOut::Write)));
        // Stalling again does not restart the clock; a write that goes through ends the stall.
        watch.write_stalled();
        assert_eq!(*watch.write_stalled_since.lock().unwrap(), Some(since));
        watch.write_progressed();
        assert_eq!(watch.deadline(&hygiene()), None);
        // The earlier deadline wins.
        *watch.phase.lock().unwrap() = Phase::Head { since, started: true };
        watch.write_stalled();
        assert_eq!(watch.deadline(&hygiene()).unwrap().1, TimedOut::Header);
    }

    #[test]
    fn the_budget_keeps_descriptors_for_the_rest_of_the_base() {
        let check = |limit, expected: (usize, usize, u64)| {
            let budget = Budget::from_open_file_limit(limit);
            assert_eq!((budget.traffic, budget.operations, budget.reserve), expected, "limit {limit}");
            assert!(budget.traffic as u64 + budget.operations as u64 + budget.reserve <= limit.max(16));
        };
        check(20_000, (17_744, 256, 2_000));
        check(1_048_576, (943_463, 256, 104_857));
        check(4_096, (2_816, 256, 1_024));
        check(1_024, (384, 128, 512));
    }

    #[test]
    fn a_first_request_head_is_timed_from_the_accept() {
        let accepted = Instant::now();
        let phase = Phase::Head { since: accepted, started: false };
        assert_eq!(phase.deadline(&hygiene()), Some((accepted + Duration::from_secs(10), TimedOut::Header)));
        // Its first byte does not restart the clock (a slowloris gains nothing by sending).
        let later = accepted + Duration::from_secs(5);
        assert_eq!(phase.read(later).deadline(&hygiene()).unwrap().0, accepted + Duration::from_secs(10));
        assert_eq!(phase.reclaimable_since(), Some(accepted));
        assert_eq!(phase.read(later).reclaimable_since(), None);
    }

    #[test]
    fn a_keep_alive_connection_is_idle_until_its_next_head_begins() {
        let start = Instant::now();
        let served = Phase::Head { since: start, started: true }.request_started();
        assert_eq!(served.deadline(&hygiene()), None);
        assert_eq!(served.reclaimable_since(), None);
        let ended = start + Duration::from_secs(1);
        let idle = served.request_ended(ended);
        assert_eq!(idle, Phase::Idle { since: ended });
        assert_eq!(idle.deadline(&hygiene()), Some((ended + Duration::from_secs(60), TimedOut::Idle)));
        assert_eq!(idle.reclaimable_since(), Some(ended));
        let byte = ended + Duration::from_secs(30);
        assert_eq!(
            idle.read(byte).deadline(&hygiene()),
            Some((byte + Duration::from_secs(10), TimedOut::Header))
        );
        // Bytes read during a request (its body, a pipelined head) change nothing.
        assert_eq!(served.read(byte), served);
    }

    #[test]
    fn hypers_own_answers_get_a_json_body() {
        let answer =
            json_answer_for(b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\n");
        let answer = String::from_utf8(answer.unwrap()).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"), "{head}");
        assert!(head.contains(&format!("content-length: {}", body.len())), "{head}");
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["code"], "HEADERS_TOO_LARGE");
        assert_eq!(body["details"]["max_headers"], 100);
        let code = |head: &[u8]| {
            let answer = json_answer_for(head)?;
            let body = String::from_utf8(answer).unwrap().split_once("\r\n\r\n").unwrap().1.to_owned();
            Some(
                serde_json::from_str::<serde_json::Value>(&body).unwrap()["code"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            )
        };
        assert_eq!(code(b"HTTP/1.1 414 URI Too Long\r\n").as_deref(), Some("URI_TOO_LONG"));
        assert_eq!(code(b"HTTP/1.1 400 Bad Request\r\n").as_deref(), Some("MALFORMED_REQUEST"));
        // Anything else passes through untouched.
        assert_eq!(code(b"HTTP/1.1 200 OK\r\n"), None);
        assert_eq!(code(b"{\"code\":\"x\"}"), None);
    }

    #[test]
    fn reclaiming_asks_the_longest_idle_connections_only() {
        let table = Table::default();
        let watches: Vec<_> = (0..5).map(|_| table.insert()).collect();
        let start = Instant::now();
        for (i, watch) in watches.iter().enumerate() {
            let since = start + Duration::from_secs(i as u64);
            *watch.phase.lock().unwrap() = match i {
                0 => Phase::Busy { requests: 1 },
                1 => Phase::Head { since, started: true },
                _ => Phase::Idle { since },
            };
        }
        assert_eq!(table.reclaim_oldest_idle(2), 2);
        let asked: Vec<bool> = watches.iter().map(|w| w.reclaim_requested.load(Relaxed)).collect();
        assert_eq!(asked, [false, false, true, true, false]);
    }
}
