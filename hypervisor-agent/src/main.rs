//! `hypervisor-agent`: not built yet — see the open issue that owns this component.
//! It only reports its version so the workspace and packaging are complete.

fn main() {
    println!(
        "hypervisor-agent {} (not implemented yet)",
        env!("CARGO_PKG_VERSION")
    );
}
