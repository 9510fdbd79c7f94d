//! Connections between the nodes of a cluster (DESIGN.md §7): each node dials every other
//! voter's controller listener and sends its peer messages on that connection; it receives on
//! the connections the others dialled. A connection opens with a hello (the sender's node id
//! and cluster id), then carries `len u32 | envelope` frames. The bytes are core's; this
//! module only moves them (a follower's records straight from the segment files with
//! `sendfile`), and bounds what it reads before it allocates.
//!
//! Messages for a peer that is unreachable are dropped, not queued: the quorum and the broker
//! lifecycle resend on their timers, and stale messages would only be refused later.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use sluice_core::{limits, peer, BrokerId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::server::{Msg, WirePart};

/// Messages queued for one peer's connection before new ones are dropped.
const QUEUE_LEN: usize = 4096;
/// How long a new inbound connection may take to say who it is.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
const DIAL_TIMEOUT: Duration = Duration::from_secs(2);
const REDIAL_MAX: Duration = Duration::from_secs(1);

/// The sending side: one queue per other voter, drained by its dialer task.
pub(crate) struct Peers {
    queues: HashMap<i32, mpsc::Sender<Vec<WirePart>>>,
}

impl Peers {
    /// Queues a message for `to`; dropped (and logged) when its queue is full or `to` unknown.
    pub fn send(&self, to: BrokerId, parts: Vec<WirePart>) {
        match self.queues.get(&to.0) {
            Some(q) => {
                if q.try_send(parts).is_err() {
                    tracing::debug!(to = to.0, "peer queue full or closed; message dropped");
                }
            }
            None => tracing::warn!(to = to.0, "a peer message for a node that is not a voter; dropped"),
        }
    }
}

/// The dialer tasks, kept by the server so that a stopping node sends what it queued last.
pub(crate) struct Dialers(Vec<tokio::task::JoinHandle<()>>);

impl Dialers {
    /// Waits, at most `within`, for every dialer to write out its queue once the core has
    /// stopped (and dropped `Peers`, closing the queues). A node's last words matter: a
    /// stopping quorum leader's answer telling a follower what committed last (say, the ISR
    /// change that let it stop) would otherwise die with the process, and the follower wait
    /// out its own shutdown for leadership it already holds.
    pub async fn flushed(self, within: Duration) {
        let all = async {
            for dialer in self.0 {
                let _ = dialer.await;
            }
        };
        if tokio::time::timeout(within, all).await.is_err() {
            tracing::info!("peer messages not all sent before stopping");
        }
    }
}

/// Starts the controller listener and a dialer for every other voter.
pub(crate) async fn start(
    listen: SocketAddr,
    node: &sluice_core::NodeConfig,
    core: mpsc::Sender<Msg>,
) -> Result<(Peers, Dialers), String> {
    let listener =
        TcpListener::bind(listen).await.map_err(|e| format!("cannot listen on controller listener {listen}: {e}"))?;
    tracing::info!(%listen, voters = ?node.voter_ids(), "controller listener up");
    tokio::spawn(accept_loop(listener, node.cluster_id.clone(), core));
    let hello = Bytes::from(peer::encode_hello(&peer::Hello {
        version: peer::PROTOCOL_VERSION,
        cluster_id: node.cluster_id.clone(),
        node_id: node.node_id.0,
    }));
    let mut queues = HashMap::new();
    let mut dialers = Vec::new();
    for (&id, (host, port)) in node.voters.iter().filter(|(id, _)| **id != node.node_id.0) {
        let (tx, rx) = mpsc::channel(QUEUE_LEN);
        queues.insert(id, tx);
        dialers.push(tokio::spawn(dial_loop(id, format!("{host}:{port}"), hello.clone(), rx)));
    }
    Ok((Peers { queues }, Dialers(dialers)))
}

async fn accept_loop(listener: TcpListener, cluster_id: String, core: mpsc::Sender<Msg>) {
    loop {
        match listener.accept().await {
            Ok((stream, addr)) => {
                let (cluster_id, core) = (cluster_id.clone(), core.clone());
                tokio::spawn(async move {
                    let why = receive(stream, &cluster_id, &core).await;
                    tracing::info!(%addr, %why, "peer connection closed");
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "peer accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Reads one `len u32 | bytes` frame of at most `max` bytes.
async fn read_frame(rd: &mut TcpStream, max: usize) -> Result<Bytes, String> {
    let mut len = [0u8; 4];
    rd.read_exact(&mut len).await.map_err(|e| format!("closed: {e}"))?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(format!("frame of {len} bytes is over the limit of {max}"));
    }
    let mut buf = BytesMut::with_capacity(len);
    while buf.len() < len {
        let want = len - buf.len();
        match rd.read_buf(&mut (&mut buf).limit(want)).await {
            Ok(0) => return Err("truncated frame: connection closed".into()),
            Ok(_) => {}
            Err(e) => return Err(format!("truncated frame: {e}")),
        }
    }
    Ok(buf.freeze())
}

/// An inbound peer connection: the hello, then envelopes handed to the core as from that node.
async fn receive(mut stream: TcpStream, cluster_id: &str, core: &mpsc::Sender<Msg>) -> String {
    let _ = stream.set_nodelay(true);
    let hello = match tokio::time::timeout(HELLO_TIMEOUT, read_frame(&mut stream, limits::PEER_HELLO_BYTES_MAX)).await {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => return format!("no hello: {e}"),
        Err(_) => return "no hello in time".into(),
    };
    let from = match peer::decode_hello(&hello, cluster_id) {
        Ok(id) => id,
        Err(e) => {
            tracing::warn!(error = %e, "peer refused at hello");
            return e.to_string();
        }
    };
    tracing::info!(from, "peer connected");
    loop {
        let bytes = match read_frame(&mut stream, limits::PEER_MESSAGE_BYTES_MAX).await {
            Ok(b) => b,
            Err(e) => return format!("from node {from}: {e}"),
        };
        if core.send(Msg::Peer { from: BrokerId(from), bytes }).await.is_err() {
            return "core stopped".into();
        }
    }
}

/// Keeps a connection to one peer and writes its queue to it; redials when it breaks.
async fn dial_loop(to: i32, addr: String, hello: Bytes, mut rx: mpsc::Receiver<Vec<WirePart>>) {
    let mut backoff = Duration::from_millis(50);
    let mut logged = false;
    loop {
        // Whatever was queued while the peer was unreachable is stale: drop it. A closed
        // queue is a stopping node: nothing more to send.
        loop {
            match rx.try_recv() {
                Ok(_) => {}
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => return,
            }
        }
        let stream = match tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(&addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                if !logged {
                    tracing::info!(to, %addr, error = %e, "peer unreachable; retrying");
                    logged = true;
                }
                if !idle_while_open(&mut rx, backoff).await {
                    return;
                }
                backoff = (backoff * 2).min(REDIAL_MAX);
                continue;
            }
            Err(_) => continue,
        };
        let _ = stream.set_nodelay(true);
        (backoff, logged) = (Duration::from_millis(50), false);
        tracing::info!(to, %addr, "connected to peer");
        let why = send_all(stream, &hello, &mut rx).await;
        match why {
            None => return, // the node is stopping
            Some(e) => tracing::info!(to, %addr, error = %e, "peer connection lost; redialling"),
        }
    }
}

/// Waits `pause` before the next dial, dropping what is queued meanwhile (stale by then);
/// false as soon as the queue closes (the node is stopping).
async fn idle_while_open(rx: &mut mpsc::Receiver<Vec<WirePart>>, pause: Duration) -> bool {
    let until = tokio::time::Instant::now() + pause;
    loop {
        tokio::select! {
            m = rx.recv() => if m.is_none() { return false },
            _ = tokio::time::sleep_until(until) => return true,
        }
    }
}

/// Writes the hello, then every queued message, until the connection fails (`Some(why)`) or
/// the queue is closed (`None`).
async fn send_all(mut stream: TcpStream, hello: &Bytes, rx: &mut mpsc::Receiver<Vec<WirePart>>) -> Option<String> {
    if let Err(e) = send_message(&mut stream, vec![WirePart::Bytes(hello.clone())]).await {
        return Some(e.to_string());
    }
    loop {
        // Watch for the peer closing while idle, so a dead connection is noticed and redialled.
        let mut probe = [0u8; 1];
        let msg = tokio::select! {
            m = rx.recv() => m?,
            r = stream.read(&mut probe) => return Some(match r {
                Ok(0) => "closed by the peer".to_string(),
                Ok(_) => "the peer sent bytes on a send-only connection".to_string(),
                Err(e) => e.to_string(),
            }),
        };
        if let Err(e) = send_message(&mut stream, msg).await {
            return Some(e.to_string());
        }
    }
}

/// Writes one message as a `len u32 | parts` frame: its size prefix and its leading bytes in
/// one write, file ranges with `sendfile`. A range the file no longer holds (cut since) fails
/// the send, and the connection with it: the peer never sees a short frame as a whole one.
async fn send_message(stream: &mut TcpStream, parts: Vec<WirePart>) -> std::io::Result<()> {
    let len: usize = parts
        .iter()
        .map(|p| match p {
            WirePart::Bytes(b) => b.len(),
            WirePart::File { len, .. } => *len as usize,
        })
        .sum();
    let len = u32::try_from(len).map_err(|_| std::io::Error::other("a peer message over 4 GiB"))?;
    let mut parts = parts.into_iter().peekable();
    let mut head =
        BytesMut::with_capacity(4 + parts.peek().map_or(0, |p| if let WirePart::Bytes(b) = p { b.len() } else { 0 }));
    head.put_u32(len);
    if let Some(WirePart::Bytes(b)) = parts.next_if(|p| matches!(p, WirePart::Bytes(_))) {
        head.put_slice(&b);
    }
    stream.write_all(&head).await?;
    for p in parts {
        match p {
            WirePart::Bytes(b) => stream.write_all(&b).await?,
            WirePart::File { file, position, len } => {
                crate::sendfile::send(stream, &file, position, len as usize).await?
            }
        }
    }
    Ok(())
}
