//! `meridian`: run a control-plane node (`dev`, `server`) or talk to one (every other
//! subcommand). See `meridian --help`.

/// mimalloc rather than glibc's malloc: with 64 writers against a 3-node cluster on one core,
/// glibc's allocator (`_int_malloc`, `malloc_consolidate`, `_int_free`, ...) was ~19 % of the
/// nodes' CPU (perf): every write allocates request buffers, futures, log entries and
/// persistent-map nodes on several threads. Built without transparent huge pages (the
/// workspace's `no_thp` feature): with them a node kept ~20 % more memory at 100k instances.
/// See BENCHMARKS.md, "Cluster (3 nodes)".
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    meridian_control_plane::cli::main()
}
