//! Two relay replicas sharing one Redis: every case runs on a single `redis-server` and on a
//! three-master Redis Cluster (`redis+cluster://…`), each started by the testkit.

mod support;

use support::*;
use switchyard_proto::relay::v1::FrameKind;
use switchyard_testkit::redis::RedisServer;
use switchyard_testkit::redis_cluster::{RedisCluster, RedisDeployment};
use switchyard_testkit::wait::eventually;

/// Runs each case once per kind of Redis: `redis::<case>` and `cluster::<case>`.
macro_rules! on_every_redis {
    ($($case:ident),* $(,)?) => {
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() -> anyhow::Result<()> {
                    super::$case::<super::RedisServer>().await
                }
            )*
        }
        mod cluster {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() -> anyhow::Result<()> {
                    super::$case::<super::RedisCluster>().await
                }
            )*
        }
    };
}

on_every_redis!(
    gateways_on_different_replicas_exchange_frames_exactly_once,
    classic_pubsub_exchanges_frames_exactly_once_too,
    membership_spans_replicas_and_follows_links,
    a_gateway_relinking_to_another_replica_resends_without_doubles,
    publish_reaches_gateways_on_every_replica,
    losing_redis_cuts_links_and_they_can_relink_once_it_is_back,
    a_relay_killed_mid_stream_loses_and_doubles_nothing,
);

async fn gateways_on_different_replicas_exchange_frames_exactly_once<R: RedisDeployment>()
-> anyhow::Result<()> {
    // This redis-server is 7.x: `auto` picks sharded pub/sub.
    exchange_exactly_once::<R>(&[]).await
}

async fn classic_pubsub_exchanges_frames_exactly_once_too<R: RedisDeployment>() -> anyhow::Result<()>
{
    exchange_exactly_once::<R>(&["--pubsub", "classic"]).await
}

async fn exchange_exactly_once<R: RedisDeployment>(extra: &[&str]) -> anyhow::Result<()> {
    let redis = R::start()?;
    let r1 = start_relay(Some(&redis.url()), extra)?;
    let r2 = start_relay(Some(&redis.url()), extra)?;
    let mode = if extra.is_empty() {
        "sharded=true"
    } else {
        "sharded=false"
    };
    assert!(r1.log_tail(50).contains(mode), "{}", r1.log_tail(50));
    let mut a = Gw::link(&r1, "a", &["/"]).await?;
    let mut b = Gw::link(&r1, "b", &["/"]).await?;
    let mut c = Gw::link(&r2, "c", &["/"]).await?;
    let mut d = Gw::link(&r2, "d", &["/"]).await?;
    for gw in [&mut a, &mut b, &mut c, &mut d] {
        assert_eq!(gw.wait_members("/", 4).await?, vec!["a", "b", "c", "d"]);
    }
    const N: u64 = 200;
    for i in 0..N {
        a.broadcast(&format!("a{i}")).await?;
        c.broadcast(&format!("c{i}")).await?;
    }
    // Every receiver gets each origin's frames once, in order (origins interleave freely).
    for (gw, origins) in [(&mut b, ["a", "c"]), (&mut d, ["a", "c"])] {
        let mut next = [0u64; 2];
        for _ in 0..2 * N {
            let f = gw.next_frame().await?;
            let k = origins
                .iter()
                .position(|o| *o == f.origin)
                .ok_or_else(|| anyhow::anyhow!("unexpected origin {}", f.origin))?;
            assert_eq!(
                payload(&f),
                format!("{}{}", origins[k], next[k]),
                "{}",
                gw.node_id
            );
            next[k] += 1;
        }
    }
    for i in 0..N {
        assert_eq!(
            payload(&a.next_frame().await?),
            format!("c{i}"),
            "a gets only c's"
        );
        assert_eq!(
            payload(&c.next_frame().await?),
            format!("a{i}"),
            "c gets only a's"
        );
    }
    // Nothing more: a marker from d arrives next everywhere.
    d.broadcast("end").await?;
    for gw in [&mut a, &mut b, &mut c] {
        assert_eq!(payload(&gw.next_frame().await?), "end", "{}", gw.node_id);
    }
    // A response crosses replicas to its target only.
    d.send("/", FrameKind::Response, b"to-a", "a").await?;
    d.broadcast("end2").await?;
    assert_eq!(payload(&a.next_frame().await?), "to-a");
    assert_eq!(payload(&a.next_frame().await?), "end2");
    assert_eq!(payload(&b.next_frame().await?), "end2");
    assert_eq!(payload(&c.next_frame().await?), "end2");
    Ok(())
}

async fn membership_spans_replicas_and_follows_links<R: RedisDeployment>() -> anyhow::Result<()> {
    let redis = R::start()?;
    let r1 = start_relay(Some(&redis.url()), &[])?;
    let r2 = start_relay(Some(&redis.url()), &[])?;
    let mut a = Gw::link(&r1, "a", &["/", "/chat"]).await?;
    let mut b = Gw::link(&r2, "b", &["/"]).await?;
    let c = Gw::link(&r2, "c", &["/chat"]).await?;
    assert_eq!(a.wait_members("/", 2).await?, vec!["a", "b"]);
    assert_eq!(a.wait_members("/chat", 2).await?, vec!["a", "c"]);
    assert_eq!(b.wait_members("/", 2).await?, vec!["a", "b"]);
    assert_eq!(members(&r1, "/chat").await?, vec!["a", "c"]);
    assert_eq!(members(&r2, "/").await?, vec!["a", "b"]);
    drop(c);
    assert_eq!(a.wait_members("/chat", 1).await?, vec!["a"]);
    assert_eq!(members(&r2, "/chat").await?, vec!["a"]);
    // A replica that dies takes its gateways out of the count (its entries expire).
    r2.kill()?;
    assert_eq!(a.wait_members("/", 1).await?, vec!["a"]);
    Ok(())
}

async fn a_gateway_relinking_to_another_replica_resends_without_doubles<R: RedisDeployment>()
-> anyhow::Result<()> {
    let redis = R::start()?;
    let r1 = start_relay(Some(&redis.url()), &[])?;
    let r2 = start_relay(Some(&redis.url()), &[])?;
    let mut b = Gw::link(&r2, "b", &["/"]).await?;
    let mut a = Gw::link_as(&r1, "a", &["/"], 7).await?;
    b.wait_members("/", 2).await?;
    for i in 1..=10 {
        a.broadcast(&i.to_string()).await?;
    }
    a.wait_acked(10).await?;
    r1.kill()?;
    drop(a);
    let a2 = Gw::link_as(&r2, "a", &["/"], 7).await?;
    assert_eq!(
        a2.welcome.accepted_seq, 10,
        "the mark is shared through Redis"
    );
    // Resend a window that overlaps what was accepted.
    for seq in 8..=12u64 {
        a2.send_seq(
            "/",
            seq,
            FrameKind::Broadcast,
            seq.to_string().as_bytes(),
            "",
        )
        .await?;
    }
    let mut got = Vec::new();
    for _ in 0..12 {
        got.push(payload(&b.next_frame().await?));
    }
    let want: Vec<String> = (1..=12).map(|i| i.to_string()).collect();
    assert_eq!(got, want);
    Ok(())
}

async fn publish_reaches_gateways_on_every_replica<R: RedisDeployment>() -> anyhow::Result<()> {
    use switchyard_proto::relay::v1::{PublishRequest, publish_request};
    let redis = R::start()?;
    let r1 = start_relay(Some(&redis.url()), &[])?;
    let r2 = start_relay(Some(&redis.url()), &[])?;
    let mut a = Gw::link(&r1, "a", &["/"]).await?;
    let mut b = Gw::link(&r2, "b", &["/"]).await?;
    a.wait_members("/", 2).await?;
    b.wait_members("/", 2).await?;
    let mut req = tonic::Request::new(PublishRequest {
        namespace: "/".into(),
        event: "tick".into(),
        data: Some(publish_request::Data::Msgpack(vec![0x2a].into())),
        ..PublishRequest::default()
    });
    req.metadata_mut()
        .insert("authorization", format!("Bearer {PUBLISH_TOKEN}").parse()?);
    let resp = client(&r1).await?.publish(req).await?.into_inner();
    assert_eq!(resp.gateways, 2);
    for gw in [&mut a, &mut b] {
        let f = gw.next_frame().await?;
        assert_eq!(f.event.map(|e| e.event), Some("tick".to_string()));
    }
    Ok(())
}

async fn losing_redis_cuts_links_and_they_can_relink_once_it_is_back<R: RedisDeployment>()
-> anyhow::Result<()> {
    let redis = R::start()?;
    let r1 = start_relay(Some(&redis.url()), &[])?;
    let mut a = Gw::link(&r1, "a", &["/"]).await?;
    a.wait_members("/", 1).await?;
    redis.kill()?;
    let (status, _) = a.next_error().await?;
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    wait_readyz(&r1, 503).await?;
    redis.restart_empty()?;
    wait_readyz(&r1, 200).await?;
    // The relay resubscribes by itself; relinking succeeds once it has.
    let mut a = eventually("a relink once the relay resubscribed", WAIT, async || {
        Gw::link(&r1, "a", &["/"]).await
    })
    .await?;
    let mut b = Gw::link(&r1, "b", &["/"]).await?;
    a.wait_members("/", 2).await?;
    b.broadcast("back").await?;
    assert_eq!(payload(&a.next_frame().await?), "back");
    Ok(())
}

/// Polls `/readyz` until it answers `code`.
async fn wait_readyz(
    relay: &switchyard_testkit::process::Service,
    code: u16,
) -> anyhow::Result<()> {
    let url = format!("{}/readyz", http_url(relay)?);
    eventually(format!("/readyz to answer {code}"), WAIT, async || {
        let got = switchyard_testkit::reqwest::get(&url)
            .await?
            .status()
            .as_u16();
        anyhow::ensure!(got == code, "it answers {got}");
        Ok(())
    })
    .await
}

/// A relay killed mid-stream, at the relay level: the sender's relay dies while it
/// streams; the sender relinks to the other replica and resends what `Welcome` says is
/// missing; a receiver linked to both replicas (deduplicating by origin + seq, as a gateway
/// adapter does) and a receiver on the surviving replica both end with every frame once.
async fn a_relay_killed_mid_stream_loses_and_doubles_nothing<R: RedisDeployment>()
-> anyhow::Result<()> {
    let redis = R::start()?;
    let r1 = start_relay(Some(&redis.url()), &[])?;
    let r2 = start_relay(Some(&redis.url()), &[])?;
    let mut c = Gw::link(&r2, "c", &["/"]).await?;
    let mut b_on_r1 = Gw::link(&r1, "b", &["/"]).await?;
    let mut b_on_r2 = Gw::link(&r2, "b", &["/"]).await?;
    let a = Gw::link_as(&r1, "a", &["/"], 42).await?;
    assert_eq!(
        c.wait_members("/", 3).await?,
        vec!["a", "b", "c"],
        "b counts once"
    );
    const N: u64 = 300;
    for seq in 1..=N {
        a.send_seq(
            "/",
            seq,
            FrameKind::Broadcast,
            seq.to_string().as_bytes(),
            "",
        )
        .await?;
    }
    // Kill r1 once part of the stream went through.
    let mut c_got = Vec::new();
    while c_got.len() < 20 {
        c_got.push(c.next_frame().await?.seq);
    }
    r1.kill()?;
    drop(a);
    let a2 = Gw::link_as(&r2, "a", &["/"], 42).await?;
    let resume = a2.welcome.accepted_seq;
    assert!((20..=N).contains(&resume), "accepted_seq {resume}");
    for seq in resume + 1..=N {
        a2.send_seq(
            "/",
            seq,
            FrameKind::Broadcast,
            seq.to_string().as_bytes(),
            "",
        )
        .await?;
    }
    while c_got.len() < N as usize {
        c_got.push(c.next_frame().await?.seq);
    }
    assert_eq!(
        c_got,
        (1..=N).collect::<Vec<_>>(),
        "c: every frame once, in order"
    );

    // b: union of both links, deduplicated by (origin, seq) as the adapter does.
    let mut b_seen = Vec::new();
    let mut high = 0;
    while let Ok(f) = b_on_r1.next_frame().await {
        if f.seq > high {
            high = f.seq;
            b_seen.push(f.seq);
        }
    }
    while high < N {
        let f = b_on_r2.next_frame().await?;
        if f.seq > high {
            high = f.seq;
            b_seen.push(f.seq);
        }
    }
    assert_eq!(
        b_seen,
        (1..=N).collect::<Vec<_>>(),
        "b: every frame once, in order"
    );
    Ok(())
}
