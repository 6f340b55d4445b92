//! The code generated from `proto/corridor/v1/corridor.proto`, and its
//! descriptor set.

tonic::include_proto!("corridor.v1");

/// Encoded `FileDescriptorSet` of corridor.v1, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/corridor_descriptor.bin"));
