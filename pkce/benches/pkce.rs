//! The costs of each PKCE step: generating on the client, checking on the
//! server.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use palisade_pkce::{ChallengeMethod, CodeChallenge, CodeVerifier, ServerPolicy, State};

const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

fn client(c: &mut Criterion) {
    let mut group = c.benchmark_group("pkce");
    group.bench_function("generate_verifier", |b| b.iter(CodeVerifier::generate));
    group.bench_function("generate_state", |b| b.iter(State::generate));
    let verifier = CodeVerifier::parse(VERIFIER).unwrap();
    group.bench_function("s256_challenge", |b| {
        b.iter(|| CodeChallenge::s256(black_box(&verifier)));
    });
    group.finish();
}

fn server(c: &mut Criterion) {
    let mut group = c.benchmark_group("pkce");
    let policy = ServerPolicy::new();
    group.bench_function("parse_verifier", |b| {
        b.iter(|| CodeVerifier::parse(black_box(VERIFIER)));
    });
    group.bench_function("accept_challenge", |b| {
        b.iter(|| policy.accept(black_box(Some(CHALLENGE)), black_box(Some("S256"))));
    });
    let stored = CodeChallenge::parse(CHALLENGE, ChallengeMethod::S256).unwrap();
    group.bench_function("verify_s256", |b| {
        b.iter(|| policy.verify(black_box(Some(&stored)), black_box(Some(VERIFIER))));
    });
    let malformed = "not a verifier";
    group.bench_function("verify_malformed", |b| {
        b.iter(|| policy.verify(black_box(Some(&stored)), black_box(Some(malformed))));
    });
    group.finish();
}

criterion_group!(benches, client, server);
criterion_main!(benches);
