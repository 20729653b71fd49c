mod bench;
fn main() -> anyhow::Result<()> {
    let t: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(1);
    bench::run_matmul(t, 1.0)
}
