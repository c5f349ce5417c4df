//! Coordination through a real etcd server (Debian's etcd-server): one daemon acts for a
//! host at a time, a standby takes over when the acting daemon goes, and promises of room on
//! a destination, made concurrently by several daemons, never exceed that room.

mod common;

use common::Etcd;
use memscale::coord::{Arrival, Coord, CoordConfig, CoordError, Owner};
use memscale::units::{Bytes, Dur};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn session(
    etcd: &Etcd,
    name: &str,
) -> (
    Arc<Coord>,
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<()>,
) {
    let c = Arc::new(Coord::new(CoordConfig {
        etcd: vec![etcd.url.clone()],
        prefix: "/t".into(),
        ttl: Dur::secs(2),
        name: Some(name.into()),
    }));
    let (tx, rx) = tokio::sync::watch::channel(false);
    let k = c.clone();
    let task = tokio::spawn(async move { k.keep_alive(rx).await });
    (c, tx, task)
}

async fn until(what: &str, secs: u64, mut f: impl AsyncFnMut() -> bool) {
    let t0 = Instant::now();
    while !f().await {
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "timed out after {secs} s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn promise(to: &str, guest: &str, mib: u64) -> Arrival {
    Arrival {
        to: to.into(),
        guest: guest.into(),
        from: "src".into(),
        size: Bytes::from_mib(mib),
        until: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0)
            + 120.0,
        by: String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_daemon_acts_for_a_host_and_a_standby_takes_over() {
    let etcd = Etcd::start();
    let (a, a_stop, a_task) = session(&etcd, "alpha");
    let (b, _b_stop, _b_task) = session(&etcd, "beta");
    until("both sessions", 20, async || a.live() && b.live()).await;
    assert_eq!(a.own("h1").await.expect("own"), Owner::Me);
    match b.own("h1").await.expect("own") {
        Owner::Other(o) => assert!(o.starts_with("alpha#"), "{o}"),
        Owner::Me => panic!("two daemons act for h1"),
    }
    // Another host is free for the standby.
    assert_eq!(b.own("h2").await.expect("own"), Owner::Me);
    assert!(matches!(a.own("h2").await.expect("own"), Owner::Other(_)));
    // A clean stop hands h1 over at once (the lease is revoked).
    a_stop.send(true).expect("stop");
    a_task.await.expect("keep-alive task");
    until("beta to act for h1", 10, async || {
        b.own("h1").await.ok() == Some(Owner::Me)
    })
    .await;

    // A daemon that dies without a word: its hosts pass on when its lease runs out.
    let (c, _c_stop, c_task) = session(&etcd, "gamma");
    until("gamma's session", 20, async || c.live()).await;
    assert_eq!(c.own("h3").await.expect("own"), Owner::Me);
    assert!(matches!(b.own("h3").await.expect("own"), Owner::Other(_)));
    c_task.abort();
    until(
        "beta to act for h3 once gamma's lease lapsed",
        20,
        async || b.own("h3").await.ok() == Some(Owner::Me),
    )
    .await;
    // And gamma, still running but no longer renewing, knows it no longer holds anything.
    until("gamma to see its session gone", 10, async || !c.live()).await;
    assert!(matches!(c.own("h3").await, Err(CoordError::NoSession)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_promises_never_overfill_a_destination() {
    let etcd = Etcd::start();
    let mut sessions = Vec::new();
    for n in ["d1", "d2", "d3"] {
        sessions.push(session(&etcd, n));
    }
    for (s, _, _) in &sessions {
        let s = s.clone();
        until("a session", 20, async || s.live()).await;
    }
    // Room for three 300 MiB guests on "dest"; twelve movers on three daemons race for it.
    let room = Bytes::from_mib(1000);
    let mut tasks = Vec::new();
    for i in 0..12 {
        let c = sessions[i % 3].0.clone();
        tasks.push(tokio::spawn(async move {
            c.reserve(&promise("dest", &format!("g{i}"), 300), room)
                .await
        }));
    }
    let mut granted = 0;
    for t in tasks {
        match t.await.expect("task") {
            Ok(true) => granted += 1,
            Ok(false) | Err(CoordError::Contended(_)) => {}
            Err(e) => panic!("etcd error: {e}"),
        }
    }
    let all = sessions[0].0.arrivals().await.expect("arrivals");
    let total: u64 = all
        .iter()
        .filter(|a| a.to == "dest")
        .map(|a| a.size.0)
        .sum();
    assert_eq!(all.len(), granted, "{all:?}");
    assert!(
        (1..=3).contains(&granted),
        "{granted} promises of 300 MiB on 1000 MiB"
    );
    assert!(total <= room.0, "promised {total} on a room of {}", room.0);
    // Each promise names its daemon; the keys live in etcd where operators can see them.
    let keys = etcd.get_prefix("/t/arrivals/dest/");
    assert_eq!(keys.len(), granted, "{keys:?}");
    assert!(
        keys.iter().all(|(_, v)| v.contains("\"by\":\"d")),
        "{keys:?}"
    );
    // What is left is still promised, no more.
    let left = room.0 - total;
    let more = sessions[1]
        .0
        .reserve(&promise("dest", "late", left / (1 << 20) + 1), room)
        .await
        .expect("reserve");
    assert!(!more, "a promise beyond the room was granted");
    if left >= 100 << 20 {
        assert!(
            sessions[1]
                .0
                .reserve(&promise("dest", "small", 100), room)
                .await
                .expect("reserve")
        );
    }
    // A released promise frees its room; a daemon's promises go with its lease.
    let first = &all[0];
    sessions[0]
        .0
        .release(&first.to, &first.guest)
        .await
        .expect("release");
    let (_, stop, task) = sessions.remove(2);
    stop.send(true).expect("stop");
    task.await.expect("task");
    let after = sessions[0].0.arrivals().await.expect("arrivals");
    assert!(
        after.iter().all(|a| a.by != "d3" && a.guest != first.guest),
        "{after:?}"
    );
}
