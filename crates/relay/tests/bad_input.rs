//! The relay under bad input, as a real process: links that skip Hello, say it wrong, send
//! undecodable bytes, break the frame rules, exceed `--max-frame-bytes` or write to a namespace
//! they never declared; `Publish` without or with a forged token, or with invalid arguments;
//! room events that break the history's rules, on every path into history (the `Stamp` RPC, a
//! link's `StampCall`, a `Publish` to one room). Each is refused with a gRPC status naming the
//! problem, and two well-behaved gateways keep exchanging frames throughout.
//!
//! Run `cargo build -p switchyard-relay --bins` first.

mod support;

use anyhow::{Context, ensure};
use bytes::Bytes;
use support::{Gw, PUBLISH_TOKEN, WAIT, client, frame, hello, link_raw, payload, start_relay};
use switchyard_proto::relay::v1::{
    FrameKind, LinkMessage, PublishRequest, ReplayRequest, StampCall, StampRequest,
    link_message::Kind, publish_request,
};
use switchyard_testkit::{process::Service, raw};
use tonic::{Code, Request, Status};

const MAX_FRAME: usize = 65_536;

/// Two good gateways on `/`: `a` broadcasts, `b` must receive it, in order, every time.
struct Good {
    a: Gw,
    b: Gw,
    n: u64,
}

impl Good {
    async fn link(relay: &Service) -> anyhow::Result<Good> {
        let a = Gw::link(relay, "good-a", &["/"]).await?;
        let mut b = Gw::link(relay, "good-b", &["/"]).await?;
        b.wait_members("/", 2).await?;
        Ok(Good { a, b, n: 0 })
    }

    /// Fails unless a new broadcast of `a` reaches `b` (after `what` happened).
    async fn still_flowing(&mut self, relay: &Service, what: &str) -> anyhow::Result<()> {
        ensure!(
            relay.try_status()?.is_none(),
            "the relay exited after {what}: {}",
            relay.log_tail(40)
        );
        self.n += 1;
        let marker = format!("after {what} #{}", self.n);
        self.a.broadcast(&marker).await?;
        loop {
            let f = self
                .b
                .next_frame()
                .await
                .with_context(|| format!("good-b after {what}"))?;
            if f.origin == "good-a" {
                ensure!(
                    payload(&f) == marker,
                    "good-b got {:?} after {what}",
                    payload(&f)
                );
                return Ok(());
            }
        }
    }
}

fn assert_status(what: &str, status: &Status, code: Code) -> anyhow::Result<()> {
    ensure!(status.code() == code, "{what}: {status:?}");
    ensure!(!status.message().is_empty(), "{what}: a refusal says why");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_that_skip_or_break_hello_are_refused_and_good_links_keep_flowing()
-> anyhow::Result<()> {
    let relay = start_relay(None, &["--max-frame-bytes", &MAX_FRAME.to_string()])?;
    let mut good = Good::link(&relay).await?;

    let long = "n".repeat(300);
    let refused: Vec<(&str, LinkMessage)> = vec![
        (
            "a Frame before Hello",
            frame("/", 1, FrameKind::Broadcast, b"x", ""),
        ),
        ("an empty message", LinkMessage { kind: None }),
        ("an empty node id", hello("", &["/"], 1)),
        ("a 300-byte node id", hello(&long, &["/"], 1)),
        ("no namespace", hello("bad", &[], 1)),
        ("a namespace without `/`", hello("bad", &["chat"], 1)),
        (
            "a 300-byte namespace",
            hello("bad", &[&format!("/{long}")], 1),
        ),
        ("an incarnation of 2^53", hello("bad", &["/"], 1 << 53)),
    ];
    for (what, first) in refused {
        let status = link_raw(&relay, Some(first))
            .await
            .err()
            .with_context(|| format!("{what} was accepted"))?;
        assert_status(what, &status, Code::InvalidArgument)?;
        good.still_flowing(&relay, what).await?;
    }

    // Without the generated types: a link closed before any message, and bytes that are not
    // a LinkMessage (INTERNAL is the gRPC spec's status for an unparsable message).
    let mut grpc = raw::client(&support::grpc_url(&relay)?).await?;
    let path = "/switchyard.relay.v1.Relay/Link";
    for (what, messages, codes) in [
        (
            "a link closed before Hello",
            vec![],
            &[Code::InvalidArgument][..],
        ),
        (
            "undecodable bytes",
            vec![Bytes::from_static(
                b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01zz",
            )],
            &[Code::InvalidArgument, Code::Internal][..],
        ),
    ] {
        let status = match raw::streaming(&mut grpc, path, messages).await {
            Ok(mut s) => s
                .message()
                .await
                .err()
                .with_context(|| format!("{what}: answered"))?,
            Err(s) => s,
        };
        ensure!(codes.contains(&status.code()), "{what}: {status:?}");
        good.still_flowing(&relay, what).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_that_break_the_rules_cut_only_their_link() -> anyhow::Result<()> {
    let relay = start_relay(None, &["--max-frame-bytes", &MAX_FRAME.to_string()])?;
    let mut good = Good::link(&relay).await?;
    let mut other_ns = Gw::link(&relay, "other-ns", &["/other"]).await?;
    other_ns.wait_members("/other", 1).await?;

    let big = vec![7u8; MAX_FRAME + 1];
    let huge = vec![7u8; 8 * 1024 * 1024];
    let cases: Vec<(&str, LinkMessage, Code)> = vec![
        (
            "Hello twice",
            hello("bad", &["/"], 1),
            Code::InvalidArgument,
        ),
        (
            "seq 0",
            frame("/", 0, FrameKind::Broadcast, b"x", ""),
            Code::InvalidArgument,
        ),
        (
            "seq 2^53",
            frame("/", 1 << 53, FrameKind::Broadcast, b"x", ""),
            Code::InvalidArgument,
        ),
        (
            "an unknown frame kind",
            LinkMessage {
                kind: Some(Kind::Frame(switchyard_proto::relay::v1::Frame {
                    namespace: "/".into(),
                    seq: 1,
                    kind: 99,
                    ..Default::default()
                })),
            },
            Code::InvalidArgument,
        ),
        (
            "a response without a target",
            frame("/", 1, FrameKind::Response, b"x", ""),
            Code::InvalidArgument,
        ),
        (
            "a namespace without `/`",
            frame("nope", 1, FrameKind::Broadcast, b"x", ""),
            Code::InvalidArgument,
        ),
        (
            "a frame one byte over --max-frame-bytes",
            frame("/", 1, FrameKind::Broadcast, &big, ""),
            Code::OutOfRange,
        ),
        (
            "an 8 MiB frame",
            frame("/", 1, FrameKind::Broadcast, &huge, ""),
            Code::OutOfRange,
        ),
    ];
    for (i, (what, msg, code)) in cases.into_iter().enumerate() {
        let (tx, mut stream) = link_raw(&relay, Some(hello(&format!("bad-{i}"), &["/"], 1)))
            .await
            .map_err(|s| anyhow::anyhow!("{what}: link refused: {s:?}"))?;
        tx.send(msg).await.context("link closed early")?;
        let status = tokio::time::timeout(WAIT, async {
            loop {
                match stream.message().await {
                    Ok(Some(_)) => continue,
                    Ok(None) => return None,
                    Err(s) => return Some(s),
                }
            }
        })
        .await
        .with_context(|| format!("{what}: the link was not cut within {WAIT:?}"))?
        .with_context(|| format!("{what}: the link ended without a status"))?;
        assert_status(what, &status, code)?;
        if code == Code::OutOfRange {
            ensure!(
                status.message().contains("--max-frame-bytes"),
                "{what}: {status:?}"
            );
        }
        good.still_flowing(&relay, what).await?;
    }
    // Nothing reached the namespace the bad link did not declare.
    other_ns.wait_members("/other", 1).await?;
    let marker = "to /other";
    let mut sender = Gw::link(&relay, "other-sender", &["/other"]).await?;
    sender
        .send("/other", FrameKind::Broadcast, marker.as_bytes(), "")
        .await?;
    let f = other_ns.next_frame().await?;
    ensure!(
        payload(&f) == marker,
        "the first frame /other saw must be the legitimate one, got {:?} from {}",
        payload(&f),
        f.origin
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_without_or_with_a_forged_token_or_bad_arguments_is_refused() -> anyhow::Result<()>
{
    let relay = start_relay(None, &["--max-frame-bytes", &MAX_FRAME.to_string()])?;
    let mut good = Good::link(&relay).await?;
    let mut c = client(&relay).await?;
    let valid = || PublishRequest {
        namespace: "/".into(),
        rooms: vec![],
        except: vec![],
        event: "news".into(),
        data: Some(publish_request::Data::Json("{\"x\":1}".into())),
    };
    let with =
        |req: PublishRequest, token: Option<&str>| -> anyhow::Result<Request<PublishRequest>> {
            let mut r = Request::new(req);
            if let Some(t) = token {
                r.metadata_mut()
                    .insert("authorization", format!("Bearer {t}").parse()?);
            }
            Ok(r)
        };
    let forged = format!("{PUBLISH_TOKEN}x");
    for token in [None, Some("wrong"), Some(""), Some(forged.as_str())] {
        let status = c
            .publish(with(valid(), token)?)
            .await
            .err()
            .with_context(|| format!("token {token:?} accepted"))?;
        assert_status(&format!("token {token:?}"), &status, Code::Unauthenticated)?;
    }
    let bad: Vec<(&str, PublishRequest, Code)> = vec![
        (
            "a namespace without `/`",
            PublishRequest {
                namespace: "x".into(),
                ..valid()
            },
            Code::InvalidArgument,
        ),
        (
            "an empty event",
            PublishRequest {
                event: String::new(),
                ..valid()
            },
            Code::InvalidArgument,
        ),
        (
            "broken JSON",
            PublishRequest {
                data: Some(publish_request::Data::Json("{\"x\":".into())),
                ..valid()
            },
            Code::InvalidArgument,
        ),
        (
            "data over --max-frame-bytes",
            PublishRequest {
                data: Some(publish_request::Data::Json(format!(
                    "\"{}\"",
                    "d".repeat(MAX_FRAME + 1)
                ))),
                ..valid()
            },
            Code::OutOfRange,
        ),
        (
            "invalid MessagePack",
            PublishRequest {
                data: Some(publish_request::Data::Msgpack(
                    vec![0xc1, 0xff, 0x00].into(),
                )),
                ..valid()
            },
            Code::InvalidArgument,
        ),
    ];
    for (what, req, code) in bad {
        let res = c.publish(with(req, Some(PUBLISH_TOKEN))?).await;
        match res {
            Err(status) => {
                ensure!(
                    status.code() == code
                        || (code == Code::OutOfRange && status.code() == Code::InvalidArgument),
                    "{what}: {status:?}"
                );
            }
            Ok(_) => anyhow::bail!("{what} was accepted"),
        }
        good.still_flowing(&relay, what).await?;
    }
    // Nothing refused reached the gateways: the next frame good-b sees is a valid publish.
    c.publish(with(valid(), Some(PUBLISH_TOKEN))?).await?;
    let f = good.b.next_frame().await?;
    ensure!(
        f.event.as_ref().is_some_and(|e| e.event == "news"),
        "good-b got {f:?}"
    );
    Ok(())
}

/// The same rules on every path into history: what the `Stamp` RPC refuses, a link's
/// `StampCall` refuses with the same code (the link stays up) and so does a `Publish` to one
/// room; nothing refused is recorded or forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_events_that_break_the_rules_are_refused_on_every_path_into_history()
-> anyhow::Result<()> {
    let relay = start_relay(None, &["--max-frame-bytes", &MAX_FRAME.to_string()])?;
    let mut good = Good::link(&relay).await?;
    let mut c = client(&relay).await?;
    let valid = || StampRequest {
        namespace: "/".into(),
        room: "r".into(),
        event: "e".into(),
        msgpack: vec![0x2a].into(),
        retain: false,
        publish_id: String::new(),
    };
    // A MessagePack string of MAX_FRAME bytes: one valid value, too large.
    let mut big = vec![0xda];
    big.extend(u16::try_from(MAX_FRAME - 1)?.to_be_bytes());
    big.extend(std::iter::repeat_n(b'x', MAX_FRAME - 1));
    let bad: Vec<(&str, StampRequest, Code)> = vec![
        (
            "data that is not MessagePack",
            StampRequest {
                msgpack: vec![0xc1].into(),
                ..valid()
            },
            Code::InvalidArgument,
        ),
        (
            "no data",
            StampRequest {
                msgpack: Bytes::new(),
                ..valid()
            },
            Code::InvalidArgument,
        ),
        (
            "data over --max-frame-bytes",
            StampRequest {
                msgpack: big.into(),
                ..valid()
            },
            Code::OutOfRange,
        ),
        (
            "an empty room",
            StampRequest {
                room: String::new(),
                ..valid()
            },
            Code::InvalidArgument,
        ),
        (
            "an empty event",
            StampRequest {
                event: String::new(),
                ..valid()
            },
            Code::InvalidArgument,
        ),
        (
            "a namespace without `/`",
            StampRequest {
                namespace: "x".into(),
                ..valid()
            },
            Code::InvalidArgument,
        ),
        (
            "a publish id of 257 bytes",
            StampRequest {
                publish_id: "i".repeat(257),
                ..valid()
            },
            Code::InvalidArgument,
        ),
    ];
    let (tx, mut stream) = link_raw(&relay, Some(hello("stamper", &["/"], 1)))
        .await
        .map_err(|s| anyhow::anyhow!("link refused: {s:?}"))?;
    for (i, (what, req, code)) in bad.into_iter().enumerate() {
        let status = c
            .stamp(req.clone())
            .await
            .err()
            .with_context(|| format!("Stamp: {what} was accepted"))?;
        assert_status(&format!("Stamp: {what}"), &status, code)?;

        let id = i as u64 + 1;
        let call = LinkMessage {
            kind: Some(Kind::Stamp(StampCall {
                id,
                request: Some(req.clone()),
                trace_context: Default::default(),
            })),
        };
        tx.send(call).await.context("the stamping link closed")?;
        let result = tokio::time::timeout(WAIT, async {
            loop {
                match stream.message().await {
                    Ok(Some(LinkMessage {
                        kind: Some(Kind::Stamped(r)),
                    })) => return Ok(r),
                    Ok(Some(_)) => continue,
                    Ok(None) => anyhow::bail!("the link ended"),
                    Err(s) => anyhow::bail!("the link was cut: {s:?}"),
                }
            }
        })
        .await
        .with_context(|| format!("StampCall: {what}: no answer"))??;
        ensure!(
            (result.id, result.code, result.position.is_none()) == (id, code as i32, true),
            "StampCall: {what}: {result:?}"
        );

        if !req.namespace.starts_with('/') || !req.publish_id.is_empty() {
            continue; // Publish checks the namespace first; it has no publish id.
        }
        let mut publish = Request::new(PublishRequest {
            namespace: req.namespace,
            rooms: vec![req.room],
            except: vec![],
            event: req.event,
            data: Some(publish_request::Data::Msgpack(req.msgpack)),
        });
        publish
            .metadata_mut()
            .insert("authorization", format!("Bearer {PUBLISH_TOKEN}").parse()?);
        let status = c
            .publish(publish)
            .await
            .err()
            .with_context(|| format!("Publish: {what} was accepted"))?;
        assert_status(&format!("Publish: {what}"), &status, code)?;
        good.still_flowing(&relay, what).await?;
    }
    // Nothing was recorded: the history of `/` is still empty.
    let head = c
        .head(switchyard_proto::relay::v1::HeadRequest {
            namespace: "/".into(),
            room: String::new(),
            rooms: Vec::new(),
        })
        .await?
        .into_inner()
        .position
        .context("a head")?;
    assert_eq!(head.offset, 0);
    // A head asking for more rooms than the proto allows is refused, not run.
    let too_many = c
        .head(switchyard_proto::relay::v1::HeadRequest {
            namespace: "/".into(),
            room: String::new(),
            rooms: (0..=switchyard_proto::MAX_HEAD_ROOMS)
                .map(|i| format!("r{i}"))
                .collect(),
        })
        .await
        .err()
        .context("a head of too many rooms was answered")?;
    assert_status("Head of too many rooms", &too_many, Code::InvalidArgument)?;
    let replay = c
        .replay(ReplayRequest {
            namespace: "/".into(),
            rooms: vec!["r".into()],
            epoch: head.epoch,
            after_offset: 0,
            limit: 0,
        })
        .await?
        .into_inner();
    ensure!(replay.recovered && replay.events.is_empty(), "{replay:?}");
    Ok(())
}
