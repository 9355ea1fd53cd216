//! The `ssehub` binary: the hub server (see the `ssehub_server` library for its routes).

fn main() {
    ssehub_server::main();
}
