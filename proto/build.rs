//! Compiles `meridian/v1/*.proto` with protox (pure Rust), so no system `protoc` is needed.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "meridian/v1/registry.proto",
    "meridian/v1/cluster.proto",
    "meridian/v1/peer.proto",
    "meridian/v1/routing.proto",
    "meridian/v1/discovery.proto",
    "meridian/v1/acl.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=meridian");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);

    let mut compiler = protox::Compiler::new(["."])?;
    compiler.include_imports(true);
    compiler.open_files(PROTOS)?;
    std::fs::write(
        out_dir.join("meridian_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;

    tonic_prost_build::configure().compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}
