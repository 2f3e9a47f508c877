//! The Rust peer for Switchyard's benchmarks: socketioxide with `socketioxide-redis`, i.e. a
//! Rust Socket.IO cluster without the relay, so a benchmark can tell what the relay costs or
//! saves. It serves the same built-in events as `bench/peers/node/server.mjs` and a Switchyard
//! gateway, so one load generator drives all three:
//!
//! - `join(room)` → ack `{ok: true}`;
//! - `publish({room, event, data})` → ack `{ok: true}`; every member of `room`, on every
//!   process sharing the Redis, receives `event(data, {room})`.
//!
//! Nothing is tuned: socketioxide's defaults, as a user would start. The one departure from the
//! usual `async fn on_connect` is that the event handlers are registered synchronously in
//! [`ConnectHandler::call`]: socketioxide sends the CONNECT packet and then spawns an async
//! connect handler, so an event the client emits right after CONNECT can arrive before its
//! handler exists and is dropped (under load, a few percent of the benchmark's joins were lost
//! that way and waited out their 30 s ack timeout). The Switchyard gateway registers its
//! handlers the same synchronous way.
//!
//! Once serving it prints `SWITCHYARD_READY http=127.0.0.1:PORT pid=PID` on stdout (the
//! testkit's readiness line).

use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use socketioxide::SocketIo;
use socketioxide::adapter::Adapter;
use socketioxide::extract::{AckSender, SocketRef, TryData};
use socketioxide::handler::ConnectHandler;
use socketioxide::socket::Socket;
use socketioxide_redis::drivers::redis::redis_client as redis;
use socketioxide_redis::{RedisAdapter, RedisAdapterCtr};

#[derive(Debug, Parser)]
#[command(
    name = "sio-redis-peer",
    about = "socketioxide + socketioxide-redis benchmark peer"
)]
struct Cli {
    /// Port to listen on (127.0.0.1); 0 picks a free one.
    #[arg(long, env = "PORT", default_value_t = 0)]
    port: u16,
    /// Redis for the adapter (RESP3 is requested automatically).
    #[arg(long, env = "REDIS_URL")]
    redis_url: String,
}

#[derive(Debug, Deserialize)]
struct Publish {
    room: String,
    event: String,
    data: Value,
}

/// The delivery metadata every member receives after the payload.
#[derive(Debug, Serialize)]
struct Delivery<'a> {
    room: &'a str,
}

/// Registers `join` and `publish` on every new socket before any of its packets is read.
#[derive(Debug, Clone, Copy)]
struct Events;

impl<A: Adapter> ConnectHandler<A, ()> for Events {
    fn call(&self, s: Arc<Socket<A>>, _auth: Option<socketioxide_core::Value>) {
        register(SocketRef::from(s));
    }
}

fn register<A: Adapter>(s: SocketRef<A>) {
    s.on(
        "join",
        async |s: SocketRef<A>, TryData(room): TryData<String>, ack: AckSender<A>| {
            let reply = match room {
                Ok(room) if !room.is_empty() => {
                    s.join(room);
                    json!({"ok": true})
                }
                _ => json!({"ok": false, "error": "bad_room"}),
            };
            let _ = ack.send(&reply);
        },
    );
    s.on(
        "publish",
        async |s: SocketRef<A>, TryData(req): TryData<Publish>, ack: AckSender<A>| {
            let Ok(req) = req else {
                let _ = ack.send(&json!({"ok": false, "error": "bad_publish"}));
                return;
            };
            let meta = Delivery { room: &req.room };
            // Per-socket send failures (a full buffer) do not undo the publish, as in the
            // Node peer, where `emit` never reports them.
            let _ = s
                .within(req.room.clone())
                .emit(&req.event, &(&req.data, &meta))
                .await;
            let _ = ack.send(&json!({"ok": true}));
        },
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let url = if cli.redis_url.contains("protocol=") {
        cli.redis_url.clone()
    } else if cli.redis_url.contains('?') {
        format!("{}&protocol=resp3", cli.redis_url)
    } else {
        format!("{}?protocol=resp3", cli.redis_url)
    };
    let client = redis::Client::open(url.as_str()).with_context(|| format!("redis url {url}"))?;
    let adapter = RedisAdapterCtr::new_with_redis(&client)
        .await
        .with_context(|| format!("connecting the redis adapter to {url}"))?;
    let (layer, io) = SocketIo::builder()
        .with_adapter::<RedisAdapter<_>>(adapter)
        .build_layer();
    io.ns("/", Events)
        .await
        .context("registering the / namespace")?;
    let app = axum::Router::new().layer(layer);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", cli.port))
        .await
        .with_context(|| format!("binding 127.0.0.1:{}", cli.port))?;
    let addr = listener.local_addr()?;
    println!("SWITCHYARD_READY http={addr} pid={}", std::process::id());
    axum::serve(listener, app).await.context("serving")?;
    Ok(())
}
