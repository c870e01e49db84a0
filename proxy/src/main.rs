//! The `meridian-proxy` binary.

fn main() {}
