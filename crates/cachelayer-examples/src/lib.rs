//! Runnable tours of the `cachelayer` library, kept in a package of their own so that
//! `cargo run --release --example quickstart` compiles only what the examples use (no
//! benchmark or test dependencies). This library target is empty on purpose: it must never
//! hold code that the examples share, each example reads whole on its own.
