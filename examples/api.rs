//! The Rust API in brief (README "Rust"): a session generating with an exit policy, then the
//! engine below it. `cargo run --release --example api` from the repository root.

use std::sync::Arc;

use raven::engine::{Engine, Init, TokenControl};
use raven::exit::{Criterion, ExitPolicy};
use raven::kv::{CacheStrategy, KvCache, KvType};
use raven::run::Threads;
use raven::{Model, Session, SessionParams};

fn main() -> raven::Result<()> {
    let model = Arc::new(Model::load("models/demo/demo-q8_0.gguf".as_ref())?);
    let prompt = model
        .tokenizer()?
        .encode("Ball: 1. Swaps: 35 13 24", true)
        .unwrap();

    // A session: sampling, exit policy, budget, speculative decoding, one generation loop.
    let mut params = SessionParams::for_model(&model);
    params.exit.criterion = Criterion::parse("latent-diff:0.03")?;
    let mut session = Session::new(model.clone(), params)?;
    let stops = model.stop_tokens();
    session.generate(&prompt, 8, &stops, |token, stats| {
        println!("{token} after {} iterations", stats.steps);
        true
    })?;

    // The engine below it: a batched pass over positions, then steps under a policy.
    let cache = KvCache::new(&model.config, CacheStrategy::Full, KvType::F32, 64, 32)?;
    let mut engine = Engine::new(model.clone(), cache, Arc::new(Threads::new(2)?));
    let ctl = |policy| TokenControl {
        policy,
        budget_ms: None,
        start: std::time::Instant::now(),
        cancel: None,
    };
    // Scale 0: a zero initial state (the generator is then not drawn from).
    let mut rng = raven::rng::Rng::new(0);
    engine.pass(
        &prompt,
        1,
        Init::Random(0.0, &mut rng),
        None,
        &ctl(ExitPolicy::fixed(32)),
    )?;
    let next = model.emittable().argmax(engine.logits());
    let out = engine.step(
        next,
        Init::Random(0.0, &mut rng),
        &ctl(ExitPolicy {
            criterion: Criterion::parse("kl:1e-3")?,
            ..ExitPolicy::fixed(32)
        }),
    );
    println!("{next}: {} iterations", out?.steps);
    Ok(())
}
