//! Prints what libtorch this process runs on and how long discovering it took
//! (the first `runtime()` call loads libtorch's CUDA backend).
//!
//! ```sh
//! cargo run --release -p lm --example runtime_report
//! ```

use std::time::Instant;

fn main() {
    let started = Instant::now();
    let runtime = lm::device::runtime();
    let discovery = started.elapsed();
    println!("{runtime}");
    println!(
        "discovery took {:.1} ms (includes loading the CUDA library)",
        discovery.as_secs_f64() * 1e3
    );
}
