//! The watermark's per-token cost: one step seed (SHA-256 of key and previous token)
//! plus δ added to the green logits over a whole vocabulary, for SmolLM2's 49,152
//! entries and Gemma 3's 262,144.
//!
//!     cargo bench --profile dev --bench watermark
//!
//! Compare with a decode step (about 14 ms for SmolLM2 here at 70 tokens/s).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use leasehold::watermark::{kgw, tournament, Params, WatermarkKey};

fn watermark(c: &mut Criterion) {
    let params = Params::parse("gamma=0.25,delta=2.0").unwrap();
    let Params::Kgw(kgw_params) = params else {
        unreachable!()
    };
    let tournament_params = Params::parse("scheme=tournament,depth=8,context=2").unwrap();
    let Params::Tournament(t) = tournament_params else {
        unreachable!()
    };
    let mut scratch = tournament::Scratch::default();
    let key = WatermarkKey::from_bytes([7; 32]);
    let mut group = c.benchmark_group("watermark step");
    for vocab in [49_152usize, 262_144] {
        let mut logits = vec![0.5f32; vocab];
        group.throughput(Throughput::Elements(vocab as u64));
        group.bench_with_input(BenchmarkId::from_parameter(vocab), &vocab, |b, _| {
            let mut previous = 1i32;
            b.iter(|| {
                let seed = params.step_seed(&key, &[previous]);
                kgw::bias(black_box(&mut logits), seed, &kgw_params);
                previous = previous.wrapping_add(1);
            })
        });
        let mut weights = vec![0.5f32; vocab];
        group.bench_with_input(
            BenchmarkId::new("tournament depth 8", vocab),
            &vocab,
            |b, _| {
                let mut previous = 1i32;
                b.iter(|| {
                    let seed = tournament_params.step_seed(&key, &[previous]);
                    tournament::reweight(black_box(&mut weights), None, seed, &t, &mut scratch);
                    previous = previous.wrapping_add(1);
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, watermark);
criterion_main!(benches);
