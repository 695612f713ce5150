//! Alerts and metrics on a running node (issue 12, item 4): a cut link makes
//! `peer_silent` and a lag rule fire, on `/alerts` and as `concord_alert_*` metrics,
//! and healing it resolves them; every figure of the engine's metrics is exported
//! with `node` and `peer` labels.

use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use concord::ops::alert::{Comparison, Rule, Signal};
use concord::sync::{Config, SyncEngine};
use concord::{ManualClock, ReplicaId};
use concord_node::config::AlertsConfig;
use concord_node::harness::{Cluster, Options};
use concord_node::proxy::Link;
use concord_node::Kv;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_concord-node"))
}

fn rule(name: &str, signal: Signal, threshold: u64, clear: u64) -> Rule {
    Rule {
        name: name.into(),
        signal,
        comparison: Comparison::Above,
        threshold,
        clear,
        for_ms: 0,
        clear_for_ms: 0,
        window_ms: 60_000,
    }
}

/// The alert `name` (for `peer`) as node `i`'s `/alerts` lists it.
fn alert(c: &Cluster, i: usize, name: &str, peer: Option<&str>) -> Option<serde_json::Value> {
    let doc = c.client(i).get_path("/alerts").ok()?.json();
    doc["alerts"]
        .as_array()?
        .iter()
        .find(|a| a["name"] == name && a["peer"].as_str() == peer)
        .cloned()
}

/// Waits until `cond` holds of the alert, returning it; panics with the last seen.
fn wait_alert(
    c: &Cluster,
    name: &str,
    peer: Option<&str>,
    what: &str,
    cond: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let a = alert(c, 0, name, peer);
        if let Some(a) = a.as_ref().filter(|a| cond(a)) {
            return a.clone();
        }
        assert!(
            Instant::now() < until,
            "{name} never {what}: last seen {a:?}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// The value of the series of `/metrics` named `name` whose labels include every
/// one of `labels` (`None` if there is none).
fn series(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{'))
        })
        .find(|l| labels.iter().all(|want| l.contains(want)))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[test]
fn a_cut_link_fires_alerts_that_resolve_when_it_heals() {
    let opts = Options {
        nodes: 2,
        tag: "alerts".into(),
        alerts: AlertsConfig {
            evaluate_ms: 100,
            rules: vec![
                // Heartbeats every 200 ms: two seconds of silence is a cut link.
                rule("peer_silent", Signal::SilenceMs, 2_000, 1_000),
                rule("lag_writes_test", Signal::LagWrites, 2, 0),
            ],
            ..AlertsConfig::default()
        },
        ..Options::default()
    };
    let mut c = Cluster::start(bin(), &opts).expect("start the cluster");
    for i in 0..2 {
        c.wait_ready(i, Duration::from_secs(30)).expect("ready");
    }
    c.wait_connected(Duration::from_secs(20))
        .expect("connected");
    let quiet = wait_alert(&c, "peer_silent", Some("node-2"), "evaluated", |a| {
        a["state"] == "inactive"
    });
    assert_eq!(quiet["threshold"], 2_000);
    // The built-in rules are on beside the configured ones.
    assert!(alert(&c, 0, "contained_hot_keys", None).is_some());

    c.link(0, 1).set(Link::Cut);
    let mut n0 = c.client(0);
    for k in 0..3 {
        let r = n0.put(&format!("cut-{k}"), "v", "async").unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let lag = wait_alert(&c, "lag_writes_test", Some("node-2"), "fired", |a| {
        a["state"] == "firing"
    });
    assert!(lag["value"].as_u64().unwrap() >= 3, "{lag}");
    let silent = wait_alert(&c, "peer_silent", Some("node-2"), "fired", |a| {
        a["state"] == "firing"
    });
    assert!(silent["value"].as_u64().unwrap() > 2_000, "{silent}");
    let doc = c.client(0).get_path("/alerts").unwrap().json();
    assert!(doc["firing"].as_u64().unwrap() >= 2, "{doc}");
    let text = c.client(0).get_path("/metrics").unwrap().body;
    let firing = |text: &str, name: &str| {
        series(
            text,
            "concord_alert_firing",
            &[
                &format!("alert=\"{name}\""),
                "peer=\"node-2\"",
                "node=\"node-1\"",
            ],
        )
    };
    assert_eq!(firing(&text, "peer_silent"), Some(1.0), "{text}");
    assert_eq!(firing(&text, "lag_writes_test"), Some(1.0));
    assert_eq!(
        series(
            &text,
            "concord_alert_firing",
            &["alert=\"contained_hot_keys\""]
        ),
        Some(0.0)
    );

    c.heal();
    wait_alert(&c, "peer_silent", Some("node-2"), "resolved", |a| {
        a["state"] == "resolved"
    });
    wait_alert(&c, "lag_writes_test", Some("node-2"), "resolved", |a| {
        a["state"] == "resolved"
    });
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let text = c.client(0).get_path("/metrics").unwrap().body;
        if firing(&text, "peer_silent") == Some(0.0)
            && firing(&text, "lag_writes_test") == Some(0.0)
        {
            break;
        }
        assert!(
            Instant::now() < until,
            "the firing gauges stayed up:\n{text}"
        );
        thread::sleep(Duration::from_millis(50));
    }
    assert!(c.panics().is_empty());
}

/// Every field of the engine's [`concord::sync::Metrics`] has a series on
/// `/metrics` (a field added without one fails here), with the `node` label, and the
/// per-peer ones with a `peer` label too.
#[test]
fn every_engine_metric_is_exported_with_node_and_peer_labels() {
    let opts = Options {
        nodes: 2,
        tag: "metrics".into(),
        ..Options::default()
    };
    let mut c = Cluster::start(bin(), &opts).expect("start the cluster");
    for i in 0..2 {
        c.wait_ready(i, Duration::from_secs(30)).expect("ready");
    }
    c.wait_connected(Duration::from_secs(20))
        .expect("connected");
    let r = c.client(0).put("k", "v", "sync").unwrap();
    assert_eq!(r.status, 200, "{}", r.body);

    // The engine's figures, by the names its JSON form gives them.
    let (a, b) = (ReplicaId::from_u128(1), ReplicaId::from_u128(2));
    let engine = SyncEngine::new(a, Kv::new(), ManualClock::new(0), Config::with_peers([b]));
    let json = serde_json::to_value(engine.metrics()).unwrap();
    let fields: Vec<String> = json.as_object().unwrap().keys().cloned().collect();
    let peer_fields: Vec<String> = json["peers"][0]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    let lag_fields: Vec<String> = json["peers"][0]["lag"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    // Where each figure goes; the ones not exported say why.
    let exported = |field: &str| -> Option<&'static str> {
        Some(match field {
            "node" | "incarnation" => return None, // ids: the `node` label
            "clock" | "acked" => return None,      // one label per replica: unbounded
            "peers" | "lag" => return None,        // checked field by field
            "role" => "concord_master",
            "writes" => "concord_writes_total",
            "messages_sent" => "concord_messages_sent_total",
            "messages_received" => "concord_messages_received_total",
            "messages_rejected" => "concord_messages_rejected_total",
            "conflicts_resolved" => "concord_conflicts_total",
            "stale_deltas" => "concord_stale_deltas_total",
            "unbacked_deltas" => "concord_unbacked_deltas_total",
            "retransmits" => "concord_retransmits_total",
            "chunks_sent" => "concord_chunks_sent_total",
            "lease_writes" => "concord_lease_writes_total",
            "contained_hot_keys" => "concord_contained_hot_keys",
            "set_aside_writes" => "concord_set_aside_writes",
            "hot_keys_set_aside" => "concord_hot_keys_set_aside_total",
            "hot_keys_healed" => "concord_hot_keys_healed_total",
            "peer" => "concord_peer_connected",
            "protocol_version" => "concord_peer_protocol_version",
            "unacked_writes" => "concord_peer_unacked_writes",
            "oldest_unacked_ms" => "concord_peer_oldest_unacked_ms",
            "since_heard_ms" => "concord_peer_since_heard_ms",
            other => panic!("the engine's metric {other:?} is not exported by the node"),
        })
    };
    let until = Instant::now() + Duration::from_secs(10);
    let text = loop {
        // The mirror runs on the node's tick: wait for the write to show.
        let text = c.client(0).get_path("/metrics").unwrap().body;
        if series(&text, "concord_writes_total", &[]).is_some_and(|v| v >= 1.0) {
            break text;
        }
        assert!(Instant::now() < until, "writes never mirrored:\n{text}");
        thread::sleep(Duration::from_millis(50));
    };
    let node_label = "node=\"node-1\"";
    for f in &fields {
        if let Some(name) = exported(f) {
            let line = text.lines().find(|l| l.starts_with(&format!("{name}{{")));
            assert!(
                line.is_some_and(|l| l.contains(node_label)),
                "{f}: no {name} series with {node_label}:\n{text}"
            );
        }
    }
    for f in peer_fields.iter().chain(&lag_fields) {
        if let Some(name) = exported(f) {
            assert!(
                series(&text, name, &[node_label, "peer=\"node-2\""]).is_some(),
                "{f}: no {name} series for peer node-2:\n{text}"
            );
        }
    }
    assert!(c.panics().is_empty());
}
