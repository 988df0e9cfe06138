//! Criterion micro-benchmarks live in `benches/`; `cargo bench -p tunscope-benches`.
//! The end-to-end tunnel benchmark is `cargo xtask bench tunnel`.
