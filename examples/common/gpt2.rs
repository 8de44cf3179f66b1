//! The shapes of a model the benchmarks step.

/// GPT-2 small's parameters: embeddings, 12 blocks of attention and MLP, final LayerNorm.
pub fn gpt2_small() -> Vec<Vec<usize>> {
    let (d, vocab, ctx) = (768, 50257, 1024);
    let mut t = vec![vec![vocab, d], vec![ctx, d]];
    for _ in 0..12 {
        t.extend([
            vec![d],
            vec![d], // ln_1 weight, bias
            vec![d, 3 * d],
            vec![3 * d], // attn.c_attn
            vec![d, d],
            vec![d], // attn.c_proj
            vec![d],
            vec![d], // ln_2
            vec![d, 4 * d],
            vec![4 * d], // mlp.c_fc
            vec![4 * d, d],
            vec![d], // mlp.c_proj
        ]);
    }
    t.extend([vec![d], vec![d]]); // ln_f
    t
}
