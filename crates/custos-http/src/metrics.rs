//! Prometheus metrics (`GET /metrics`, text exposition format 0.0.4).
//!
//! Request counts by route, method and status; request latency histograms by route; gate
//! decisions by reason; events by outcome. Labels carry route templates and reason codes only,
//! never an id or a token.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

use crate::feed::FeedFigures;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

#[derive(Debug, Default)]
struct Histogram {
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Debug, Default)]
struct Counters {
    requests: BTreeMap<(String, &'static str, u16), u64>,
    latency: BTreeMap<String, Histogram>,
    gate: BTreeMap<&'static str, u64>,
    events: BTreeMap<&'static str, u64>,
    exports: BTreeMap<&'static str, u64>,
    export_conversations: BTreeMap<&'static str, u64>,
    export_bytes: u64,
    export_seconds: f64,
}

#[derive(Debug, Default)]
pub struct Metrics {
    counters: Mutex<Counters>,
}

impl Metrics {
    pub fn request(&self, route: &str, method: &'static str, status: u16, elapsed: Duration) {
        let Ok(mut c) = self.counters.lock() else {
            return;
        };
        *c.requests
            .entry((route.to_owned(), method, status))
            .or_default() += 1;
        let seconds = elapsed.as_secs_f64();
        let histogram = c.latency.entry(route.to_owned()).or_default();
        for (bucket, bound) in histogram.buckets.iter_mut().zip(BUCKETS) {
            if seconds <= bound {
                *bucket += 1;
            }
        }
        histogram.count += 1;
        histogram.sum += seconds;
    }

    pub fn gate_decision(&self, reason: &'static str) {
        if let Ok(mut c) = self.counters.lock() {
            *c.gate.entry(reason).or_default() += 1;
        }
    }

    pub fn event(&self, outcome: &'static str) {
        if let Ok(mut c) = self.counters.lock() {
            *c.events.entry(outcome).or_default() += 1;
        }
    }

    /// An export's end: `done`, `failed` or `refused`.
    pub fn export(&self, outcome: &'static str) {
        if let Ok(mut c) = self.counters.lock() {
            *c.exports.entry(outcome).or_default() += 1;
        }
    }

    /// What a finished export wrote, and how long it took.
    pub fn export_written(&self, included: u64, excluded: u64, bytes: u64, elapsed: Duration) {
        if let Ok(mut c) = self.counters.lock() {
            *c.export_conversations.entry("included").or_default() += included;
            *c.export_conversations.entry("excluded").or_default() += excluded;
            c.export_bytes += bytes;
            c.export_seconds += elapsed.as_secs_f64();
        }
    }

    /// The exposition text.
    pub fn render(&self, gate_index_accounts: usize, loaded: bool, feed: FeedFigures) -> String {
        let Ok(c) = self.counters.lock() else {
            return String::new();
        };
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP custos_http_requests_total HTTP requests by route template, method and status."
        );
        let _ = writeln!(out, "# TYPE custos_http_requests_total counter");
        for ((route, method, status), n) in &c.requests {
            let _ = writeln!(
                out,
                "custos_http_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP custos_http_request_duration_seconds Time to answer a request, by route template."
        );
        let _ = writeln!(out, "# TYPE custos_http_request_duration_seconds histogram");
        for (route, h) in &c.latency {
            for (bound, n) in BUCKETS.iter().zip(h.buckets) {
                let _ = writeln!(
                    out,
                    "custos_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"{bound}\"}} {n}"
                );
            }
            let _ = writeln!(
                out,
                "custos_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "custos_http_request_duration_seconds_sum{{route=\"{route}\"}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "custos_http_request_duration_seconds_count{{route=\"{route}\"}} {}",
                h.count
            );
        }
        let _ = writeln!(
            out,
            "# HELP custos_gate_decisions_total Gate answers by reason code."
        );
        let _ = writeln!(out, "# TYPE custos_gate_decisions_total counter");
        for (reason, n) in &c.gate {
            let _ = writeln!(
                out,
                "custos_gate_decisions_total{{reason=\"{reason}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP custos_events_total Events of POST /v1/events by outcome."
        );
        let _ = writeln!(out, "# TYPE custos_events_total counter");
        for (outcome, n) in &c.events {
            let _ = writeln!(out, "custos_events_total{{outcome=\"{outcome}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP custos_exports_total Training exports by outcome (done, failed, refused, stopped)."
        );
        let _ = writeln!(out, "# TYPE custos_exports_total counter");
        for (outcome, n) in &c.exports {
            let _ = writeln!(out, "custos_exports_total{{outcome=\"{outcome}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP custos_export_conversations_total Conversations of finished exports, included or excluded."
        );
        let _ = writeln!(out, "# TYPE custos_export_conversations_total counter");
        for (result, n) in &c.export_conversations {
            let _ = writeln!(
                out,
                "custos_export_conversations_total{{result=\"{result}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP custos_export_bytes_total Bytes of data files written by exports."
        );
        let _ = writeln!(out, "# TYPE custos_export_bytes_total counter");
        let _ = writeln!(out, "custos_export_bytes_total {}", c.export_bytes);
        let _ = writeln!(
            out,
            "# HELP custos_export_seconds_total Time spent running exports."
        );
        let _ = writeln!(out, "# TYPE custos_export_seconds_total counter");
        let _ = writeln!(out, "custos_export_seconds_total {}", c.export_seconds);
        let _ = writeln!(
            out,
            "# HELP custos_gate_index_accounts Accounts in the in-memory gate index."
        );
        let _ = writeln!(out, "# TYPE custos_gate_index_accounts gauge");
        let _ = writeln!(out, "custos_gate_index_accounts {gate_index_accounts}");
        let figures = [
            (
                "custos_gate_index_loaded",
                "gauge",
                "1 once every account of the store is in the gate index (until then, one it lacks is looked up in the store).",
                f64::from(u8::from(loaded)),
            ),
            (
                "custos_gate_feed_lag_seconds",
                "gauge",
                "How far the gate index may be behind the store: time since its last successful read of the change feed began.",
                feed.lag.as_secs_f64(),
            ),
            (
                "custos_gate_feed_polls_total",
                "counter",
                "Reads of the store's change feed.",
                feed.polls as f64,
            ),
            (
                "custos_gate_feed_failures_total",
                "counter",
                "Reads of the change feed that failed (the store could not be read).",
                feed.failures as f64,
            ),
        ];
        for (name, kind, help, value) in figures {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            let _ = writeln!(out, "{name} {value}");
        }
        out
    }
}
