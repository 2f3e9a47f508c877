//! Interest routing at the relay, two replicas sharing one Redis, gateways as raw gRPC links:
//! a frame that targets rooms reaches only the links that declared one of them (from their
//! Hello or an acknowledged `Interest`), on either replica; frames without rooms, and links
//! without interest routing, get everything; bad `Interest`s end the link.

mod support;

use support::{Gw, start_relay};
use switchyard_proto::relay::v1::{
    Frame, FrameKind, Hello, Interest, LinkMessage, link_message::Kind,
};
use switchyard_testkit::redis::RedisServer;

fn routed_hello(node_id: &str, rooms: &[&str]) -> LinkMessage {
    LinkMessage {
        kind: Some(Kind::Hello(Hello {
            node_id: node_id.into(),
            namespaces: vec!["/".into()],
            incarnation: 1,
            interest_routing: true,
            interests: vec![Interest {
                version: 1,
                namespace: "/".into(),
                add: rooms.iter().map(|r| (*r).to_owned()).collect(),
                remove: Vec::new(),
            }],
        })),
    }
}

fn to_rooms(rooms: &[&str], payload: &str) -> Frame {
    Frame {
        namespace: "/".into(),
        kind: FrameKind::Broadcast as i32,
        rooms: rooms.iter().map(|r| (*r).to_owned()).collect(),
        payload: payload.as_bytes().to_vec().into(),
        ..Frame::default()
    }
}

/// Waits for the acknowledgement of interest `version` on `gw`.
async fn acked(gw: &mut Gw, version: u64) -> anyhow::Result<()> {
    loop {
        if let Some(Kind::InterestAck(a)) = gw.next_message().await?.kind
            && a.version >= version
        {
            return Ok(());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_frames_reach_only_links_that_declared_a_room_on_either_replica() -> anyhow::Result<()>
{
    let redis = RedisServer::start()?;
    let r1 = start_relay(Some(&redis.url()), &[])?;
    let r2 = start_relay(Some(&redis.url()), &[])?;
    let mut publisher = Gw::link(&r1, "pub", &["/"]).await?;
    let mut a = Gw::link_hello(&r1, routed_hello("a", &["x"])).await?;
    let mut b = Gw::link_hello(&r2, routed_hello("b", &[])).await?;
    let mut all = Gw::link(&r2, "all", &["/"]).await?;
    for gw in [&mut publisher, &mut a, &mut b, &mut all] {
        gw.wait_members("/", 4).await?;
    }

    // b declares y and waits for its replica's acknowledgement: from then on it gets y.
    b.send_message(LinkMessage {
        kind: Some(Kind::Interest(Interest {
            version: 2,
            namespace: "/".into(),
            add: vec!["y".into()],
            remove: Vec::new(),
        })),
    })
    .await?;
    acked(&mut b, 2).await?;

    for (rooms, payload) in [
        (&["x"][..], "to-x"),
        (&["y"][..], "to-y"),
        (&["z"][..], "to-z"),
        (&["z", "y"][..], "to-zy"),
        (&[][..], "to-all"),
    ] {
        publisher.send_frame(to_rooms(rooms, payload)).await?;
    }
    // Each origin's frames arrive in order, so the last frame ("to-all") closes the list.
    for (gw, want) in [
        (&mut a, vec!["to-x", "to-all"]),
        (&mut b, vec!["to-y", "to-zy", "to-all"]),
        (&mut all, vec!["to-x", "to-y", "to-z", "to-zy", "to-all"]),
    ] {
        let mut got = Vec::new();
        while got.last().map(String::as_str) != Some("to-all") {
            let f = gw.next_frame().await?;
            got.push(String::from_utf8(f.payload.to_vec())?);
        }
        assert_eq!(got, want, "{}", gw.node_id);
    }

    // a withdraws x: x's frames stop reaching it.
    a.send_message(LinkMessage {
        kind: Some(Kind::Interest(Interest {
            version: 3,
            namespace: "/".into(),
            add: Vec::new(),
            remove: vec!["x".into()],
        })),
    })
    .await?;
    acked(&mut a, 3).await?;
    publisher.send_frame(to_rooms(&["x"], "x-again")).await?;
    publisher.send_frame(to_rooms(&[], "end")).await?;
    assert_eq!(
        String::from_utf8(a.next_frame().await?.payload.to_vec())?,
        "end"
    );

    // A remote join (AddSockets with `joins`) makes the links it reaches interested in its
    // rooms at once, so the frames after it from the same origin follow it.
    publisher
        .send_frame(Frame {
            joins: vec!["j".into()],
            ..to_rooms(&[], "join-j")
        })
        .await?;
    publisher.send_frame(to_rooms(&["j"], "to-j")).await?;
    for (gw, want) in [
        (&mut a, vec!["join-j", "to-j"]),
        (&mut b, vec!["end", "join-j", "to-j"]),
    ] {
        let mut got = Vec::new();
        while got.last().map(String::as_str) != Some("to-j") {
            got.push(String::from_utf8(gw.next_frame().await?.payload.to_vec())?);
        }
        assert_eq!(got, want, "{}", gw.node_id);
    }

    let text = reqwest_metrics(&r1).await? + &reqwest_metrics(&r2).await?;
    assert!(
        text.lines()
            .any(|l| l.starts_with("switchyard_relay_frames_saved_total ") && !l.ends_with(" 0")),
        "no frame counted as saved"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interest_for_another_namespace_or_without_routing_ends_the_link() -> anyhow::Result<()>
{
    let relay = start_relay(None, &[])?;
    let interest = |namespace: &str| LinkMessage {
        kind: Some(Kind::Interest(Interest {
            version: 1,
            namespace: namespace.into(),
            add: vec!["r".into()],
            remove: Vec::new(),
        })),
    };
    let mut routed = Gw::link_hello(&relay, routed_hello("a", &[])).await?;
    routed.send_message(interest("/other")).await?;
    let mut plain = Gw::link(&relay, "b", &["/"]).await?;
    plain.send_message(interest("/")).await?;
    for gw in [&mut routed, &mut plain] {
        let status = loop {
            match gw.next_message().await {
                Ok(_) => continue,
                Err(e) => break e,
            }
        };
        let status = status.downcast_ref::<tonic::Status>().map(|s| s.code());
        assert_eq!(status, Some(tonic::Code::InvalidArgument), "{}", gw.node_id);
    }
    Ok(())
}

async fn reqwest_metrics(relay: &switchyard_testkit::process::Service) -> anyhow::Result<String> {
    let url = format!("{}/metrics", support::http_url(relay)?);
    Ok(switchyard_testkit::reqwest::get(url).await?.text().await?)
}
