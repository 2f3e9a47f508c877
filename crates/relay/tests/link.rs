//! One relay without Redis, gateways played by real gRPC clients.

mod support;

use std::collections::HashSet;

use support::*;
use switchyard_proto::relay::v1::{
    FrameKind, PublishRequest, backend_event, link_message::Kind, publish_request,
};
use tonic::Code;

#[tokio::test]
async fn a_broadcast_reaches_every_other_gateway_once_and_not_its_origin() -> anyhow::Result<()> {
    let relay = start_relay(None, &[])?;
    let mut a = Gw::link(&relay, "a", &["/"]).await?;
    let mut b = Gw::link(&relay, "b", &["/"]).await?;
    let mut c = Gw::link(&relay, "c", &["/"]).await?;
    for gw in [&mut a, &mut b, &mut c] {
        let m = gw.wait_members("/", 3).await?;
        assert_eq!(m, vec!["a", "b", "c"]);
    }
    a.broadcast("hello").await?;
    for gw in [&mut b, &mut c] {
        let f = gw.next_frame().await?;
        assert_eq!(payload(&f), "hello");
        assert_eq!(f.origin, "a");
        assert_eq!(f.seq, 1);
    }
    // c's marker is sent after c saw a's frame, so a would have got its own frame before it.
    c.broadcast("marker").await?;
    let f = a.next_frame().await?;
    assert_eq!((payload(&f), f.origin.as_str()), ("marker".into(), "c"));
    let f = b.next_frame().await?;
    assert_eq!(payload(&f), "marker", "b got a's frame exactly once");
    Ok(())
}

#[tokio::test]
async fn frames_of_one_origin_arrive_in_order() -> anyhow::Result<()> {
    let relay = start_relay(None, &[])?;
    let mut a = Gw::link(&relay, "a", &["/"]).await?;
    let mut b = Gw::link(&relay, "b", &["/"]).await?;
    b.wait_members("/", 2).await?;
    for i in 0..1000 {
        a.broadcast(&i.to_string()).await?;
    }
    for i in 0..1000u64 {
        let f = b.next_frame().await?;
        assert_eq!(payload(&f), i.to_string());
        assert_eq!(f.seq, i + 1);
    }
    a.wait_acked(1000).await?;
    Ok(())
}

#[tokio::test]
async fn a_response_reaches_only_its_target() -> anyhow::Result<()> {
    let relay = start_relay(None, &[])?;
    let mut a = Gw::link(&relay, "a", &["/"]).await?;
    let mut b = Gw::link(&relay, "b", &["/"]).await?;
    let mut c = Gw::link(&relay, "c", &["/"]).await?;
    c.wait_members("/", 3).await?;
    a.send("/", FrameKind::Request, b"req", "").await?;
    assert_eq!(payload(&b.next_frame().await?), "req");
    assert_eq!(payload(&c.next_frame().await?), "req");
    b.send("/", FrameKind::Response, b"resp", "a").await?;
    let f = a.next_frame().await?;
    assert_eq!(
        (payload(&f), f.kind),
        ("resp".into(), FrameKind::Response as i32)
    );
    assert_eq!(f.target, "a");
    // Had c received the response, it would precede this broadcast (same origin b).
    b.broadcast("after").await?;
    assert_eq!(payload(&c.next_frame().await?), "after");
    assert_eq!(payload(&a.next_frame().await?), "after");
    Ok(())
}

#[tokio::test]
async fn a_link_without_hello_is_invalid_argument() -> anyhow::Result<()> {
    let relay = start_relay(None, &[])?;
    let first = frame("/", 1, FrameKind::Broadcast, b"x", "");
    let err = link_raw(&relay, Some(first)).await.err().map(|s| s.code());
    assert_eq!(err, Some(Code::InvalidArgument));
    let empty = hello("", &["/"], 1);
    let err = link_raw(&relay, Some(empty)).await.err().map(|s| s.code());
    assert_eq!(err, Some(Code::InvalidArgument));
    Ok(())
}

#[tokio::test]
async fn an_oversize_frame_ends_the_link_with_out_of_range() -> anyhow::Result<()> {
    let relay = start_relay(None, &["--max-frame-bytes", "65536"])?;
    let mut a = Gw::link(&relay, "a", &["/"]).await?;
    let mut b = Gw::link(&relay, "b", &["/"]).await?;
    b.wait_members("/", 2).await?;
    a.send("/", FrameKind::Broadcast, &vec![7u8; 65536], "")
        .await?;
    assert_eq!(
        b.next_frame().await?.payload.len(),
        65536,
        "the limit itself is fine"
    );
    a.send("/", FrameKind::Broadcast, &vec![7u8; 65537], "")
        .await?;
    let (status, _) = a.next_error().await?;
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(status.message().contains("--max-frame-bytes"), "{status:?}");
    // Far above the decoder's limit too.
    let mut c = Gw::link(&relay, "c", &["/"]).await?;
    c.send("/", FrameKind::Broadcast, &vec![7u8; 1024 * 1024], "")
        .await?;
    let (status, _) = c.next_error().await?;
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(status.message().contains("--max-frame-bytes"), "{status:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_that_stops_reading_is_cut_and_the_others_get_everything() -> anyhow::Result<()> {
    let relay = start_relay(None, &["--link-queue", "16"])?;
    let mut a = Gw::link(&relay, "a", &["/"]).await?;
    let mut b = Gw::link(&relay, "b", &["/"]).await?;
    let mut c = Gw::link(&relay, "c", &["/"]).await?;
    // The slow gateway: links, then never reads its stream.
    let (_slow_tx, mut slow) = link_raw(&relay, Some(hello("slow", &["/"], 1))).await?;
    b.wait_members("/", 4).await?;
    c.wait_members("/", 4).await?;
    const N: usize = 400;
    const IN_FLIGHT: usize = 4;
    let body = "x".repeat(32 * 1024);
    // a sends in lockstep with b and c (at most IN_FLIGHT frames ahead of them), so only the
    // gateway that does not read can fill its queue, however slow this machine is.
    let mut received = 0;
    for i in 0..N + IN_FLIGHT {
        if i < N {
            a.broadcast(&format!("{i}:{body}")).await?;
        }
        if i >= IN_FLIGHT {
            for gw in [&mut b, &mut c] {
                let f = gw.next_frame().await?;
                assert!(
                    payload(&f).starts_with(&format!("{received}:")),
                    "{} frame {received}",
                    gw.node_id
                );
            }
            received += 1;
        }
    }
    assert_eq!(received, N);
    let m = b.wait_members("/", 3).await?;
    assert_eq!(
        m,
        vec!["a", "b", "c"],
        "the cut gateway left the membership"
    );
    assert!(
        metrics(&relay)
            .await?
            .contains("switchyard_relay_links_cut_total{reason=\"queue_full\"} 1"),
        "the cut is counted"
    );
    // When the slow gateway reads at last, its stream ends with RESOURCE_EXHAUSTED.
    let mut frames = 0;
    let status = loop {
        match slow.message().await {
            Ok(Some(m)) => {
                if matches!(m.kind, Some(Kind::Frame(_))) {
                    frames += 1;
                }
            }
            Ok(None) => anyhow::bail!("slow link ended without a status"),
            Err(s) => break s,
        }
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(frames < N, "the slow link missed frames ({frames})");
    Ok(())
}

#[tokio::test]
async fn publish_reaches_every_linked_gateway() -> anyhow::Result<()> {
    let relay = start_relay(None, &[])?;
    let mut gws = Vec::new();
    for id in ["a", "b", "c"] {
        gws.push(Gw::link(&relay, id, &["/", "/chat"]).await?);
    }
    for gw in &mut gws {
        gw.wait_members("/chat", 3).await?;
    }
    let mut request = tonic::Request::new(PublishRequest {
        namespace: "/chat".into(),
        rooms: vec!["room1".into()],
        except: vec!["muted".into()],
        event: "news".into(),
        data: Some(publish_request::Data::Json(r#"{"n":1}"#.into())),
    });
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {PUBLISH_TOKEN}").parse()?);
    let resp = client(&relay).await?.publish(request).await?.into_inner();
    assert_eq!(resp.gateways, 3);
    let mut origins = HashSet::new();
    for gw in &mut gws {
        let f = gw.next_frame().await?;
        assert_eq!(f.namespace, "/chat");
        assert!(f.payload.is_empty());
        let ev = f
            .event
            .clone()
            .ok_or_else(|| anyhow::anyhow!("no event in {f:?}"))?;
        assert_eq!(ev.event, "news");
        assert_eq!(ev.rooms, vec!["room1"]);
        assert_eq!(ev.except, vec!["muted"]);
        assert_eq!(
            ev.data,
            Some(backend_event::Data::Json(r#"{"n":1}"#.into()))
        );
        origins.insert(f.origin);
    }
    assert_eq!(origins.len(), 1);

    // Without the token, or with bad JSON, it is refused.
    let bare = PublishRequest {
        namespace: "/chat".into(),
        event: "news".into(),
        data: Some(publish_request::Data::Json("1".into())),
        ..PublishRequest::default()
    };
    let err = client(&relay)
        .await?
        .publish(bare.clone())
        .await
        .err()
        .map(|s| s.code());
    assert_eq!(err, Some(Code::Unauthenticated));
    let mut bad = tonic::Request::new(PublishRequest {
        data: Some(publish_request::Data::Json("{not json".into())),
        ..bare
    });
    bad.metadata_mut()
        .insert("authorization", format!("Bearer {PUBLISH_TOKEN}").parse()?);
    let err = client(&relay)
        .await?
        .publish(bad)
        .await
        .err()
        .map(|s| s.code());
    assert_eq!(err, Some(Code::InvalidArgument));
    Ok(())
}

#[tokio::test]
async fn a_relinking_gateway_learns_what_to_resend_and_duplicates_are_dropped() -> anyhow::Result<()>
{
    let relay = start_relay(None, &[])?;
    let mut b = Gw::link(&relay, "b", &["/"]).await?;
    let mut a = Gw::link_as(&relay, "a", &["/"], 100).await?;
    assert_eq!(a.welcome.accepted_seq, 0);
    b.wait_members("/", 2).await?;
    for i in 1..=5 {
        a.broadcast(&i.to_string()).await?;
    }
    a.wait_acked(5).await?;
    drop(a);
    let a2 = Gw::link_as(&relay, "a", &["/"], 100).await?;
    assert_eq!(a2.welcome.accepted_seq, 5);
    // A careless gateway resends 4 and 5 anyway: they are dropped.
    for seq in 4..=7 {
        a2.send_seq(
            "/",
            seq,
            FrameKind::Broadcast,
            seq.to_string().as_bytes(),
            "",
        )
        .await?;
    }
    let got: Vec<String> = {
        let mut v = Vec::new();
        for _ in 0..7 {
            v.push(payload(&b.next_frame().await?));
        }
        v
    };
    assert_eq!(got, ["1", "2", "3", "4", "5", "6", "7"]);
    // An older incarnation of the same node is refused.
    let err = Gw::link_as(&relay, "a", &["/"], 99)
        .await
        .err()
        .map(|e| format!("{e:#}"));
    assert!(err.is_some_and(|e| e.contains("newer incarnation")));
    Ok(())
}
