//! Meridian's gRPC contract: the generated types and stubs of package `meridian.v1`.
//!
//! The `.proto` files live beside this crate in `proto/meridian/v1/`. Generated types stop at
//! the boundary of each crate that uses them (see `convert.rs` there).

/// Package `meridian.v1`.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("meridian.v1");
}

/// The encoded `FileDescriptorSet` of every Meridian proto, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/meridian_descriptor.bin"));
