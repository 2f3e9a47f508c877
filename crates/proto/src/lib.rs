//! Switchyard's wire contracts, generated from `proto/` at build time.
//!
//! The `.proto` files are the source of truth; this crate only exposes what `tonic-prost-build`
//! generates, plus [`FILE_DESCRIPTOR_SET`] for gRPC reflection and the limits the protos state
//! in numbers, so that both ends use one constant.

/// Most rooms one `relay.v1.HeadRequest` names (`room` and `rooms` together): the relay refuses
/// more, and a gateway reading one head for several joins never asks for more.
pub const MAX_HEAD_ROOMS: usize = 256;

/// The encoded `FileDescriptorSet` of every Switchyard proto, for `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/switchyard_descriptor.bin"));

pub mod placement {
    pub mod v1 {
        tonic::include_proto!("switchyard.placement.v1");
    }
}

pub mod admin {
    pub mod v1 {
        tonic::include_proto!("switchyard.admin.v1");
    }
}

pub mod relay {
    pub mod v1 {
        // `LinkMessage.kind` holds a `Frame` next to small control messages; boxing it would
        // cost an allocation per frame for nothing.
        #![allow(clippy::large_enum_variant)]
        tonic::include_proto!("switchyard.relay.v1");
    }
}

pub mod hooks {
    pub mod v1 {
        tonic::include_proto!("switchyard.hooks.v1");
    }
}
