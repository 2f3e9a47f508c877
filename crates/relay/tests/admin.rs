//! `switchyard.admin.v1.RelayAdmin` against a real relay process, with gRPC clients acting as
//! gateways: the admin token guards every call, links and history report what happened on
//! them, a cluster-wide request speaks the adapters' own request/response protocol and a
//! gateway that does not answer makes the answer partial (named), not late. Also the link
//! token: a relay with `--link-token` refuses links that do not bring it.

mod support;

use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use socketioxide_core::{
    Sid, Str, Uid,
    adapter::{
        RemoteSocketData,
        remote_packet::{RequestIn, RequestTypeIn, Response, ResponseType},
    },
};
use support::{Gw, WAIT, client, grpc_url, start_relay};
use switchyard_common::clock::now_ms;
use switchyard_proto::{
    admin::v1::{
        ListHistoryRequest, ListLinksRequest, ListRoomsRequest,
        relay_admin_client::RelayAdminClient,
    },
    relay::v1::{Frame, FrameKind, HeadRequest, ReplayRequest, StampRequest},
};
use switchyard_testkit::{process::Service, redis::RedisServer};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, transport::Channel};

const ADMIN_TOKEN: &str = "relay-admin-test-token";

async fn admin(relay: &Service) -> anyhow::Result<RelayAdminClient<Channel>> {
    Ok(RelayAdminClient::connect(grpc_url(relay)?).await?)
}

/// `msg` with `authorization: Bearer <token>` when a token is given.
fn authed<T>(msg: T, token: Option<&str>) -> anyhow::Result<Request<T>> {
    let mut req = Request::new(msg);
    if let Some(t) = token {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse()?);
    }
    Ok(req)
}

#[tokio::test]
async fn every_admin_call_needs_the_admin_token() -> anyhow::Result<()> {
    let relay = start_relay(None, &["--admin-token", ADMIN_TOKEN])?;
    let mut admin = admin(&relay).await?;
    for token in [None, Some("wrong")] {
        let code = admin
            .list_links(authed(ListLinksRequest {}, token)?)
            .await
            .err()
            .map(|s| s.code());
        assert_eq!(code, Some(Code::Unauthenticated), "token {token:?}");
        let code = admin
            .list_rooms(authed(ListRoomsRequest::default(), token)?)
            .await
            .err()
            .map(|s| s.code());
        assert_eq!(code, Some(Code::Unauthenticated), "token {token:?}");
    }
    admin
        .list_links(authed(ListLinksRequest {}, Some(ADMIN_TOKEN))?)
        .await?;

    // No token configured: every call is refused, whatever the caller sends.
    let open = start_relay(None, &[])?;
    let code = self::admin(&open)
        .await?
        .list_links(authed(ListLinksRequest {}, Some(ADMIN_TOKEN))?)
        .await
        .err()
        .map(|s| s.code());
    assert_eq!(code, Some(Code::Unauthenticated));
    Ok(())
}

#[tokio::test]
async fn links_report_frames_acks_and_queue_of_each_gateway() -> anyhow::Result<()> {
    let relay = start_relay(None, &["--admin-token", ADMIN_TOKEN, "--link-queue", "64"])?;
    let before = now_ms();
    let mut a = Gw::link(&relay, "gw-a", &["/", "/chat"]).await?;
    let mut b = Gw::link(&relay, "gw-b", &["/"]).await?;
    a.wait_members("/", 2).await?;
    b.wait_members("/", 2).await?;
    let mut last = 0;
    for i in 0..3 {
        last = a.broadcast(&format!("m{i}")).await?;
    }
    a.wait_acked(last).await?;
    for _ in 0..3 {
        b.next_frame().await?;
    }

    let links = admin(&relay)
        .await?
        .list_links(authed(ListLinksRequest {}, Some(ADMIN_TOKEN))?)
        .await?
        .into_inner();
    ensure!(!links.relay_id.is_empty(), "the replica names itself");
    let ids: Vec<&str> = links.links.iter().map(|l| l.node_id.as_str()).collect();
    assert_eq!(ids, ["gw-a", "gw-b"]);
    let (la, lb) = (&links.links[0], &links.links[1]);
    assert_eq!(la.namespaces, ["/", "/chat"]);
    assert_eq!(
        (la.frames_in, la.last_seq, la.accepted_seq),
        (3, last, last)
    );
    assert_eq!(lb.frames_out, 3, "gw-b was sent gw-a's three frames");
    assert_eq!(lb.frames_in, 0);
    assert_eq!(la.queue_capacity, 64);
    // gw-b's reader took everything; nothing is waiting for it.
    assert_eq!(lb.queue_depth, 0);
    let after = now_ms();
    for l in &links.links {
        ensure!(
            (before..=after).contains(&l.connected_since_ms),
            "connected_since_ms {} not within the test ({before}..={after})",
            l.connected_since_ms
        );
        assert_eq!(l.incarnation, 1);
    }
    Ok(())
}

#[tokio::test]
async fn history_reports_length_epoch_and_offsets_in_memory_and_in_redis() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    for redis_url in [None, Some(redis.url())] {
        let relay = start_relay(
            redis_url.as_deref(),
            &["--admin-token", ADMIN_TOKEN, "--history-max-len", "3"],
        )?;
        let mut relay_client = client(&relay).await?;
        let mut epoch = String::new();
        for i in 0..5u8 {
            let position = relay_client
                .stamp(StampRequest {
                    namespace: "/chat".into(),
                    room: "r".into(),
                    event: "e".into(),
                    msgpack: vec![i].into(),
                    ..StampRequest::default()
                })
                .await?
                .into_inner()
                .position
                .context("a stamp has a position")?;
            epoch = position.epoch;
        }
        let mut admin = admin(&relay).await?;
        let all = admin
            .list_history(authed(ListHistoryRequest::default(), Some(ADMIN_TOKEN))?)
            .await?
            .into_inner()
            .namespaces;
        let chat = all
            .iter()
            .find(|h| h.namespace == "/chat")
            .with_context(|| format!("/chat listed ({redis_url:?}): {all:?}"))?;
        assert_eq!(chat.epoch, epoch);
        assert_eq!(chat.head_offset, 5);
        assert_eq!((chat.max_len, chat.ttl_ms), (3, 600_000));
        // Redis trims approximately (`MAXLEN ~`), memory exactly; either way the oldest kept
        // event and the length agree with the head.
        if redis_url.is_none() {
            assert_eq!(chat.length, 3);
        }
        ensure!((3..=5).contains(&chat.length), "{chat:?}");
        assert_eq!(chat.oldest_offset, chat.head_offset - chat.length + 1);

        let none = admin
            .list_history(authed(
                ListHistoryRequest {
                    namespaces: vec!["/none".into()],
                },
                Some(ADMIN_TOKEN),
            )?)
            .await?
            .into_inner()
            .namespaces;
        assert_eq!(none.len(), 1);
        assert_eq!(
            (none[0].epoch.as_str(), none[0].length, none[0].head_offset),
            ("", 0, 0),
            "looking does not create a history"
        );
    }
    Ok(())
}

/// The next frame on `gw`'s link that is an admin request, decoded.
async fn next_request(gw: &mut Gw) -> anyhow::Result<(Frame, RequestIn)> {
    loop {
        let frame = gw.next_frame().await?;
        if frame.kind == FrameKind::Request as i32 {
            let req: RequestIn = rmp_serde::from_slice(&frame.payload)?;
            return Ok((frame, req));
        }
    }
}

/// Answers `req` (from `frame`) the way a gateway's adapter does: a `RESPONSE` frame to the
/// request's origin, naming the request in `request_id`, the `Response` as its payload.
async fn answer<D: serde::Serialize>(
    gw: &mut Gw,
    frame: &Frame,
    req: &RequestIn,
    ty: ResponseType<D>,
) -> anyhow::Result<()> {
    let payload = rmp_serde::to_vec_named(&Response {
        node_id: Uid::new(),
        r#type: ty,
    })?;
    gw.send_frame(Frame {
        namespace: frame.namespace.clone(),
        kind: FrameKind::Response as i32,
        target: frame.origin.clone(),
        request_id: req.id.to_string(),
        payload: payload.into(),
        ..Frame::default()
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_gateway_that_does_not_answer_makes_the_answer_partial() -> anyhow::Result<()> {
    let relay = start_relay(None, &["--admin-token", ADMIN_TOKEN])?;
    let mut talker = Gw::link(&relay, "gw-talker", &["/"]).await?;
    let mut silent = Gw::link(&relay, "gw-silent", &["/"]).await?;
    talker.wait_members("/", 2).await?;
    silent.wait_members("/", 2).await?;

    let mut admin = admin(&relay).await?;
    let started = Instant::now();
    let call = tokio::spawn(async move {
        admin
            .list_rooms(authed(
                ListRoomsRequest {
                    namespace: "/".into(),
                    timeout_ms: 1_500,
                },
                Some(ADMIN_TOKEN),
            )?)
            .await
            .map(|r| r.into_inner())
            .map_err(anyhow::Error::from)
    });

    // First the rooms of every socket, then the members of each room.
    let (frame, req) = next_request(&mut talker).await?;
    ensure!(
        frame.origin.starts_with("relay:"),
        "from the relay: {}",
        frame.origin
    );
    if !matches!(req.r#type, RequestTypeIn::AllRooms) {
        bail!("expected AllRooms first, got {:?}", req.r#type);
    }
    let rooms = ["lobby".into()].into_iter().collect();
    answer::<()>(&mut talker, &frame, &req, ResponseType::AllRooms(rooms)).await?;
    let (frame, req) = next_request(&mut talker).await?;
    if !matches!(req.r#type, RequestTypeIn::FetchSockets) {
        bail!("expected FetchSockets, got {:?}", req.r#type);
    }
    let opts = req.opts.clone().context("FetchSockets has options")?;
    assert_eq!(
        opts.rooms.iter().map(|r| r.as_ref()).collect::<Vec<_>>(),
        ["lobby"]
    );
    let sockets = (0..2)
        .map(|_| RemoteSocketData {
            id: Sid::new(),
            server_id: Uid::new(),
            ns: Str::from("/"),
        })
        .collect();
    answer(
        &mut talker,
        &frame,
        &req,
        ResponseType::FetchSockets(sockets),
    )
    .await?;
    // The silent gateway received both requests too; it never answers.
    next_request(&mut silent).await?;

    let rooms = tokio::time::timeout(WAIT, call).await???;
    assert_eq!(rooms.rooms.len(), 1, "{rooms:?}");
    assert_eq!(rooms.rooms[0].room, "lobby");
    assert_eq!(rooms.rooms[0].members, 2);
    assert_eq!(rooms.rooms[0].gateways, ["gw-talker"]);
    let coverage = rooms.coverage.context("coverage is always set")?;
    assert_eq!(coverage.gateways, ["gw-silent", "gw-talker"]);
    assert_eq!(coverage.missing, ["gw-silent"]);
    // Each of the two requests waited for its timeout (the silent gateway), no longer.
    ensure!(started.elapsed() >= Duration::from_millis(1_500));
    Ok(())
}

#[tokio::test]
async fn a_relay_with_a_link_token_refuses_links_and_history_calls_without_it() -> anyhow::Result<()>
{
    let relay = start_relay(None, &["--link-token", "link-secret"])?;
    // What only gateways do needs the token: nobody else writes into or reads out of rooms.
    let stamp = || StampRequest {
        namespace: "/".into(),
        room: "r".into(),
        event: "e".into(),
        msgpack: vec![0x2a].into(),
        retain: false,
        publish_id: "gw-x:1:1".into(),
    };
    let head = || HeadRequest {
        namespace: "/".into(),
        room: "r".into(),
        rooms: Vec::new(),
    };
    let replay = || ReplayRequest {
        namespace: "/".into(),
        rooms: vec!["r".into()],
        epoch: String::new(),
        after_offset: 0,
        limit: 0,
    };
    let mut c = client(&relay).await?;
    for token in [None, Some("wrong")] {
        let refused = [
            c.stamp(authed(stamp(), token)?).await.err(),
            c.head(authed(head(), token)?).await.err(),
            c.replay(authed(replay(), token)?).await.err(),
        ];
        for status in refused {
            let code = status.map(|s| s.code());
            assert_eq!(code, Some(Code::Unauthenticated), "token {token:?}");
        }
    }
    let stamped = c.stamp(authed(stamp(), Some("link-secret"))?).await?;
    assert_eq!(stamped.into_inner().position.map(|p| p.offset), Some(1));
    let head = c.head(authed(head(), Some("link-secret"))?).await?;
    assert_eq!(head.into_inner().position.map(|p| p.offset), Some(1));
    let replay = c.replay(authed(replay(), Some("link-secret"))?).await?;
    assert!(replay.into_inner().events.is_empty());
    for token in [None, Some("wrong")] {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(support::hello("gw-x", &["/"], 1)).await?;
        let status = client(&relay)
            .await?
            .link(authed(ReceiverStream::new(rx), token)?)
            .await
            .err()
            .context("the link must be refused")?;
        assert_eq!(status.code(), Code::Unauthenticated, "token {token:?}");
    }
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(support::hello("gw-x", &["/"], 1)).await?;
    let mut stream = client(&relay)
        .await?
        .link(authed(ReceiverStream::new(rx), Some("link-secret"))?)
        .await?
        .into_inner();
    let first = tokio::time::timeout(WAIT, stream.message()).await??;
    ensure!(
        matches!(
            first.and_then(|m| m.kind),
            Some(switchyard_proto::relay::v1::link_message::Kind::Welcome(_))
        ),
        "the right token links"
    );
    let metrics = support::metrics(&relay).await?;
    ensure!(
        metrics.contains("switchyard_relay_links_refused_total{reason=\"token\"} 8"),
        "refusals are counted:\n{metrics}"
    );
    Ok(())
}
