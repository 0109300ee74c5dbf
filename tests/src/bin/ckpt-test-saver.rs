//! Child process for the kill tests (written by the kill-test work).
fn main() {}
