//! The relay on managed Redis: TLS only (`--tls-port`, `--port 0`) and an ACL user created with
//! exactly `switchyard_redis::acl::rule` (keys `~{sy:<cluster>}:*`, channels
//! `&{sy:<cluster>}:*`, named commands only), on a single `rediss://` server and on a
//! three-master `rediss+cluster://` Redis Cluster whose bus runs TLS too. The relays get the
//! CA file and the user as flags and the password as `SWITCHYARD_REDIS_PASSWORD`.
//!
//! Each case does everything the relay does with Redis: pub/sub between two replicas (sharded
//! and classic), dedup marks, membership, history stamps (retained state, a retried publish
//! id), replay and head from the other replica, a backend publish, and the admin API's history
//! figures. It ends by reading every node's `ACL LOG`: anything the rule did not allow fails
//! the case and names the command, key or channel that was refused.
//!
//! Also: what an operator gets wrong shows up at startup as a message saying what to fix (a
//! wrong password, a CA that did not sign the server's certificate, a TLS URL for a plain
//! server, no client certificate for a server requiring one), and mutual TLS works.

mod support;

use std::sync::Arc;

use anyhow::{Context, bail, ensure};
use support::*;
use switchyard_proto::admin::v1::{ListHistoryRequest, relay_admin_client::RelayAdminClient};
use switchyard_proto::relay::v1::{
    Frame, HeadRequest, PublishRequest, ReplayRequest, StampRequest, publish_request,
};
use switchyard_redis::acl;
use switchyard_testkit::process::Service;
use switchyard_testkit::redis::{RedisOptions, RedisServer};
use switchyard_testkit::redis_cluster::{RedisCluster, RedisDeployment};
use switchyard_testkit::tls::TestPki;
use tonic::Request;

const WAIT: std::time::Duration = std::time::Duration::from_secs(20);

const ADMIN_TOKEN: &str = "managed-redis-admin-token";
/// The relays' `--cluster` (the default), which the ACL rule is written for.
const CLUSTER: &str = "switchyard";
/// Frames each origin sends in a case.
const N: u64 = 50;

/// Runs each case on a managed single server and on a managed cluster.
macro_rules! on_managed_redis {
    ($($case:ident),* $(,)?) => {
        mod server {
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

on_managed_redis!(
    replicas_share_frames_history_and_membership_as_the_least_privileged_user,
    classic_pubsub_needs_nothing_more_either,
);

async fn replicas_share_frames_history_and_membership_as_the_least_privileged_user<
    R: RedisDeployment,
>() -> anyhow::Result<()> {
    // Redis 7: `--pubsub auto` picks sharded pub/sub (SSUBSCRIBE / SPUBLISH).
    everything_the_relay_does::<R>(&[], "sharded=true").await
}

async fn classic_pubsub_needs_nothing_more_either<R: RedisDeployment>() -> anyhow::Result<()> {
    everything_the_relay_does::<R>(&["--pubsub", "classic"], "sharded=false").await
}

/// A managed Redis of kind `R` with the ACL user the docs tell operators to create.
fn managed<R: RedisDeployment>(name: &str) -> anyhow::Result<R> {
    let pki = Arc::new(TestPki::generate(name)?);
    R::start_with(RedisOptions::managed(
        pki,
        "switchyard",
        &acl::rule(CLUSTER),
    ))
}

async fn everything_the_relay_does<R: RedisDeployment>(
    pubsub: &[&str],
    mode: &str,
) -> anyhow::Result<()> {
    let redis: R = managed(&format!("relay-{}", R::KIND))?;
    let access = redis.access();
    ensure!(access.url.starts_with("rediss"), "{}", access.url);
    let with_admin: Vec<&str> = pubsub
        .iter()
        .copied()
        .chain(["--admin-token", ADMIN_TOKEN])
        .collect();
    let r1 = start_relay_on(&access, &with_admin)?;
    let r2 = start_relay_on(&access, pubsub)?;
    for relay in [&r1, &r2] {
        let log = relay.log_tail(200);
        ensure!(log.contains(mode), "expected {mode}:\n{log}");
        ensure!(
            log.contains("(TLS, own CA, user switchyard)"),
            "the relay says how it reaches Redis:\n{log}"
        );
        let password = access.password.clone().unwrap_or_default();
        ensure!(!log.contains(&password), "the password reached the log");
    }

    // Pub/sub between replicas, dedup marks and membership.
    let mut a = Gw::link(&r1, "a", &["/"]).await?;
    let mut b = Gw::link(&r1, "b", &["/"]).await?;
    let mut c = Gw::link(&r2, "c", &["/"]).await?;
    for gw in [&mut a, &mut b, &mut c] {
        assert_eq!(gw.wait_members("/", 3).await?, ["a", "b", "c"]);
    }
    for i in 0..N {
        a.broadcast(&format!("a{i}")).await?;
        c.broadcast(&format!("c{i}")).await?;
    }
    let mut next = [0u64; 2];
    for _ in 0..2 * N {
        let f = b.next_frame().await?;
        let k = usize::from(f.origin == "c");
        let origin = ["a", "c"][k];
        ensure!(f.origin == origin, "unexpected origin {}", f.origin);
        assert_eq!(payload(&f), format!("{origin}{}", next[k]));
        next[k] += 1;
    }
    for i in 0..N {
        assert_eq!(payload(&a.next_frame().await?), format!("c{i}"));
        assert_eq!(payload(&c.next_frame().await?), format!("a{i}"));
    }

    // History: stamps on one replica (one retained, one retried), replay and head on the other.
    let mut c1 = client(&r1).await?;
    let mut c2 = client(&r2).await?;
    let stamp = |id: &str, retain: bool| StampRequest {
        namespace: "/".into(),
        room: "r".into(),
        event: format!("e-{id}"),
        msgpack: vec![0x2a].into(),
        retain,
        publish_id: id.into(),
    };
    let first = c1.stamp(stamp("p1", true)).await?.into_inner().position;
    let again = c1.stamp(stamp("p1", true)).await?.into_inner().position;
    let second = c2.stamp(stamp("p2", false)).await?.into_inner().position;
    let first = first.context("a stamp has a position")?;
    assert_eq!(
        again.as_ref(),
        Some(&first),
        "a retried publish id keeps its position"
    );
    assert_eq!(second.map(|p| p.offset), Some(first.offset + 1));
    let replay = c2
        .replay(ReplayRequest {
            namespace: "/".into(),
            rooms: vec!["r".into()],
            epoch: first.epoch.clone(),
            after_offset: 0,
            limit: 0,
        })
        .await?
        .into_inner();
    ensure!(replay.recovered, "{replay:?}");
    let events: Vec<&str> = replay.events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(events, ["e-p1", "e-p2"]);
    let head = c2
        .head(HeadRequest {
            namespace: "/".into(),
            room: "r".into(),
            rooms: Vec::new(),
        })
        .await?
        .into_inner();
    assert_eq!(head.position.map(|p| p.offset), Some(first.offset + 1));
    assert_eq!(
        head.retained.map(|e| (e.offset, e.event)),
        Some((first.offset, "e-p1".to_owned()))
    );

    // A backend publish to a room goes through history too.
    let mut publish = Request::new(PublishRequest {
        namespace: "/".into(),
        rooms: vec!["r".into()],
        event: "news".into(),
        data: Some(publish_request::Data::Json("1".into())),
        ..PublishRequest::default()
    });
    publish
        .metadata_mut()
        .insert("authorization", format!("Bearer {PUBLISH_TOKEN}").parse()?);
    let published = c2.publish(publish).await?.into_inner();
    assert_eq!(published.position.map(|p| p.offset), Some(first.offset + 2));

    // The admin API's history figures (SCAN for the namespaces, one MULTI/EXEC each).
    let mut admin = RelayAdminClient::connect(grpc_url(&r1)?).await?;
    let mut list = Request::new(ListHistoryRequest::default());
    list.metadata_mut()
        .insert("authorization", format!("Bearer {ADMIN_TOKEN}").parse()?);
    let histories = admin.list_history(list).await?.into_inner().namespaces;
    let root = histories
        .iter()
        .find(|h| h.namespace == "/")
        .with_context(|| format!("`/` listed: {histories:?}"))?;
    assert_eq!((root.head_offset, root.length), (first.offset + 2, 3));

    // Every frame stamped above reached the gateways; nothing else is pending.
    let mut stamped = Vec::new();
    while stamped.len() < 3 {
        let f = b.next_frame().await?;
        stamped.push(f.position.map(|p| p.offset));
    }
    assert_eq!(
        stamped,
        [1, 2, 3].map(|o| Some(first.offset + o - 1)),
        "stamped frames in order, once each"
    );

    redis.ensure_no_acl_denials()?;
    // The relays are still subscribed (ready) after all of this.
    for relay in [&r1, &r2] {
        ensure!(ready(relay).await?, "{}", relay.log_tail(50));
    }
    Ok(())
}

fn payload(f: &Frame) -> String {
    String::from_utf8_lossy(&f.payload).into_owned()
}

async fn ready(relay: &Service) -> anyhow::Result<bool> {
    let url = format!("{}/readyz", http_url(relay)?);
    let status = switchyard_testkit::reqwest::get(&url).await?.status();
    Ok(status.is_success())
}

/// One stamp on `relay`, as a gateway asks for it.
async fn stamp_once(relay: &Service) -> anyhow::Result<Result<u64, tonic::Status>> {
    let answer = client(relay)
        .await?
        .stamp(StampRequest {
            namespace: "/".into(),
            room: "r".into(),
            event: "e".into(),
            msgpack: vec![0x2a].into(),
            ..StampRequest::default()
        })
        .await;
    Ok(answer.map(|a| a.into_inner().position.map_or(0, |p| p.offset)))
}

/// A managed single server whose ACL user has `rule`, and a relay on it.
fn relay_with_rule(name: &str, rule: &str) -> anyhow::Result<(RedisServer, Service)> {
    let pki = Arc::new(TestPki::generate(name)?);
    let redis = RedisServer::start_with(RedisOptions::managed(pki, "switchyard", rule))?;
    let relay = start_relay_on(&redis.access(), &[])?;
    Ok((redis, relay))
}

/// The cases above prove least privilege only if a rule lacking something makes them fail,
/// naming what is missing: a user without `xadd` cannot stamp (history's script calls it), and
/// `ACL LOG` says which command a script was refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_lacking_a_command_fails_and_acl_log_names_it() -> anyhow::Result<()> {
    let rule = acl::rule(CLUSTER).replace(" +xadd", "");
    let (redis, relay) = relay_with_rule("relay-lacking-command", &rule)?;
    let status = match stamp_once(&relay).await? {
        Ok(offset) => bail!("stamped offset {offset} without XADD"),
        Err(status) => status,
    };
    ensure!(
        status.message().contains("can't run this command"),
        "{status:?}"
    );
    let denials = redis.acl_denials()?;
    ensure!(
        denials
            .iter()
            .any(|d| d.contains("the command `xadd`") && d.contains("lua")),
        "ACL LOG names the command and that a script ran it: {denials:?}"
    );
    let err = redis.ensure_no_acl_denials().err().map(|e| e.to_string());
    ensure!(
        err.as_deref().is_some_and(|e| e.contains("xadd")),
        "{err:?}"
    );
    Ok(())
}

/// A key pattern that does not match `{sy:<cluster>}:…` is refused: `~{sy:*}` (it would need
/// keys to end in `}`) lets no Switchyard key through, and `ACL LOG` names the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_pattern_missing_the_keys_fails_and_acl_log_names_the_key() -> anyhow::Result<()> {
    let rule = acl::rule(CLUSTER).replace("~{sy:switchyard}:*", "~{sy:*}");
    let (redis, relay) = relay_with_rule("relay-lacking-keys", &rule)?;
    ensure!(
        stamp_once(&relay).await?.is_err(),
        "stamped without its keys"
    );
    let denials = redis.acl_denials()?;
    ensure!(
        denials
            .iter()
            .any(|d| d.contains("the key `{sy:switchyard}:")),
        "{denials:?}"
    );
    Ok(())
}

/// Without the channels the relay cannot subscribe: it stays unready (so no gateway links to a
/// replica that would miss frames), its log says the ACL user lacks a permission, and
/// `ACL LOG` names the channel. On a server (sharded and classic) and on a cluster.
async fn without_the_channels_the_relay_stays_unready<R: RedisDeployment>(
    pubsub: &[&str],
) -> anyhow::Result<()> {
    let pki = Arc::new(TestPki::generate("relay-lacking-channels")?);
    let rule = acl::rule(CLUSTER).replace(" &{sy:switchyard}:*", "");
    let redis = R::start_with(RedisOptions::managed(pki, "switchyard", &rule))?;
    let relay = start_relay_on(&redis.access(), pubsub)?;
    ensure!(!ready(&relay).await?, "ready without a subscription");
    let log = relay.log_tail(100);
    ensure!(log.contains("lacks a permission"), "{log}");
    let denials = redis.acl_denials()?;
    ensure!(
        denials
            .iter()
            .any(|d| d.contains("the channel `{sy:switchyard}:relay:")),
        "{denials:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_channels_a_sharded_relay_stays_unready_and_says_why() -> anyhow::Result<()> {
    without_the_channels_the_relay_stays_unready::<RedisServer>(&[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_channels_a_classic_relay_stays_unready_and_says_why() -> anyhow::Result<()> {
    without_the_channels_the_relay_stays_unready::<RedisServer>(&["--pubsub", "classic"]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_channels_a_relay_on_a_cluster_stays_unready_and_says_why() -> anyhow::Result<()>
{
    without_the_channels_the_relay_stays_unready::<RedisCluster>(&[]).await
}

/// What an operator can get wrong is refused at startup with a message saying what to fix;
/// the password never appears in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misconfigurations_are_refused_at_startup_with_what_to_fix() -> anyhow::Result<()> {
    let pki = Arc::new(TestPki::generate("relay-misconfigured")?);
    let redis = RedisServer::start_with(RedisOptions::managed(
        Arc::clone(&pki),
        "switchyard",
        &acl::rule(CLUSTER),
    ))?;
    let good = redis.access();
    let password = good.password.clone().unwrap_or_default();

    let mut wrong_password = good.clone();
    wrong_password.password = Some("not-the-password".into());
    let stranger = TestPki::generate("relay-stranger")?;
    let mut wrong_ca = good.clone();
    wrong_ca.ca_file = Some(stranger.file("ca.pem"));
    let mut no_pem = good.clone();
    no_pem.ca_file = Some(pki.file("ca.pem").with_file_name("missing.pem"));
    let mut not_a_cert = good.clone();
    not_a_cert.ca_file = Some(pki.file("server-key.pem"));
    let plain = RedisServer::start()?;
    let mut tls_to_plain = good.clone();
    tls_to_plain.url = plain.url().replacen("redis://", "rediss://", 1);
    tls_to_plain.username = None;
    tls_to_plain.password = None;

    let cases = [
        (wrong_password, "Redis refused the credentials"),
        (wrong_ca, "TLS handshake with Redis failed"),
        (tls_to_plain, "did not answer TLS"),
        (no_pem, "--redis-ca-file"),
        (not_a_cert, "no PEM certificate"),
    ];
    for (access, expected) in cases {
        let err = match start_relay_on(&access, &[]) {
            Ok(relay) => bail!("started with {access:?}:\n{}", relay.log_tail(30)),
            Err(e) => format!("{e:#}"),
        };
        ensure!(err.contains(expected), "expected `{expected}` in:\n{err}");
        for secret in [Some(&password), access.password.as_ref()]
            .into_iter()
            .flatten()
        {
            ensure!(!err.contains(secret.as_str()), "a password leaked:\n{err}");
        }
    }
    Ok(())
}

/// A server that requires client certificates: the relay with `--redis-client-cert-file` /
/// `--redis-client-key-file` works; without them it is refused at startup, and told why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_needs_the_client_certificate() -> anyhow::Result<()> {
    let pki = Arc::new(TestPki::generate("relay-mtls")?);
    let mut options = RedisOptions::managed(pki, "switchyard", &acl::rule(CLUSTER));
    options.require_client_cert = true;
    let redis = RedisServer::start_with(options)?;
    let access = redis.access();
    ensure!(access.client_cert_file.is_some());
    let relay = start_relay_on(&access, &[])?;
    let mut gw = Gw::link(&relay, "a", &["/"]).await?;
    gw.wait_members("/", 1).await?;
    ensure!(ready(&relay).await?);

    let mut anonymous = access.clone();
    anonymous.client_cert_file = None;
    anonymous.client_key_file = None;
    let err = match start_relay_on(&anonymous, &[]) {
        Ok(relay) => bail!(
            "started without a client certificate:\n{}",
            relay.log_tail(30)
        ),
        Err(e) => format!("{e:#}"),
    };
    ensure!(
        err.contains("--redis-client-cert-file"),
        "the advice names the flag:\n{err}"
    );
    redis.ensure_no_acl_denials()?;
    Ok(())
}

/// Whether the relay says it is the emitter's handler (`switchyard_relay_emitter_handler`).
async fn emitter_handler(relay: &Service) -> anyhow::Result<bool> {
    let text = switchyard_testkit::reqwest::get(format!("{}/metrics", http_url(relay)?))
        .await?
        .text()
        .await?;
    Ok(text
        .lines()
        .any(|l| l.trim() == "switchyard_relay_emitter_handler 1"))
}

/// With `--emitter`, the documented addition (`acl::emitter_rule`) is exactly what the relay
/// needs for the emitter's channels: it becomes the handler and `ACL LOG` stays empty; with the
/// command but a wider pattern than the one it subscribes to (Redis compares a PSUBSCRIBE
/// pattern literally), it never subscribes, and `ACL LOG` names the refused subscription.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_emitter_needs_exactly_the_documented_addition() -> anyhow::Result<()> {
    let namespaces = ["/".to_owned(), "/chat".to_owned()];
    let flags = ["--emitter", "--emitter-namespaces", "/,/chat"];
    let rule = acl::rule(CLUSTER) + &acl::emitter_rule("socket.io", &namespaces);
    let pki = Arc::new(TestPki::generate("relay-emitter")?);
    let redis = RedisServer::start_with(RedisOptions::managed(pki, "switchyard", &rule))?;
    let relay = start_relay_on(&redis.access(), &flags)?;
    switchyard_testkit::wait::eventually("the relay is the emitter's handler", WAIT, || async {
        ensure!(emitter_handler(&relay).await?, "not yet");
        Ok(())
    })
    .await?;
    redis.ensure_no_acl_denials()?;

    let pki = Arc::new(TestPki::generate("relay-emitter-lacking")?);
    let bare = RedisServer::start_with(RedisOptions::managed(
        pki,
        "switchyard",
        &acl::rule(CLUSTER),
    ))?;
    let relay = start_relay_on(&bare.access(), &flags)?;
    let denials = switchyard_testkit::wait::eventually(
        "ACL LOG names the refused subscription",
        WAIT,
        || async {
            let denials = bare.acl_denials()?;
            ensure!(
                // `psubscribe` is granted here: what is refused is its pattern (this Redis logs a
                // refused pattern under the command; newer ones name the channel).
                denials
                    .iter()
                    .any(|d| d.contains("psubscribe") || d.contains("socket.io#/#*")),
                "{denials:?}"
            );
            Ok(denials)
        },
    )
    .await?;
    ensure!(
        !emitter_handler(&relay).await?,
        "handler without its channels: {denials:?}"
    );
    Ok(())
}
