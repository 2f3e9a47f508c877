//! Every limit holds exactly under concurrency: each is checked and counted in one step, so no
//! number of requests racing each other gets past it. Each test hammers one limit from many
//! raw websockets at once (every request sent before any answer is read, so the gateway handles
//! them concurrently) and asserts the exact count a user would observe in the answers.
//!
//! - rooms per socket (`join` and `resume`, on several sockets at once, with history on);
//! - one assignment token raced from many connections (`token_reused`);
//! - the gateway's `--max-connections` (`over_capacity`);
//! - the gateway's `--connect-rate` (`rate_limited`, a token bucket: exact up to its refill),
//!   spent only by CONNECTs whose token is good;
//! - placement's capacity for a gateway (`/v1/assign` answers 503 beyond it).

mod support;

use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use futures::future::join_all;
use serde_json::{Value, json};
use support::Cluster;
use switchyard_common::assignment::{AssignmentClaims, TokenKey};
use switchyard_common::clock::now_ms;
use switchyard_testkit::assign::assign;
use switchyard_testkit::cluster::{Gateway, TEST_TOKEN_SECRET};
use switchyard_testkit::raw::RawSocket;
use switchyard_testkit::wait::eventually;

const WAIT: Duration = Duration::from_secs(30);

/// Redis, placement, one relay (history on) and one gateway with `gateway_args`, linked.
async fn setup(gateway_args: &[&str]) -> anyhow::Result<Cluster> {
    let cluster = Cluster::with_relay(1, gateway_args, &[])?;
    cluster.wait_linked(WAIT).await?;
    Ok(cluster)
}

/// A token for `gateway` with a reservation id of its own, signed like placement signs.
fn token(gateway: &Gateway, rid: &str) -> anyhow::Result<String> {
    let exp_ms = now_ms() + 60_000;
    Ok(
        TokenKey::new(TEST_TOKEN_SECRET.as_bytes()).sign(&AssignmentClaims {
            sub: gateway.node_id().to_owned(),
            ns: "/".into(),
            rid: rid.into(),
            exp: exp_ms / 1000 + 1,
            exp_ms,
            uid: None,
            rooms: None,
        })?,
    )
}

/// Opens `tokens.len()` websockets, then sends every CONNECT at once and returns each answer:
/// `Ok(())` when accepted, `Err(reason)` when refused.
async fn connect_all(url: &str, tokens: &[String]) -> anyhow::Result<Vec<Result<(), String>>> {
    let mut sockets = Vec::with_capacity(tokens.len());
    for _ in tokens {
        sockets.push(RawSocket::open(url).await?);
    }
    let answers = join_all(
        sockets
            .iter_mut()
            .zip(tokens)
            .map(|(raw, token)| async move {
                raw.send(&format!("40{}", json!({ "token": token })))
                    .await?;
                let reply = raw
                    .next_text()
                    .await?
                    .context("closed before the CONNECT was answered")?;
                if reply.starts_with("40") {
                    return Ok(Ok(()));
                }
                let refusal: Value = serde_json::from_str(
                    reply
                        .strip_prefix("44")
                        .with_context(|| format!("neither CONNECT nor connect_error: {reply}"))?,
                )?;
                Ok(Err(refusal["message"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()))
            }),
    )
    .await;
    answers.into_iter().collect()
}

/// How many of `answers` were accepted, and the refusal reasons of the others.
fn tally(answers: &[Result<(), String>]) -> (usize, Vec<&str>) {
    let accepted = answers.iter().filter(|a| a.is_ok()).count();
    let refused = answers
        .iter()
        .filter_map(|a| a.as_ref().err().map(String::as_str))
        .collect();
    (accepted, refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_joins_and_resumes_on_several_sockets_stop_at_exactly_the_room_limit()
-> anyhow::Result<()> {
    // A limit large enough that the namespace holds thousands of rooms: reading a socket's rooms
    // then takes long enough for racing joins to meet often, had the check and the join been
    // two steps.
    const MAX_ROOMS: usize = 250;
    const SOCKETS: usize = 8;
    let setup = setup(&["--max-rooms-per-socket", &MAX_ROOMS.to_string()]).await?;
    let mut sockets = Vec::new();
    for _ in 0..SOCKETS {
        sockets.push(RawSocket::connected(setup.placement.http_url()).await?);
    }
    let floods = sockets.iter_mut().enumerate().map(|(s, raw)| async move {
        // Joins of one room and resumes of three, interleaved, all sent before any answer.
        let mut sent: Vec<(u64, usize)> = Vec::new();
        for i in 0..600 {
            if i % 10 == 5 {
                let rooms: Vec<String> = (0..3).map(|j| format!("s{s}-resume{i}-{j}")).collect();
                sent.push((raw.emit("resume", &[json!({ "rooms": rooms })]).await?, 3));
            } else {
                sent.push((
                    raw.emit("join", &[json!(format!("s{s}-join{i}"))]).await?,
                    1,
                ));
            }
        }
        let ids: Vec<u64> = sent.iter().map(|(id, _)| *id).collect();
        let acks = raw.acks(&ids).await?;
        let mut joined = 0;
        for (id, rooms) in sent {
            let ack = &acks[&id];
            match (&ack["ok"], &ack["error"]) {
                (Value::Bool(true), _) => joined += rooms,
                (Value::Bool(false), e) if e == "too_many_rooms" => {}
                _ => bail!("socket {s}: unexpected ack {ack}"),
            }
        }
        let one_more = raw.call("join", &[json!(format!("s{s}-late"))]).await?;
        anyhow::Ok((joined, one_more))
    });
    for (s, outcome) in join_all(floods).await.into_iter().enumerate() {
        let (joined, one_more) = outcome?;
        ensure!(
            joined == MAX_ROOMS,
            "socket {s} got {joined} rooms from concurrent joins and resumes, limit {MAX_ROOMS}"
        );
        ensure!(
            one_more["error"] == "too_many_rooms",
            "socket {s}: a join past the limit was answered {one_more}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_token_raced_from_many_connections_connects_exactly_once() -> anyhow::Result<()> {
    let setup = setup(&["--connect-rate", "0"]).await?;
    // Several rounds: the race needs two CONNECTs handled at the same instant on two threads.
    for round in 0..10 {
        let token = token(&setup.gateways[0], &format!("raced-{round}"))?;
        let answers = connect_all(setup.gateways[0].url(), &vec![token; 24]).await?;
        let (accepted, refused) = tally(&answers);
        ensure!(
            accepted == 1 && refused.iter().all(|r| *r == "token_reused"),
            "round {round}: one token raced 24 times: {accepted} accepted, refused {refused:?}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_connects_stop_at_exactly_max_connections() -> anyhow::Result<()> {
    const MAX: usize = 5;
    let setup = setup(&["--max-connections", &MAX.to_string(), "--connect-rate", "0"]).await?;
    let tokens = (0..30)
        .map(|i| token(&setup.gateways[0], &format!("cap-{i}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let answers = connect_all(setup.gateways[0].url(), &tokens).await?;
    let (accepted, refused) = tally(&answers);
    ensure!(
        accepted == MAX && refused.iter().all(|r| *r == "over_capacity"),
        "30 racing connects with --max-connections {MAX}: {accepted} accepted, refused {refused:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_burst_is_held_to_the_connect_rate() -> anyhow::Result<()> {
    const RATE: usize = 5;
    let setup = setup(&["--connect-rate", &RATE.to_string()]).await?;
    let tokens = (0..40)
        .map(|i| token(&setup.gateways[0], &format!("rate-{i}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let started = Instant::now();
    let answers = connect_all(setup.gateways[0].url(), &tokens).await?;
    let elapsed = started.elapsed();
    let (accepted, refused) = tally(&answers);
    // A token bucket holding one second: the burst gets the full bucket plus what refilled
    // while the burst lasted (the sockets were opened before the clock started, so only the
    // CONNECTs count).
    let refill = (elapsed.as_secs_f64() * RATE as f64).ceil() as usize;
    ensure!(
        (RATE..=RATE + refill).contains(&accepted) && refused.iter().all(|r| *r == "rate_limited"),
        "40 racing connects at --connect-rate {RATE} over {elapsed:?}: {accepted} accepted \
         (at most {} allowed), refused {refused:?}",
        RATE + refill
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_do_not_spend_the_connect_rate() -> anyhow::Result<()> {
    const RATE: usize = 5;
    let setup = setup(&["--connect-rate", &RATE.to_string()]).await?;
    let url = setup.gateways[0].url();
    // A host with no valid token floods CONNECTs at eight times the rate: each is refused for
    // its token, none for the rate, and so none takes a place in the bucket...
    let bad = vec!["not-a-token".to_owned(); 8 * RATE];
    let answers = connect_all(url, &bad).await?;
    let (accepted, refused) = tally(&answers);
    ensure!(
        accepted == 0 && refused.iter().all(|r| *r == "bad_token"),
        "{} bad-token connects at --connect-rate {RATE}: {accepted} accepted, refused {refused:?}",
        bad.len()
    );
    // ...which is still whole for the clients placement sent.
    let good = (0..RATE)
        .map(|i| token(&setup.gateways[0], &format!("after-flood-{i}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let answers = connect_all(url, &good).await?;
    let (accepted, refused) = tally(&answers);
    ensure!(
        accepted == RATE,
        "{RATE} good connects right after the flood: {accepted} accepted, refused {refused:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_assigns_stop_at_exactly_a_gateways_capacity() -> anyhow::Result<()> {
    const CAPACITY: usize = 5;
    let setup = setup(&["--max-connections", &CAPACITY.to_string()]).await?;
    let placement = setup.placement.http_url().to_owned();
    // Wait until placement knows the gateway (one assignment succeeds), then give it back by
    // using it, so the burst starts from one connection.
    let first = eventually("placement to assign the gateway", WAIT, async || {
        assign(&placement, "/").await
    })
    .await?;
    let _held = RawSocket::connect(&first.url, &first.token).await?;
    let client = switchyard_testkit::reqwest::Client::new();
    let burst = join_all((0..30).map(|_| {
        let client = client.clone();
        let url = format!("{placement}/v1/assign?namespace=/");
        async move { anyhow::Ok(client.get(url).send().await?.status().as_u16()) }
    }))
    .await
    .into_iter()
    .collect::<anyhow::Result<Vec<u16>>>()?;
    let ok = burst.iter().filter(|s| **s == 200).count();
    let full = burst.iter().filter(|s| **s == 503).count();
    ensure!(
        ok == CAPACITY - 1 && full == burst.len() - ok,
        "30 racing assigns for a gateway with room for {} more: {ok} assigned, {full} 503, \
         statuses {burst:?}",
        CAPACITY - 1
    );
    Ok(())
}
