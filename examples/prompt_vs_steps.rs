//! Full-size check: a prompt in one pass against token-by-token decoding (full cache, fixed
//! iterations), largest logit difference. `cargo run --release --example prompt_vs_steps -- MODEL N`.
use raven::exit::ExitPolicy;
use raven::kv::CacheStrategy;
use raven::{Session, SessionParams};
fn main() {
    let a: Vec<String> = std::env::args().collect();
    let m = std::sync::Arc::new(raven::Model::load(std::path::Path::new(&a[1])).unwrap());
    let n: u32 = a[2].parse().unwrap();
    let mut p = SessionParams::for_model(&m);
    p.init_scale = 0.0;
    p.exit = ExitPolicy::fixed(2);
    p.cache = CacheStrategy::Full;
    let toks: Vec<u32> = (0..n).map(|i| (i * 7919 + 11) % 65000).collect();
    let mut s1 = Session::new(m.clone(), p.clone()).unwrap();
    s1.prefill(&toks).unwrap();
    let mut s2 = Session::new(m.clone(), p.clone()).unwrap();
    s2.prefill(&toks[..1]).unwrap();
    for &t in &toks[1..] {
        s2.step(t).unwrap();
    }
    let worst = s1
        .logits()
        .iter()
        .zip(s2.logits())
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    println!(
        "{} isa {}: {n} tokens, largest logit difference {worst:e}",
        a[1],
        raven_quant::isa()
    );
}
