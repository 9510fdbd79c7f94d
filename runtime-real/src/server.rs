//! The tokio shell around one core node: accept connections, split length-prefixed frames,
//! feed the core on its own thread through a bounded channel, and write responses back,
//! record sets straight from segment files with `sendfile`.

use std::collections::HashMap;
use std::fs::File;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use sluice_core::{ConnId, DiskError, DiskReply, FileId, Input, Instant, Node, OpId, Output, Part, Time};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::config::ServerConfig;
use crate::disk::{Disk, Outcome};

/// Messages into the core thread.
/// How long a stopping broker waits for its leadership to be handed over.
const CONTROLLED_SHUTDOWN_MAX: Duration = Duration::from_secs(10);
/// How long a stopped core's last peer messages may take to be written out.
const PEER_FLUSH_MAX: Duration = Duration::from_secs(1);

pub enum Msg {
    Opened {
        conn: ConnId,
        tx: mpsc::UnboundedSender<Vec<WirePart>>,
        stop: Arc<tokio::sync::Notify>,
        backlog: Arc<Backlog>,
    },
    Frame {
        conn: ConnId,
        frame: Bytes,
    },
    Closed {
        conn: ConnId,
    },
    Synced {
        op: OpId,
        result: Result<DiskReply, DiskError>,
    },
    /// SIGTERM: a controlled shutdown.
    ShutdownRequested,
    /// The metrics endpoint asks for a snapshot.
    Scrape {
        reply: tokio::sync::oneshot::Sender<Vec<sluice_core::metrics::Family>>,
    },
    /// A message from another node of the cluster.
    Peer {
        from: sluice_core::BrokerId,
        bytes: Bytes,
    },
    Shutdown,
}

/// A response part ready for the socket.
pub enum WirePart {
    Bytes(Bytes),
    File { file: Arc<File>, position: u64, len: u32 },
}

/// Response bytes held in memory for one connection's socket past which its reader stops
/// reading requests: a client that sends but does not read cannot make the broker hold more
/// than this (plus the answers to the requests already read, at most
/// `IN_FLIGHT_REQUESTS_PER_CONN_MAX` of them). Record sets sent from segment files hold no
/// memory and do not count.
pub const RESPONSE_BACKLOG_BYTES_MAX: usize = 16 * 1024 * 1024;

/// A connection's responses queued for its socket and not yet written.
#[derive(Default)]
pub struct Backlog {
    bytes: std::sync::atomic::AtomicUsize,
    drained: tokio::sync::Notify,
    /// The core has too many of this connection's requests unanswered (`Output::Pause`).
    paused: std::sync::atomic::AtomicBool,
}

impl Backlog {
    fn add(&self, n: usize) {
        self.bytes.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    fn written(&self, n: usize) {
        let before = self.bytes.fetch_sub(n, std::sync::atomic::Ordering::Relaxed);
        if before > RESPONSE_BACKLOG_BYTES_MAX && before - n <= RESPONSE_BACKLOG_BYTES_MAX {
            self.drained.notify_waiters();
        }
    }

    fn pause(&self, paused: bool) {
        self.paused.store(paused, std::sync::atomic::Ordering::Relaxed);
        if !paused {
            self.drained.notify_waiters();
        }
    }

    /// Waits until the backlog is within bounds and the core takes requests again.
    async fn within_bounds(&self) {
        loop {
            let drained = self.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            if self.bytes.load(std::sync::atomic::Ordering::Relaxed) <= RESPONSE_BACKLOG_BYTES_MAX
                && !self.paused.load(std::sync::atomic::Ordering::Relaxed)
            {
                return;
            }
            drained.await;
        }
    }
}

/// The memory a response holds until it is written.
/// A response's or peer message's parts with their files' handles, which keep the files open
/// until they are sent; `Err` names a file that is not open (a bug in core).
fn wire_parts(disk: &Disk, parts: Vec<Part>) -> Result<Vec<WirePart>, FileId> {
    parts
        .into_iter()
        .map(|p| match p {
            Part::Bytes(b) => Ok(WirePart::Bytes(b)),
            Part::File { file, position, len } => {
                disk.file(file).map(|file| WirePart::File { file, position, len }).ok_or(file)
            }
        })
        .collect()
}

fn wire_len(parts: &[WirePart]) -> usize {
    parts
        .iter()
        .map(|p| match p {
            WirePart::Bytes(b) => b.len(),
            WirePart::File { .. } => 0,
        })
        .sum()
}

pub fn run(mut cfg: ServerConfig) -> Result<(), String> {
    crate::meta_properties::ensure(&cfg.data_dir, &mut cfg.node)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("sluice-net")
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(serve(cfg))
}

async fn serve(cfg: ServerConfig) -> Result<(), String> {
    let listener = TcpListener::bind(cfg.listen).await.map_err(|e| format!("cannot listen on {}: {e}", cfg.listen))?;
    // Requests from every connection (and disk and peer completions) wait here for the core:
    // `queued.max.requests` of them, then the readers wait.
    let (tx, rx) = mpsc::channel::<Msg>(cfg.queued_max_requests);
    let limits = crate::conn_limits::ConnLimits::new(&cfg.node.connections)?;
    let sync_tx = tx.clone();
    let disk = Disk::new(cfg.data_dir.clone(), move |op, result| {
        let _ = sync_tx.blocking_send(Msg::Synced { op, result });
    })
    .map_err(|e| format!("data directory {}: {e}", cfg.data_dir.display()))?;
    let node_cfg = cfg.node.clone();
    let (peers, dialers) = match cfg.controller_listen {
        Some(at) => {
            let (peers, dialers) = crate::peer::start(at, &cfg.node, tx.clone()).await?;
            (Some(peers), Some(dialers))
        }
        None => (None, None),
    };
    if let Some(at) = cfg.metrics_listen {
        crate::metrics_http::start(at, tx.clone()).await?;
    }
    let core = std::thread::Builder::new()
        .name("sluice-core".into())
        .spawn({
            let limits = limits.clone();
            move || core_thread(node_cfg, disk, peers, limits, rx)
        })
        .map_err(|e| e.to_string())?;
    tracing::info!(listen = %cfg.listen, data = %cfg.data_dir.display(), "sluice broker listening");
    let accept = accept_loop(&listener, &limits, &tx, cfg.node.socket_request_max_bytes);
    tokio::select! {
        _ = accept => {}
        _ = shutdown_signal() => tracing::info!("shutting down"),
    }
    // A broker of a cluster hands its leadership over first (the core stops when it has, or
    // after CONTROLLED_SHUTDOWN_MAX); a second signal stops it at once.
    let _ = tx.send(Msg::ShutdownRequested).await;
    let mut core = tokio::task::spawn_blocking(move || core.join());
    tokio::select! {
        _ = &mut core => {}
        _ = shutdown_signal() => {
            tracing::info!("stopping now");
            let _ = tx.send(Msg::Shutdown).await;
            let _ = core.await;
        }
    }
    if let Some(dialers) = dialers {
        dialers.flushed(PEER_FLUSH_MAX).await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// Accepts client connections for as long as the broker runs.
async fn accept_loop(
    listener: &TcpListener,
    limits: &Arc<crate::conn_limits::ConnLimits>,
    tx: &mpsc::Sender<Msg>,
    frame_max: usize,
) {
    let mut next_conn = 0u64;
    loop {
        // At max.connections the listener stops accepting until a connection closes.
        let place = limits.place().await;
        match listener.accept().await {
            Ok((stream, peer)) => match limits.admit(peer.ip(), place) {
                Ok(slot) => {
                    next_conn += 1;
                    let conn = ConnId(next_conn);
                    tracing::debug!(conn = conn.0, %peer, "connection opened");
                    start_connection(conn, stream, tx.clone(), frame_max, slot).await;
                }
                Err(limit) => {
                    tracing::info!(%peer, limit, "max.connections.per.ip reached; connection closed");
                    drop(stream);
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("signal handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

async fn start_connection(
    conn: ConnId,
    stream: TcpStream,
    core: mpsc::Sender<Msg>,
    frame_max: usize,
    slot: crate::conn_limits::Slot,
) {
    let _ = stream.set_nodelay(true);
    let (rd, wr) = stream.into_split();
    let (resp_tx, resp_rx) = mpsc::unbounded_channel();
    let stop = Arc::new(tokio::sync::Notify::new());
    let backlog = Arc::new(Backlog::default());
    // Registered before the reader starts, so the core sees Opened before any frame.
    let opened = Msg::Opened { conn, tx: resp_tx, stop: stop.clone(), backlog: backlog.clone() };
    if core.send(opened).await.is_err() {
        return;
    }
    tokio::spawn(write_loop(conn, wr, resp_rx, backlog.clone()));
    tokio::spawn(async move {
        let why = tokio::select! {
            why = read_loop(conn, rd, &core, frame_max, &backlog) => why,
            _ = stop.notified() => "closed by the broker".to_string(),
        };
        tracing::debug!(conn = conn.0, %why, "connection reader done");
        let _ = core.send(Msg::Closed { conn }).await;
        drop(slot); // the connection no longer counts against max.connections
    });
}

/// Reads frames until the peer closes or sends something unacceptable. A length that is
/// negative or over `socket.request.max.bytes` closes the connection before any allocation.
async fn read_loop(
    conn: ConnId,
    mut rd: OwnedReadHalf,
    core: &mpsc::Sender<Msg>,
    frame_max: usize,
    backlog: &Backlog,
) -> String {
    loop {
        // A client that does not read its responses is not read either.
        backlog.within_bounds().await;
        let mut len = [0u8; 4];
        if let Err(e) = rd.read_exact(&mut len).await {
            return format!("closed: {e}");
        }
        let len = i32::from_be_bytes(len);
        let Ok(len) = usize::try_from(len) else {
            tracing::warn!(conn = conn.0, len, "negative frame length; closing");
            return "negative frame length".into();
        };
        if len > frame_max {
            tracing::warn!(conn = conn.0, len, frame_max, "frame over socket.request.max.bytes; closing");
            return "oversized frame".into();
        }
        // Read straight into uninitialised capacity (no zeroing pass), never past the frame.
        let mut buf = BytesMut::with_capacity(len);
        while buf.len() < len {
            let want = len - buf.len();
            match rd.read_buf(&mut (&mut buf).limit(want)).await {
                Ok(0) => return "truncated frame: connection closed".into(),
                Ok(_) => {}
                Err(e) => return format!("truncated frame: {e}"),
            }
        }
        if core.send(Msg::Frame { conn, frame: buf.freeze() }).await.is_err() {
            return "core stopped".into();
        }
    }
}

async fn write_loop(
    conn: ConnId,
    mut wr: OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<Vec<WirePart>>,
    backlog: Arc<Backlog>,
) {
    while let Some(parts) = rx.recv().await {
        let n = wire_len(&parts);
        for part in parts {
            let r = match part {
                WirePart::Bytes(b) => wr.write_all(&b).await,
                WirePart::File { file, position, len } => {
                    crate::sendfile::send(wr.as_ref(), &file, position, len as usize).await
                }
            };
            if let Err(e) = r {
                tracing::debug!(conn = conn.0, error = %e, "write failed");
                backlog.written(n); // the reader must not wait on a writer that is gone
                return;
            }
        }
        backlog.written(n);
    }
    let _ = wr.shutdown().await;
}

struct Clock {
    start: std::time::Instant,
}

impl Clock {
    fn now(&self) -> Time {
        let wall_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
        Time { mono: Instant(self.start.elapsed().as_nanos() as u64), wall_ms }
    }
    fn to_std(&self, at: Instant) -> tokio::time::Instant {
        tokio::time::Instant::from_std(self.start + Duration::from_nanos(at.0))
    }
}

struct Conn {
    tx: mpsc::UnboundedSender<Vec<WirePart>>,
    stop: Arc<tokio::sync::Notify>,
    backlog: Arc<Backlog>,
}

/// The core thread: one node, fed inputs one at a time; its outputs executed in order.
fn core_thread(
    node_cfg: sluice_core::NodeConfig,
    disk: Disk,
    peers: Option<crate::peer::Peers>,
    limits: Arc<crate::conn_limits::ConnLimits>,
    rx: mpsc::Receiver<Msg>,
) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("core runtime");
    rt.block_on(core_loop(node_cfg, disk, peers, limits, rx));
}

async fn core_loop(
    node_cfg: sluice_core::NodeConfig,
    mut disk: Disk,
    peers: Option<crate::peer::Peers>,
    limits: Arc<crate::conn_limits::ConnLimits>,
    mut rx: mpsc::Receiver<Msg>,
) {
    let mut connections = node_cfg.connections.clone();
    let clock = Clock { start: std::time::Instant::now() };
    let seed = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let mut node = Node::new(node_cfg, seed, clock.now());
    let mut conns: HashMap<ConnId, Conn> = HashMap::new();
    let mut local: std::collections::VecDeque<Input> = std::collections::VecDeque::new();
    let mut was_serving = false;
    // Set once a stop is asked for: the latest the core keeps running to hand leadership over.
    let mut stop_by: Option<std::time::Instant> = None;
    loop {
        drain(&mut node, &mut disk, &mut conns, peers.as_ref(), &mut local);
        while let Some(input) = local.pop_front() {
            node.handle(clock.now(), input);
            drain(&mut node, &mut disk, &mut conns, peers.as_ref(), &mut local);
        }
        if stop_by.is_some_and(|by| may_stop(&node, by)) {
            return;
        }
        // The connection limits are dynamic broker configs: the listener follows them.
        if node.config().connections != connections {
            connections = node.config().connections.clone();
            limits.set(&connections);
        }
        if !was_serving && node.is_serving() {
            was_serving = true;
            tracing::info!(recovery = ?node.recovery_stats(), "ready");
        }
        // While stopping, look again at least every 100 ms (the bound is the runtime's).
        let stopping = stop_by.map(|_| clock.now().mono.plus_millis(100));
        let deadline = [node.poll_timeout(), stopping].into_iter().flatten().min();
        let msg = match deadline {
            Some(at) => tokio::select! {
                m = rx.recv() => m,
                _ = tokio::time::sleep_until(clock.to_std(at)) => {
                    node.handle(clock.now(), Input::Timeout);
                    continue;
                }
            },
            None => rx.recv().await,
        };
        let Some(msg) = msg else { return };
        match next_input(msg, &node, &mut conns, &mut stop_by) {
            Next::Input(input) => node.handle(clock.now(), input),
            Next::Nothing => {}
            Next::Stop => return,
        }
    }
}

/// What a message into the core thread asks of the core.
enum Next {
    Input(Input),
    Nothing,
    Stop,
}

/// Turns a message into the core's input, keeping the connection table (and answering a
/// metrics scrape, which needs no input).
fn next_input(
    msg: Msg,
    node: &Node,
    conns: &mut HashMap<ConnId, Conn>,
    stop_by: &mut Option<std::time::Instant>,
) -> Next {
    Next::Input(match msg {
        Msg::Opened { conn, tx, stop, backlog } => {
            conns.insert(conn, Conn { tx, stop, backlog });
            return Next::Nothing;
        }
        Msg::Frame { conn, frame } => {
            if !conns.contains_key(&conn) {
                return Next::Nothing; // closed by core; frames still in the queue are dropped
            }
            Input::Request { conn, frame }
        }
        Msg::Closed { conn } => {
            if conns.remove(&conn).is_none() {
                return Next::Nothing;
            }
            Input::ConnClosed { conn }
        }
        Msg::Synced { op, result } => Input::DiskDone { op, result },
        Msg::Peer { from, bytes } => Input::Peer { from, bytes },
        Msg::Scrape { reply } => {
            let mut families = node.metrics();
            families.push(sluice_core::metrics::Family::one(
                "kafka_server_socket_server_metrics_connection_count",
                "Client connections open",
                sluice_core::metrics::Kind::Gauge,
                conns.len() as f64,
            ));
            let _ = reply.send(families);
            return Next::Nothing;
        }
        Msg::Shutdown => return Next::Stop,
        Msg::ShutdownRequested => {
            stop_by.get_or_insert(std::time::Instant::now() + CONTROLLED_SHUTDOWN_MAX);
            Input::ShutdownRequested
        }
    })
}

/// Whether a node asked to stop may stop now: its leadership is handed over, or its time to
/// hand it over (`by`) is up.
fn may_stop(node: &Node, by: std::time::Instant) -> bool {
    if node.ready_to_stop() {
        tracing::info!("controlled shutdown: leadership handed over");
        return true;
    }
    if std::time::Instant::now() >= by {
        let pending = node.handover_pending();
        tracing::warn!(?pending, "controlled shutdown: leadership not handed over in time; stopping anyway");
        return true;
    }
    false
}

fn drain(
    node: &mut Node,
    disk: &mut Disk,
    conns: &mut HashMap<ConnId, Conn>,
    peers: Option<&crate::peer::Peers>,
    local: &mut std::collections::VecDeque<Input>,
) {
    while let Some(out) = node.poll_output() {
        match out {
            Output::Disk { op, action } => {
                if let Outcome::Done(result) = disk.execute(op, action) {
                    local.push_back(Input::DiskDone { op, result });
                }
            }
            Output::Response { conn, parts } => {
                let Some(c) = conns.get(&conn) else { continue };
                let wire = wire_parts(disk, parts).unwrap_or_else(|file| {
                    // A frame must never be short: drop the connection instead.
                    tracing::error!(?file, conn = conn.0, "response names a closed file; closing");
                    Vec::new()
                });
                if wire.is_empty() {
                    if let Some(c) = conns.remove(&conn) {
                        c.stop.notify_one();
                    }
                    local.push_back(Input::ConnClosed { conn });
                } else {
                    c.backlog.add(wire_len(&wire));
                    let _ = c.tx.send(wire);
                }
            }
            Output::Close { conn } => {
                if let Some(c) = conns.remove(&conn) {
                    c.stop.notify_one();
                    drop(c.tx); // the writer flushes what is queued, then shuts the socket
                }
            }
            Output::Pause { conn } | Output::Resume { conn } => {
                if let Some(c) = conns.get(&conn) {
                    c.backlog.pause(matches!(out, Output::Pause { .. }));
                }
            }
            Output::Peer { to, parts } => match (peers, wire_parts(disk, parts)) {
                (Some(p), Ok(wire)) => p.send(to, wire),
                (None, _) => tracing::warn!(?to, "a peer message on a node without peers; dropped"),
                (_, Err(file)) => tracing::error!(?file, ?to, "a peer message names a closed file; dropped"),
            },
        }
    }
}
