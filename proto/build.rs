//! Compiles proto/ with protox, so that no protoc is needed on the build machine.

use std::{env, path::PathBuf};

use protox::prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["corridor/v1/corridor.proto"], ["proto"])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    // Reflection serves this exact descriptor set.
    std::fs::write(out.join("corridor_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        // Hand-written (src/hit.rs): the gateway forwards hits still encoded.
        .extern_path(".corridor.v1.SearchHit", "crate::hit::SearchHit")
        .bytes(".corridor.v1.NodeSearchHit")
        .compile_fds(fds)?;
    Ok(())
}
