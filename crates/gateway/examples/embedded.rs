//! A custom socketioxide application that mounts Switchyard through the library API.
//!
//! It takes the gateway's own flags (flattened into its command line) and adds:
//! - an `echo` event on `/`: acks the argument back, and also emits `echo` with it;
//! - an `/hello` HTTP route.
//!
//! Built-in `join` / `leave` / `publish`, admission, load reports and drain all come from
//! Switchyard; it prints the same `SWITCHYARD_READY http=... node=...` line, so tests spawn it
//! like the binary (`target/debug/examples/embedded`).
//!
//! ```text
//! cargo run -p switchyard-gateway --example embedded -- --listen 127.0.0.1:0 --allow-anonymous --placement-url ''
//! ```

use clap::Parser;
use socketioxide::{
    SocketIo,
    extract::{AckSender, Data, SocketRef},
};
use switchyard_common::telemetry::TelemetryArgs;
use switchyard_gateway::{Switchyard, config::GatewayArgs, payload::Payload, server};

#[derive(Debug, Parser)]
#[command(
    name = "embedded",
    about = "A custom Socket.IO app with Switchyard mounted"
)]
struct Args {
    #[command(flatten)]
    gateway: GatewayArgs,
    #[command(flatten)]
    telemetry: TelemetryArgs,
}

/// The application's own connect handler: Switchyard has already admitted the socket.
async fn on_connect(s: SocketRef) {
    tracing::info!(sid = %s.id, "embedded app: client connected");
    s.on(
        "echo",
        async |s: SocketRef, Data::<Payload>(msg), ack: AckSender| {
            let _ = s.emit("echo", &msg);
            let _ = ack.send(&msg);
        },
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let telemetry = switchyard_common::telemetry::init("switchyard-embedded", &args.telemetry)?;
    let listener = tokio::net::TcpListener::bind(args.gateway.listen).await?;
    let gateway = Switchyard::new(args.gateway.settings(listener.local_addr()?))?;

    let (layer, io) = gateway.configure(SocketIo::builder()).build_layer();
    // Our handler on "/", Switchyard-only on any other configured namespace.
    gateway.ns(&io, "/", on_connect);
    for ns in gateway.settings().namespaces.iter().filter(|n| *n != "/") {
        gateway.ns(&io, ns.clone(), async || {});
    }
    let running = gateway.start(io.clone())?;

    let app = axum::Router::new()
        .route(
            "/hello",
            axum::routing::get(async || "hello from the embedded app"),
        )
        .merge(gateway.ops_router(telemetry.metrics.clone()))
        .layer(layer);
    server::serve(listener, app, &gateway, io, running).await
}
