//! Compiles `proto/` with protox (no `protoc` needed) and keeps the encoded descriptor set so
//! every service can serve gRPC reflection from the very bytes the code was generated from.

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = [
        "switchyard/placement/v1/placement.proto",
        "switchyard/admin/v1/admin.proto",
        "switchyard/admin/v1/relay_admin.proto",
        "switchyard/relay/v1/relay.proto",
        "switchyard/hooks/v1/hooks.proto",
    ];
    let fds = protox::compile(files, [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("switchyard_descriptor.bin"), fds.encode_to_vec())?;
    // Relay payloads are fanned out to many links: `Bytes` clones share one buffer.
    tonic_prost_build::configure()
        .bytes(".switchyard.relay.v1")
        .compile_fds(fds)?;
    println!("cargo:rerun-if-changed={}", root.display());
    Ok(())
}
