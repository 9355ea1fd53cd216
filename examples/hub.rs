//! The hub server, as an example: the same program as the `ssehub` binary (`ssehub-server/`),
//! with the same flags, so `cargo run --release --example hub -- --demo` and
//! `cargo run --release -p ssehub-server -- --demo` start the same server.
//!
//! ```sh
//! cargo run --release --example hub -- --demo      # then open http://127.0.0.1:8080/
//! cargo run --release --example hub -- --help      # every flag and environment variable
//! ```
//!
//! The example is built without the broker backplanes; the binary has Redis and NATS built in
//! (`cargo run --release -p ssehub-server -- --redis redis://127.0.0.1:6379`).

fn main() {
    ssehub_server::main();
}
