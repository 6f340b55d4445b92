//! Compiles proto/ with protox, so that no protoc is needed on the build machine.

use std::{env, path::PathBuf};

use protox::prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-changed=build.rs");
    let fds = protox::compile(["corridor/v1/corridor.proto"], ["proto"])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    // Reflection serves this exact descriptor set.
    std::fs::write(out.join("corridor_descriptor.bin"), fds.encode_to_vec())?;
    // Every method path the services define: metrics label calls by these
    // and by nothing a caller makes up.
    let mut methods = String::from("&[\n");
    for file in &fds.file {
        for service in &file.service {
            for method in &service.method {
                methods.push_str(&format!("    \"/{}.{}/{}\",\n", file.package(), service.name(), method.name()));
            }
        }
    }
    methods.push(']');
    std::fs::write(out.join("corridor_methods.rs"), methods)?;
    tonic_prost_build::configure()
        // Hand-written (src/hit.rs): the gateway forwards hits still encoded.
        .extern_path(".corridor.v1.SearchHit", "crate::hit::SearchHit")
        .bytes(".corridor.v1.NodeSearchHit")
        .compile_fds(fds)?;
    Ok(())
}
