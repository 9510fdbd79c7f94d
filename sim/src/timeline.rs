//! A run drawn as a picture (`sluice-sim run --seed N --timeline FILE.html`): one lane per
//! node (up, down, isolated, stalled, disk full; a strip of its peer traffic) and one per
//! client (each request a line from the client, when sent, to the node, when it arrived;
//! each answer a tick back on the client's lane, coloured by API), the heal, and every
//! violation the checkers found, marked where it happened. One self-contained HTML file with
//! an SVG, tooltips on everything; a person finds the moment that matters faster than in a
//! log, then reads the log (`--verbose`) around it.
//!
//! It is drawn from the trace's JSON lines (`runtime_sim::Trace`): the fingerprinted events
//! and the notes kept beside them (connections, requests' APIs, the heal).

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write;

/// One trace line.
struct Ev {
    t_ns: u64,
    kind: String,
    a: u64,
    b: u64,
}

fn parse(line: &str) -> Option<Ev> {
    let field = |name: &str| -> Option<&str> {
        let start = line.find(&format!("\"{name}\":"))? + name.len() + 3;
        let rest = &line[start..];
        let end = rest.find([',', '}'])?;
        Some(rest[..end].trim_matches('"'))
    };
    Some(Ev {
        t_ns: field("t_ns")?.parse().ok()?,
        kind: field("event")?.to_string(),
        a: field("a")?.parse().ok()?,
        b: field("b")?.parse().ok()?,
    })
}

/// A request on the picture: sent by a client, arrived at a node (or not), answered (or not).
struct Req {
    client: usize,
    node: usize,
    api: u64,
    sent: u64,
    arrived: Option<u64>,
    answered: Option<u64>,
}

/// A span of a node's lane: what, from, to.
struct Span {
    node: usize,
    what: &'static str,
    from: u64,
    to: u64,
}

#[derive(Default)]
struct Picture {
    end_ns: u64,
    nodes: usize,
    clients: Vec<usize>,
    reqs: Vec<Req>,
    spans: Vec<Span>,
    /// Per node, peer messages received per bucket.
    peer: BTreeMap<usize, BTreeMap<u64, u32>>,
    heal: Option<u64>,
    crashes: Vec<(usize, u64)>,
}

const BUCKET_NS: u64 = 50_000_000;
/// More requests than this are not drawn one by one (the file stays readable).
const MAX_REQS: usize = 30_000;

fn build(lines: &[String]) -> Picture {
    let mut b = Builder::default();
    for e in lines.iter().filter_map(|l| parse(l)) {
        b.p.end_ns = b.p.end_ns.max(e.t_ns);
        if !b.fault(&e) {
            b.traffic(&e);
        }
    }
    let mut p = b.p;
    for (what, open) in [("down", b.down_since), ("disk full", b.full_since)] {
        for (node, from) in open {
            p.spans.push(Span { node, what, from, to: p.end_ns });
        }
    }
    for s in &mut p.spans {
        s.to = s.to.min(p.end_ns.max(s.from));
    }
    p.clients.sort_unstable();
    p
}

/// The picture as the trace's events build it, with what is still open.
#[derive(Default)]
struct Builder {
    p: Picture,
    /// Connection: its client and node.
    conns: BTreeMap<u64, (usize, usize)>,
    /// Per connection, requests sent and not arrived, and sent and not answered (each FIFO).
    in_flight: BTreeMap<u64, VecDeque<usize>>,
    unanswered: BTreeMap<u64, VecDeque<usize>>,
    down_since: BTreeMap<usize, u64>,
    full_since: BTreeMap<usize, u64>,
}

impl Builder {
    /// A node's event (boot, crash, a fault); false if `e` is none. A node gets its lane from
    /// any event that names it: a run's first boots come before the trace is kept.
    fn fault(&mut self, e: &Ev) -> bool {
        let (p, node) = (&mut self.p, e.a as usize);
        let named = matches!(e.kind.as_str(), "boot" | "crash" | "exit" | "isolate" | "clog" | "disk-full" | "pause");
        if named {
            p.nodes = p.nodes.max(node + 1);
        }
        match e.kind.as_str() {
            "boot" => {
                if let Some(from) = self.down_since.remove(&node) {
                    p.spans.push(Span { node, what: "down", from, to: e.t_ns });
                }
            }
            "crash" => {
                self.down_since.insert(node, e.t_ns);
                p.crashes.push((node, e.t_ns));
            }
            // A controlled stop's end: down, without a crash's mark.
            "exit" => {
                self.down_since.insert(node, e.t_ns);
            }
            "isolate" => p.spans.push(Span { node, what: "isolated", from: e.t_ns, to: e.b }),
            "clog" => p.spans.push(Span { node, what: "stalled", from: e.t_ns, to: e.b }),
            "pause" => p.spans.push(Span { node, what: "paused", from: e.t_ns, to: e.b }),
            // A link cut one way: drawn on the lane of the node whose messages are lost.
            "cut" => p.spans.push(Span { node: node / 16, what: "sending cut off", from: e.t_ns, to: e.b }),
            "disk-full" if e.b == 1 => {
                self.full_since.entry(node).or_insert(e.t_ns);
            }
            "disk-full" => {
                if let Some(from) = self.full_since.remove(&node) {
                    p.spans.push(Span { node, what: "disk full", from, to: e.t_ns });
                }
            }
            "heal" => p.heal = Some(e.t_ns),
            _ => return false,
        }
        true
    }

    /// Connections, requests, answers and peer messages.
    fn traffic(&mut self, e: &Ev) {
        let p = &mut self.p;
        match e.kind.as_str() {
            "connect" => {
                let (client, node) = ((e.b >> 32) as usize, (e.b & 0xffff_ffff) as usize);
                self.conns.insert(e.a, (client, node));
                p.nodes = p.nodes.max(node + 1);
                if !p.clients.contains(&client) {
                    p.clients.push(client);
                }
            }
            "send" => {
                let Some(&(client, node)) = self.conns.get(&e.a) else { return };
                if p.reqs.len() < MAX_REQS {
                    p.reqs.push(Req { client, node, api: e.b, sent: e.t_ns, arrived: None, answered: None });
                    self.in_flight.entry(e.a).or_default().push_back(p.reqs.len() - 1);
                    self.unanswered.entry(e.a).or_default().push_back(p.reqs.len() - 1);
                }
            }
            "request" => {
                if let Some(i) = self.in_flight.get_mut(&(e.a & 0xffff_ffff)).and_then(VecDeque::pop_front) {
                    p.reqs[i].arrived = Some(e.t_ns);
                }
            }
            "response" => {
                if let Some(i) = self.unanswered.get_mut(&e.a).and_then(VecDeque::pop_front) {
                    p.reqs[i].answered = Some(e.t_ns);
                }
            }
            "closed" => {
                self.in_flight.remove(&e.a);
                self.unanswered.remove(&e.a);
            }
            "peer" => {
                let node = (e.a % 16) as usize;
                p.nodes = p.nodes.max(node + 1);
                *p.peer.entry(node).or_default().entry(e.t_ns / BUCKET_NS).or_default() += 1
            }
            _ => {}
        }
    }
}

/// Kafka's name for an API key, and the colour its requests are drawn in.
fn api(key: u64) -> (&'static str, &'static str) {
    match key {
        0 => ("Produce", "#1f77b4"),
        1 => ("Fetch", "#2ca02c"),
        2 => ("ListOffsets", "#17becf"),
        3 => ("Metadata", "#7f7f7f"),
        8 | 9 => (if key == 8 { "OffsetCommit" } else { "OffsetFetch" }, "#ff7f0e"),
        10 => ("FindCoordinator", "#bcbd22"),
        11..=14 | 68 => ("group", "#9467bd"),
        19 | 20 | 37 | 44 | 45 | 21 => ("admin", "#8c564b"),
        22 | 24 | 25 | 26 | 28 => ("transactions", "#d62728"),
        _ => ("other", "#e377c2"),
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The `t=<ms>ms: ` a violation starts with.
fn violation_ms(v: &str) -> Option<u64> {
    v.strip_prefix("t=")?.split_once("ms")?.0.parse().ok()
}

const LEFT: f64 = 110.0;
const NODE_H: f64 = 46.0;
const CLIENT_H: f64 = 18.0;
const TOP: f64 = 30.0;

/// The whole HTML page for one run.
pub fn render(title: &str, summary: &str, lines: &[String], violations: &[String]) -> String {
    let p = build(lines);
    let end_ms = (p.end_ns as f64 / 1e6).max(1.0);
    let px_per_ms = (24_000.0 / end_ms).clamp(0.05, 2.0);
    let width = LEFT + end_ms * px_per_ms + 20.0;
    let x = |ns: u64| LEFT + ns as f64 / 1e6 * px_per_ms;
    let node_y = |n: usize| TOP + n as f64 * NODE_H;
    let clients_top = node_y(p.nodes) + 14.0;
    let client_y = |c: usize| {
        let i = p.clients.iter().position(|x| *x == c).unwrap_or(0);
        clients_top + i as f64 * CLIENT_H
    };
    let height = clients_top + p.clients.len() as f64 * CLIENT_H + 20.0;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" font-family="monospace" font-size="11">"#
    );
    draw_axis(&mut svg, end_ms, px_per_ms, height);
    draw_nodes(&mut svg, &p, &x, &node_y, width);
    for (i, c) in p.clients.iter().enumerate() {
        let y = clients_top + i as f64 * CLIENT_H;
        let _ = write!(
            svg,
            r##"<text x="4" y="{:.1}">client {c}</text><line x1="{LEFT}" y1="{y:.1}" x2="{width:.0}" y2="{y:.1}" stroke="#ddd"/>"##,
            y + 4.0
        );
    }
    draw_requests(&mut svg, &p, &x, &node_y, &client_y);
    if let Some(h) = p.heal {
        let _ = write!(
            svg,
            r##"<line x1="{0:.1}" y1="{TOP}" x2="{0:.1}" y2="{height:.0}" stroke="#2a2" stroke-width="2" stroke-dasharray="6 3"><title>every fault healed at {1:.3} ms</title></line><text x="{2:.1}" y="{3}" fill="#2a2">heal</text>"##,
            x(h),
            h as f64 / 1e6,
            x(h) + 3.0,
            TOP - 4.0
        );
    }
    for v in violations {
        let Some(ms) = violation_ms(v) else { continue };
        let vx = x(ms * 1_000_000);
        let _ = write!(
            svg,
            r##"<line x1="{vx:.1}" y1="{TOP}" x2="{vx:.1}" y2="{height:.0}" stroke="#d00" stroke-width="3"><title>{}</title></line><text x="{:.1}" y="{}" fill="#d00" font-weight="bold">violation</text>"##,
            esc(v),
            vx + 3.0,
            TOP - 16.0
        );
    }
    svg.push_str("</svg>");
    page(title, summary, violations, &svg)
}

fn draw_requests(
    svg: &mut String,
    p: &Picture,
    x: &dyn Fn(u64) -> f64,
    node_y: &dyn Fn(usize) -> f64,
    client_y: &dyn Fn(usize) -> f64,
) {
    for r in &p.reqs {
        let (name, colour) = api(r.api);
        let (x0, y0) = (x(r.sent), client_y(r.client));
        let node_mid = node_y(r.node) + NODE_H / 2.0;
        let tip = format!(
            "{name} (API {}) from client {} to node {} sent at {:.3} ms{}{}",
            r.api,
            r.client,
            r.node + 1,
            r.sent as f64 / 1e6,
            r.arrived.map_or(", never arrived".to_string(), |t| format!(", arrived at {:.3} ms", t as f64 / 1e6)),
            r.answered.map_or(", never answered".to_string(), |t| format!(", answered at {:.3} ms", t as f64 / 1e6)),
        );
        match r.arrived {
            Some(t) => {
                let _ = write!(
                    svg,
                    r#"<line x1="{x0:.1}" y1="{y0:.1}" x2="{:.1}" y2="{node_mid:.1}" stroke="{colour}" stroke-opacity="0.35"><title>{}</title></line>"#,
                    x(t),
                    esc(&tip)
                );
            }
            None => {
                let _ = write!(
                    svg,
                    r#"<text x="{x0:.1}" y="{:.1}" fill="{colour}" text-anchor="middle">×<title>{}</title></text>"#,
                    y0 + 4.0,
                    esc(&tip)
                );
            }
        }
        if let Some(t) = r.answered {
            let _ = write!(
                svg,
                r#"<rect x="{:.1}" y="{:.1}" width="2" height="8" fill="{colour}"><title>{}</title></rect>"#,
                x(t) - 1.0,
                y0 - 4.0,
                esc(&tip)
            );
        }
    }
}

fn draw_axis(svg: &mut String, end_ms: f64, px_per_ms: f64, height: f64) {
    let step_ms = [100.0, 250.0, 500.0, 1000.0, 2000.0, 5000.0, 10_000.0]
        .into_iter()
        .find(|s| s * px_per_ms >= 80.0)
        .unwrap_or(20_000.0);
    let mut t = 0.0;
    while t <= end_ms {
        let xx = LEFT + t * px_per_ms;
        let _ = write!(
            svg,
            r##"<line x1="{xx:.1}" y1="{:.0}" x2="{xx:.1}" y2="{height:.0}" stroke="#f0f0f0"/><text x="{:.1}" y="12" fill="#888">{}</text>"##,
            TOP - 2.0,
            xx + 2.0,
            if step_ms >= 1000.0 { format!("{} s", t / 1000.0) } else { format!("{t} ms") }
        );
        t += step_ms;
    }
}

fn draw_nodes(svg: &mut String, p: &Picture, x: &dyn Fn(u64) -> f64, node_y: &dyn Fn(usize) -> f64, width: f64) {
    for n in 0..p.nodes {
        let y = node_y(n);
        let _ = write!(
            svg,
            r##"<text x="4" y="{:.1}" font-weight="bold">node {}</text><rect x="{LEFT}" y="{:.1}" width="{:.0}" height="{:.1}" fill="#eef7ee"/>"##,
            y + NODE_H / 2.0 + 4.0,
            n + 1,
            y + 2.0,
            width - LEFT - 20.0,
            NODE_H - 4.0
        );
        // Peer traffic received, per bucket: a strip along the lane's foot.
        let peak = p.peer.get(&n).and_then(|b| b.values().max().copied()).unwrap_or(1).max(1);
        for (bucket, count) in p.peer.get(&n).into_iter().flatten() {
            let h = 10.0 * f64::from(*count) / f64::from(peak);
            let _ = write!(
                svg,
                r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" fill="#9ab"><title>node {}: {count} peer messages received in {:.0}-{:.0} ms</title></rect>"##,
                x(bucket * BUCKET_NS),
                y + NODE_H - 2.0 - h,
                (x((bucket + 1) * BUCKET_NS) - x(bucket * BUCKET_NS)).max(0.5),
                n + 1,
                (bucket * BUCKET_NS) as f64 / 1e6,
                ((bucket + 1) * BUCKET_NS) as f64 / 1e6
            );
        }
    }
    for s in &p.spans {
        let (fill, opacity) = match s.what {
            "down" => ("#555", 0.75),
            "isolated" => ("#d33", 0.35),
            "stalled" => ("#f90", 0.4),
            "paused" => ("#39c", 0.4),
            "sending cut off" => ("#d33", 0.15),
            _ => ("#93c", 0.4),
        };
        let y = node_y(s.node);
        let _ = write!(
            svg,
            r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{fill}" fill-opacity="{opacity}"><title>node {} {} from {:.3} ms to {:.3} ms</title></rect>"#,
            x(s.from),
            y + 2.0,
            (x(s.to) - x(s.from)).max(1.0),
            NODE_H - 4.0,
            s.node + 1,
            s.what,
            s.from as f64 / 1e6,
            s.to as f64 / 1e6
        );
    }
    for (n, t) in &p.crashes {
        let _ = write!(
            svg,
            r##"<text x="{:.1}" y="{:.1}" fill="#000" font-weight="bold">✕<title>node {} crashed at {:.3} ms</title></text>"##,
            x(*t) - 4.0,
            node_y(*n) + 14.0,
            n + 1,
            *t as f64 / 1e6
        );
    }
}

fn page(title: &str, summary: &str, violations: &[String], svg: &str) -> String {
    let mut legend = String::new();
    for (name, colour) in [
        ("Produce", "#1f77b4"),
        ("Fetch", "#2ca02c"),
        ("Metadata", "#7f7f7f"),
        ("OffsetCommit/Fetch", "#ff7f0e"),
        ("FindCoordinator", "#bcbd22"),
        ("group", "#9467bd"),
        ("admin", "#8c564b"),
        ("transactions", "#d62728"),
        ("other", "#e377c2"),
    ] {
        let _ = write!(legend, r#"<span style="color:{colour}">■ {name}</span> "#);
    }
    let faults = r##"<span style="color:#555">■ down</span> <span style="color:#d33">■ isolated</span> <span style="color:#f90">■ stalled</span> <span style="color:#93c">■ disk full</span> <span style="color:#9ab">■ peer messages received</span> <span style="color:#d00">| violation</span>"##;
    let found = if violations.is_empty() {
        "<p>The checkers found nothing.</p>".to_string()
    } else {
        let items: String = violations.iter().map(|v| format!("<li>{}</li>", esc(v))).collect();
        format!("<p><b>Violations</b> (red lines):</p><ul>{items}</ul>")
    };
    format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{t}</title><style>body{{font-family:sans-serif;margin:12px}} pre{{white-space:pre-wrap;font-size:12px;background:#f7f7f7;padding:8px}} .scroll{{overflow-x:auto;border:1px solid #ccc}}</style></head>\n<body><h2>{t}</h2><p>Requests: a line from the client when sent to the node when it arrived; the answer a tick on the client's lane (× never arrived). Hover for details.<br>{legend}<br>{faults}</p>{found}<div class=\"scroll\">{svg}</div><pre>{s}</pre></body></html>\n",
        t = esc(title),
        s = esc(summary),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(t_ns: u64, kind: &str, a: u64, b: u64) -> String {
        format!("{{\"t_ns\":{t_ns},\"event\":\"{kind}\",\"a\":{a},\"b\":{b}}}")
    }

    #[test]
    fn a_run_becomes_lanes_spans_requests_and_violations() {
        let lines = vec![
            line(0, "boot", 0, 1),
            line(0, "boot", 1, 1),
            line(1_000_000, "connect", 7, 3 << 32 | 1),
            line(1_000_000, "send", 7, 0),
            line(1_500_000, "request", 1 << 32 | 7, 99),
            line(2_000_000, "response", 7, 5),
            line(2_000_000, "send", 7, 3),
            line(3_000_000, "crash", 1, 0),
            line(3_000_000, "closed", 7, 0),
            line(4_000_000, "peer", 16, 1),
            line(9_000_000, "boot", 1, 2),
            line(10_000_000, "heal", 0, 0),
        ];
        let p = build(&lines);
        assert_eq!((p.nodes, p.clients.clone()), (2, vec![3]));
        assert_eq!(p.reqs.len(), 2);
        assert_eq!((p.reqs[0].node, p.reqs[0].arrived, p.reqs[0].answered), (1, Some(1_500_000), Some(2_000_000)));
        assert_eq!((p.reqs[1].api, p.reqs[1].arrived, p.reqs[1].answered), (3, None, None));
        assert_eq!(p.spans.len(), 1);
        assert_eq!(
            (p.spans[0].node, p.spans[0].what, p.spans[0].from, p.spans[0].to),
            (1, "down", 3_000_000, 9_000_000)
        );
        assert_eq!(p.peer[&0][&0], 1);
        let html = render("seed 1", "summary <x>", &lines, &["t=5ms: lost-write: <r>".to_string()]);
        assert!(html.contains("node 2") && html.contains("client 3") && html.contains("summary &lt;x&gt;"));
        assert!(html.contains("lost-write: &lt;r&gt;") && html.contains(">violation<"), "the violation is marked");
        assert!(html.contains("Produce (API 0) from client 3 to node 2"), "requests carry their tooltips");
    }

    /// A trace is kept from after the first boots: nodes that never restart get their lanes
    /// from what else names them, and a controlled stop is drawn down until the next boot.
    #[test]
    fn nodes_that_never_boot_in_the_trace_have_lanes_and_stops_are_down() {
        let lines = vec![
            line(1_000_000, "connect", 7, 3 << 32),
            line(2_000_000, "peer", 16 + 2, 1),
            line(3_000_000, "stop", 1, 0),
            line(4_000_000, "exit", 1, 0),
            line(6_000_000, "boot", 1, 2),
        ];
        let p = build(&lines);
        assert_eq!(p.nodes, 3, "node 0 by its connection, node 2 by a peer message, node 1 by its stop");
        assert_eq!(p.crashes, vec![], "a stop is not a crash");
        let down: Vec<_> = p.spans.iter().map(|s| (s.node, s.what, s.from, s.to)).collect();
        assert_eq!(down, vec![(1, "down", 4_000_000, 6_000_000)]);
    }
}
