//! The watermark's per-token cost: one step seed (SHA-256 of key and previous token)
//! plus δ added to the green logits over a whole vocabulary, for SmolLM2's 49,152
//! entries and Gemma 3's 262,144.
//!
//!     cargo bench --profile dev --bench watermark
//!
//! Compare with a decode step (about 14 ms for SmolLM2 here at 70 tokens/s).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use leasehold::watermark::{bias, Params, WatermarkKey};

fn watermark(c: &mut Criterion) {
    let params = Params::parse("gamma=0.25,delta=2.0").unwrap();
    let key = WatermarkKey::from_bytes([7; 32]);
    let mut group = c.benchmark_group("watermark step");
    for vocab in [49_152usize, 262_144] {
        let mut logits = vec![0.5f32; vocab];
        group.throughput(Throughput::Elements(vocab as u64));
        group.bench_with_input(BenchmarkId::from_parameter(vocab), &vocab, |b, _| {
            let mut previous = 1i32;
            b.iter(|| {
                let seed = key.step_seed(&[previous], &params);
                bias(black_box(&mut logits), seed, &params);
                previous = previous.wrapping_add(1);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, watermark);
criterion_main!(benches);
