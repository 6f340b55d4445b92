//! The corridor.v1 gRPC contract: generated messages, clients and servers, the
//! encoded descriptor set that reflection serves, and the table of cities.

pub mod cities;
pub mod cursor;
pub mod hit;
pub mod limits;
pub mod page;

#[allow(clippy::all, clippy::pedantic)]
pub mod v1;

/// The standard services every corridor server serves beside its own:
/// health and reflection.
pub const STANDARD_METHODS: &[&str] = &[
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

/// corridor.v1's method paths, e.g. `/corridor.v1.Node/Search`.
pub const CORRIDOR_METHODS: &[&str] = include!(concat!(env!("OUT_DIR"), "/corridor_methods.rs"));

/// The known method path equal to `path`, if there is one (corridor.v1's,
/// listed from the service definitions at build time, or a standard one):
/// metrics and span names take their values from this bounded set, never
/// from whatever path a caller sends.
pub fn known_method(path: &str) -> Option<&'static str> {
    CORRIDOR_METHODS.iter().chain(STANDARD_METHODS).find(|m| **m == path).copied()
}

pub use hit::SearchHit;
pub use v1::*;

/// Metadata the gateway sets on a node call to name the identity it acts for.
/// Nodes honour it only when the TLS peer is the gateway itself.
pub const ON_BEHALF_OF: &str = "x-corridor-on-behalf-of";

/// A facet's counts in the order `Facets` carries them: most matches first,
/// then by value. Values are distinct, so the order is total without a
/// stable sort.
pub fn facet_counts(counts: impl IntoIterator<Item = (String, u64)>) -> Vec<FacetCount> {
    let mut v: Vec<FacetCount> = counts.into_iter().map(|(value, count)| FacetCount { value, count }).collect();
    v.sort_unstable_by(|a, b| b.count.cmp(&a.count).then_with(|| a.value.cmp(&b.value)));
    v
}

/// Most searches one `SearchBatch` call may carry: nodes refuse more, and
/// the gateway sends no more.
pub const MAX_SEARCH_BATCH: usize = 64;

/// gRPC server reflection, v1 and v1alpha (many clients, Python grpcio's among
/// them, still speak only v1alpha). It lists `service` (the corridor service
/// this server really serves: a gateway does not serve `corridor.v1.Node`),
/// grpc.health.v1 and reflection itself, and describes every type they use.
pub fn reflection_services(
    service: &str,
) -> (
    tonic_reflection::server::v1::ServerReflectionServer<impl tonic_reflection::server::v1::ServerReflection>,
    tonic_reflection::server::v1alpha::ServerReflectionServer<impl tonic_reflection::server::v1alpha::ServerReflection>,
) {
    let builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name(service)
            .with_service_name("grpc.health.v1.Health")
            .with_service_name("grpc.reflection.v1.ServerReflection")
            .with_service_name("grpc.reflection.v1alpha.ServerReflection")
    };
    (
        builder().build_v1().expect("embedded descriptors are valid"),
        builder().build_v1alpha().expect("embedded descriptors are valid"),
    )
}
