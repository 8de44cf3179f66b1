//! A small linear congruential generator (Numerical Recipes' constants): random numbers
//! without a library.

/// The generator's state.
pub struct Lcg(pub u32);

impl Lcg {
    /// Uniform in `[0, 1)`.
    pub fn uniform(&mut self) -> f32 {
        self.0 = self.0.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        (self.0 >> 8) as f32 / (1u32 << 24) as f32
    }

    /// Uniform in `[lo, hi)`.
    pub fn between(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.uniform()
    }
}
