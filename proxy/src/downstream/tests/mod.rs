//! The HTTP/1.1 server over real sockets: a raw client in front of the real proxy data path
//! ([`Harness`](crate::tests::Harness)) and real backends behind it.

mod raw;
mod server;
