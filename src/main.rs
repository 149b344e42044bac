//! The `meshgate` command.

fn main() {
    eprintln!(
        "meshgate {}: the gateway driver is not built yet; see README.md",
        env!("CARGO_PKG_VERSION")
    );
    std::process::exit(2);
}
