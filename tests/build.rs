//! Compiles the minimal etcd client proto (`proto/etcd/kv.proto`, package `etcdserverpb`) that
//! `meridian-bench` uses to drive etcd, with protox (pure Rust), so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");

    let mut compiler = protox::Compiler::new(["proto"])?;
    compiler.include_imports(true);
    compiler.open_files(["etcd/kv.proto"])?;

    tonic_prost_build::configure()
        .build_server(false)
        .compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}
