// CAME on the GPU: the update of the crate's CPU kernels (came-pytorch 0.1.3), for every tensor
// of a step in a dozen launches. Compiled at run time with NVRTC, once per process.
//
// Types: every kernel computes in T (float or double); parameters are stored in P and gradients
// in G: float, double, or a 16-bit type (bf16_t, f16_t: raw bits, widened to float exactly as
// they are loaded and rounded as they are stored, by the conversions of the portable section
// below, which are the CPU's bit for bit). The statistics, the momentum and the workspace are
// in T. A kernel is instantiated for the types it touches only (see the end of the file): the
// statistics' kernels per T, the gradient sweeps per G, the parameter update per P, the vector
// update per (P, G); the host picks the names (compile.rs).
//
// Determinism: no floating-point atomics. Every sum is formed in a fixed order that depends on
// the shapes only: a factored tensor is cut into tiles of TILE_R x TILE_C; a tile's row sums
// (over its columns) and column sums (over its rows) go to partial-sum arrays, which are then
// added up in tile order with Kahan's compensation. Warp reductions use a fixed butterfly.
// Two runs give the same bits. No sum's error grows with a tensor's size: within a tile a
// thread adds at most 8 terms, and longer sums are trees (warps, blocks) or compensated.
//
// The guard: the first kernels only read gradients and state and write scratch space; a
// non-finite statistic sets a per-tensor status. `finish_norm` ORs the statuses into one flag,
// and every kernel after it returns at once when the flag is set: a step with any bad tensor
// changes nothing, with no host round trip. The host reads the statuses once, after the step.
// guard[0] is that flag; guard[1] is set when a tensor's instability statistics come out
// non-finite (a momentum corrupted before the step): that tensor's status stops its commit and
// parameter update, the other tensors finish their step, as on the CPU.

#define TILE_R 64
#define TILE_C 256
#define THREADS 256
#define WARPS (THREADS / 32)
#define ROWS_PER_WARP (TILE_R / WARPS)
#define COLS_PER_LANE (TILE_C / 32)
#define VEC_CHUNK 4096

#define STATUS_GRAD 1    // a non-finite gradient, or an overflow from finite inputs
#define STATUS_STATE 2   // a non-finite value in the state
#define STATUS_SKIP 4    // no gradient this step: the tensor is left out (set by the host)
#define STATUS_OVERFLOW 8  // a 16-bit parameter came out infinite (found by the update kernels)

struct Tensor {
    long long numel, batch, rows, cols;
    long long m, sq_row, sq_col, res_row, res_col;        // state offsets (vector: sq_row = v)
    long long next_row, next_col, fac_row, fac_col;       // workspace offsets
    long long row_part, col_part;                          // workspace offsets of partial sums
    long long tiles_r, tiles_c;                            // tile counts of one matrix
    long long norm_part, norm_parts;                       // offset and count of norm partials
    int factored, group;
};

template <typename T>
struct Group {
    T beta1, beta2, beta3, omb1, omb2, omb3, eps1, eps2, clip, lr, decay;
    int has_decay;
    int stochastic;   // 16-bit parameters are rounded stochastically (Rounding::Stochastic)
};

// A tile of a factored tensor, or a chunk of a vector.
struct Task {
    int tensor, pad;
    long long b, tr, tc;   // tile: matrix, tile row, tile column; chunk: b = chunk index
};

// An entry task: THREADS consecutive rows or columns of one tensor's statistics.
struct Span {
    int tensor, cols;      // cols: 1 for column statistics, 0 for rows
    long long start, len;
};

// ---- The 16-bit storage types: conversions and rounding, bit for bit those of the CPU.
//
// NVRTC ships no cuda_bf16.h / cuda_fp16.h (the nvidia-cuda-nvrtc wheel has none; they need an
// include path), and the conversions must match the CPU's to the bit, NaNs included: so 16-bit
// values are raw `unsigned short` bits, converted by the integer code below, which transcribes
// src/float.rs (bf16) and the `half` crate's software conversions (f16), both rounding to
// nearest, ties to even; stochastic rounding and its counter-based random bits transcribe
// src/element.rs. The section between the markers is plain C: a unit test of the crate
// (src/cuda/portable.rs) compiles it on the host with the C compiler and checks it against
// the CPU's conversions and the crate's own functions: every 16-bit value, a million f32 values.

#define CAME_FN __device__ __forceinline__
CAME_FN float came_from_bits(unsigned int b) { return __uint_as_float(b); }
CAME_FN unsigned int came_to_bits(float x) { return __float_as_uint(x); }

// CAME_PORTABLE_BEGIN
// bf16 widened to f32: its bits are the upper half of the f32's (src/float.rs, bf16_to_f32).
CAME_FN float came_bf16_to_f32(unsigned short h) {
    return came_from_bits((unsigned int)h << 16);
}

// f32 rounded to bf16, to nearest, ties to even; a NaN keeps its upper bits with the quiet bit
// set (src/float.rs, f32_to_bf16).
CAME_FN unsigned short came_f32_to_bf16(float x) {
    const unsigned int b = came_to_bits(x);
    if ((b & 0x7FFFFFFFu) > 0x7F800000u) return (unsigned short)((b >> 16) | 0x40u);
    return (unsigned short)((b + 0x7FFFu + ((b >> 16) & 1u)) >> 16);
}

// f16 widened to f32, exactly; a NaN gets the quiet bit (half's f16_to_f32_fallback).
CAME_FN float came_f16_to_f32(unsigned short h) {
    const unsigned int sign = ((unsigned int)h & 0x8000u) << 16;
    const unsigned int exp = (unsigned int)h & 0x7C00u;
    const unsigned int man = (unsigned int)h & 0x03FFu;
    if (exp == 0x7C00u) {
        return came_from_bits(sign | 0x7F800000u | (man != 0u ? 0x00400000u | (man << 13) : 0u));
    }
    if (exp == 0u) {
        // zero or a subnormal: man * 2^-24, exact in f32
        const float v = (float)man * 5.9604644775390625e-8f;
        return sign != 0u ? -v : v;
    }
    return came_from_bits(sign | (((exp >> 10) + 112u) << 23) | (man << 13));
}

// f32 rounded to f16, to nearest, ties to even; beyond the range an infinity; a NaN gets the
// quiet bit (half's f32_to_f16_fallback, step for step).
CAME_FN unsigned short came_f32_to_f16(float value) {
    const unsigned int x = came_to_bits(value);
    const unsigned int sign = x & 0x80000000u;
    const unsigned int exp = x & 0x7F800000u;
    const unsigned int man = x & 0x007FFFFFu;
    if (exp == 0x7F800000u) {
        const unsigned int nan_bit = man == 0u ? 0u : 0x0200u;
        return (unsigned short)((sign >> 16) | 0x7C00u | nan_bit | (man >> 13));
    }
    const unsigned int half_sign = sign >> 16;
    const int half_exp = (int)(exp >> 23) - 127 + 15;
    if (half_exp >= 0x1F) return (unsigned short)(half_sign | 0x7C00u);
    if (half_exp <= 0) {
        if (14 - half_exp > 24) return (unsigned short)half_sign;
        const unsigned int m = man | 0x00800000u;
        unsigned int half_man = m >> (14 - half_exp);
        const unsigned int round_bit = 1u << (13 - half_exp);
        if ((m & round_bit) != 0u && (m & (3u * round_bit - 1u)) != 0u) half_man += 1u;
        return (unsigned short)(half_sign | half_man);
    }
    const unsigned int bits = half_sign | ((unsigned int)half_exp << 10) | (man >> 13);
    const unsigned int round_bit = 0x00001000u;
    if ((man & round_bit) != 0u && (man & (3u * round_bit - 1u)) != 0u) {
        return (unsigned short)(bits + 1u);
    }
    return (unsigned short)bits;
}

// The random bits of element `index` under a tensor's stochastic-rounding key: SplitMix64's
// finalizer over the key and the index (src/element.rs, random_bits).
CAME_FN unsigned int came_random_bits(unsigned long long key, unsigned long long index) {
    unsigned long long z = key ^ (index * 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return (unsigned int)(z ^ (z >> 31));
}

CAME_FN float came_widen16(unsigned short h, int bf) {
    return bf ? came_bf16_to_f32(h) : came_f16_to_f32(h);
}

CAME_FN unsigned short came_narrow16(float x, int bf) {
    return bf ? came_f32_to_bf16(x) : came_f32_to_f16(x);
}

CAME_FN int came_finite32(float x) {
    return (came_to_bits(x) & 0x7F800000u) != 0x7F800000u;
}

// x rounded to one of its two 16-bit neighbours (bf16 when `bf`, else f16), the upper with
// probability equal to x's distance from the lower in units of their gap, the top 24 of the 32
// random `bits` deciding; x itself where it is representable, NaN and infinities to nearest
// (src/element.rs, round_stochastic, operation for operation).
CAME_FN unsigned short came_stochastic16(float x, unsigned int bits, int bf) {
    const unsigned short near = came_narrow16(x, bf);
    const float y = came_widen16(near, bf);
    if (y == x || !came_finite32(x) || !came_finite32(y)) return near;
    // the neighbour on the other side of x: one step of the magnitude's bits
    const unsigned short other =
        fabsf(y) < fabsf(x) ? (unsigned short)(near + 1u) : (unsigned short)(near - 1u);
    unsigned short lo = other, hi = near;
    if (fabsf(y) < fabsf(came_widen16(other, bf))) {
        lo = near;
        hi = other;
    }
    const float l = came_widen16(lo, bf), h = came_widen16(hi, bf);
    // exact: x lies between two neighbours, whose gap is a power of two
    const float p = (x - l) / (h - l);
    const float u = (float)(bits >> 8) * (1.0f / 16777216.0f);
    return u < p ? hi : lo;
}
// CAME_PORTABLE_END

// The storage types, told apart by the templates below.
struct bf16_t { unsigned short bits; };
struct f16_t { unsigned short bits; };

// Elem<S>: loading (widening) a stored S into its compute type, storing (rounding) back, as the
// CPU's Element trait does it (src/element.rs).
template <typename S> struct Elem;

// f32 and f64 are stored as computed: nothing to widen or round.
template <typename T> struct Exact {
    static constexpr bool rounds = false;
    static __device__ __forceinline__ T load(T x) { return x; }
    static __device__ __forceinline__ T narrow(T x) { return x; }
    static __device__ __forceinline__ T round_near(T x) { return x; }
    static __device__ __forceinline__ T stochastic(T x, unsigned int) { return x; }
};

// bf16 (BF = 1) and f16 (BF = 0): computed in f32, rounded back.
template <typename S, int BF> struct Half {
    static constexpr bool rounds = true;
    static __device__ __forceinline__ float load(S x) { return came_widen16(x.bits, BF); }
    static __device__ __forceinline__ S narrow(float x) {
        S r;
        r.bits = came_narrow16(x, BF);
        return r;
    }
    static __device__ __forceinline__ float round_near(float x) {
        return came_widen16(came_narrow16(x, BF), BF);
    }
    static __device__ __forceinline__ S stochastic(float x, unsigned int bits) {
        S r;
        r.bits = came_stochastic16(x, bits, BF);
        return r;
    }
};

template <> struct Elem<float> : Exact<float> {};
template <> struct Elem<double> : Exact<double> {};
template <> struct Elem<bf16_t> : Half<bf16_t, 1> {};
template <> struct Elem<f16_t> : Half<f16_t, 0> {};

__device__ __forceinline__ float shfl(float v, int m) { return __shfl_xor_sync(0xffffffffu, v, m); }
__device__ __forceinline__ double shfl(double v, int m) { return __shfl_xor_sync(0xffffffffu, v, m); }

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
    for (int m = 16; m > 0; m >>= 1) v += shfl(v, m);
    return v;
}

template <typename T>
__device__ __forceinline__ bool finite(T x) { return isfinite(x); }
// a possible second-moment statistic: finite and not negative (an average of squares)
template <typename T>
__device__ __forceinline__ bool statistic(T x) { return x >= T(0) && isfinite(x); }

// ---- The element formulas, each mirroring the function of the same name in
// src/came/formula.rs (same operations, same order; no fused multiply-adds, see compile.rs).

// ema: the running average beta old + (1 - beta) x (lines 5, 6, 10, 12, 13 of Algorithm 1).
template <typename T>
__device__ __forceinline__ T ema(T old, T x, T beta, T one_minus_beta) {
    return old * beta + one_minus_beta * x;
}

// square: g^2.
template <typename T>
__device__ __forceinline__ T square(T g) { return g * g; }

// sq_term: g^2 + eps1, the term of the squared-gradient statistics (lines 5-6).
template <typename T>
__device__ __forceinline__ T sq_term(T g_sq, T eps1) { return g_sq + eps1; }

// momentum: the clipped update u = (rf_d cf) g, m = beta1 m + (1 - beta1) u, and the
// instability term (u - m)^2 + eps2 (lines 8-11).
template <typename T>
__device__ __forceinline__ void momentum(const Group<T>& k, T g, T m, T rf_d, T cf, T* m_new,
                                         T* term) {
    const T u = (rf_d * cf) * g;
    *m_new = ema(m, u, k.beta1, k.omb1);
    const T diff = u - *m_new;
    *term = diff * diff + k.eps2;
}

// decay: decoupled weight decay p - (lr wd) p.
template <typename T>
__device__ __forceinline__ T decay(const Group<T>& k, T p) { return p - k.decay * p; }

// decayed: decoupled weight decay p - (lr wd) p when on, rounded to P when P is a 16-bit type
// rounded to nearest (the reference decays the parameter in place, in its own dtype, before the
// update); with stochastic rounding the decayed value stays in T (formula::decayed).
template <typename P, typename T>
__device__ __forceinline__ T decayed(const Group<T>& k, T p) {
    if (!k.has_decay) return p;
    p = decay(k, p);
    return Elem<P>::rounds && !k.stochastic ? Elem<P>::round_near(p) : p;
}

// apply: p - ((rf cf) m) lr, p after decayed (lines 14-15).
template <typename T>
__device__ __forceinline__ T apply(const Group<T>& k, T p, T m, T rf, T cf) {
    return p - ((rf * cf) * m) * k.lr;
}

// store: a new parameter written back to P: to nearest, or, for a 16-bit P in a group that
// asks for it, stochastically with the random bits of element `index` (its flat index in the
// tensor) under the tensor's key (sweeps.rs, apply_rows and store_stochastic).
template <typename P, typename T>
__device__ __forceinline__ P store(const Group<T>& k, T x, unsigned long long key, long long index) {
    if (Elem<P>::rounds && k.stochastic) {
        return Elem<P>::stochastic(x, came_random_bits(key, (unsigned long long)index));
    }
    return Elem<P>::narrow(x);
}

// overflowed: a stored 16-bit parameter that is infinite (Error::ParameterOverflow).
template <typename P>
__device__ __forceinline__ bool overflowed(P stored) {
    return Elem<P>::rounds && !finite(Elem<P>::load(stored));
}

// kahan: adds x to the compensated sum (sum, comp), as kahan() in src/came/sum.rs.
template <typename T>
__device__ __forceinline__ void kahan(T* sum, T* comp, T x) {
    const T y = x - *comp;
    const T t = *sum + y;
    *comp = (t - *sum) - y;
    *sum = t;
}

// rsqrt: 1 / sqrt(x), a square root then a division, as the reference rounds it.
template <typename T>
__device__ __forceinline__ T rsqrt(T x) { return T(1) / sqrt(x); }

// vector_second_moment: v = beta2 v + (1 - beta2)(g^2 + eps1) and u = rsqrt(v) g (lines 5, 8).
template <typename T>
__device__ __forceinline__ void vector_second_moment(const Group<T>& k, T g, T v, T* v_new, T* u) {
    *v_new = ema(v, sq_term(square(g), k.eps1), k.beta2, k.omb2);
    *u = rsqrt(*v_new) * g;
}

// vector_update: u / d when clipped, the momentum, and p - m lr, p after decayed (lines 9,
// 10, 15 for a vector).
template <typename T>
__device__ __forceinline__ void vector_update(const Group<T>& k, T u, T d, T* m, T* p) {
    if (d != T(1)) u = u / d;
    *m = ema(*m, u, k.beta1, k.omb1);
    *p = *p - *m * k.lr;
}

// Which sums a tile pass forms.
#define PASS_SQ 0    // g^2 + eps1
#define PASS_RES 1   // momentum update, then (u - m)^2 + eps2

// Row partial sums over the tile's columns and column partial sums over its rows, of g^2 + eps1
// (PASS_SQ) or of the instability after the momentum update (PASS_RES, which writes m).
template <typename T, typename G, int PASS>
__device__ void tile_stats(const Tensor* tensors, const Group<T>* groups, const Task* tasks,
                           T* state, T* work, void* const* params, const G* const* grads,
                           const T* clip_d, const int* guard, int* status, long long* first_bad) {
    if (PASS == PASS_RES && *guard) return;
    const Task task = tasks[blockIdx.x];
    if (status[task.tensor] & STATUS_SKIP) return;
    const Tensor t = tensors[task.tensor];
    const Group<T> k = groups[t.group];
    const long long R = t.rows, C = t.cols;
    const G* g = grads[task.tensor] + task.b * R * C;
    T* m = state + t.m + task.b * R * C;
    const T* rf = work + t.fac_row + task.b * R;
    const T* cf = work + t.fac_col + task.b * C;
    T d = PASS == PASS_RES ? clip_d[task.tensor] : T(1);
    __shared__ T col_acc[WARPS][TILE_C];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const long long r0 = task.tr * TILE_R, c0 = task.tc * TILE_C;
    T cacc[COLS_PER_LANE];
    for (int j = 0; j < COLS_PER_LANE; ++j) cacc[j] = T(0);
    bool bad = false;
    long long bad_at = 0x7fffffffffffffffLL;
    for (int i = 0; i < ROWS_PER_WARP; ++i) {
        const long long r = r0 + warp + (long long)i * WARPS;
        T racc = T(0);
        if (r < R) {
            const T rfd = PASS == PASS_RES ? rf[r] / d : T(0);
            for (int j = 0; j < COLS_PER_LANE; ++j) {
                const long long c = c0 + lane + 32 * j;
                if (c < C) {
                    const T x = Elem<G>::load(g[r * C + c]);
                    T term;
                    if (PASS == PASS_SQ) {
                        term = sq_term(square(x), k.eps1);
                        if (!finite(x)) {
                            bad = true;
                            bad_at = min(bad_at, task.b * R * C + r * C + c);
                        }
                    } else {
                        T mn;
                        momentum(k, x, m[r * C + c], rfd, cf[c], &mn, &term);
                        m[r * C + c] = mn;
                    }
                    racc += term;
                    cacc[j] += term;
                }
            }
        }
        racc = warp_sum(racc);
        if (lane == 0 && r < R) work[t.row_part + task.tc * t.batch * R + task.b * R + r] = racc;
    }
    for (int j = 0; j < COLS_PER_LANE; ++j) col_acc[warp][lane + 32 * j] = cacc[j];
    __syncthreads();
    const long long c = c0 + threadIdx.x;
    if (c < C) {
        T s = col_acc[0][threadIdx.x];
        for (int w = 1; w < WARPS; ++w) s += col_acc[w][threadIdx.x];
        work[t.col_part + task.tr * t.batch * C + task.b * C + c] = s;
    }
    if (PASS == PASS_SQ && bad) {
        atomicOr(&status[task.tensor], STATUS_GRAD);
        atomicMin(&first_bad[task.tensor], bad_at);
    }
    (void)params;
}

// New statistics from partial sums: rows (over tile columns) or columns (over tile rows), added
// up in tile order: next = beta * old + (1 - beta) * (sum / n).
template <typename T, int PASS>
__device__ void finish_stats(const Tensor* tensors, const Group<T>* groups, const Span* spans,
                             T* state, T* work, int* guard, int* status) {
    if (PASS == PASS_RES && guard[0]) return;
    const Span s = spans[blockIdx.x];
    const long long i = s.start + threadIdx.x;
    if (threadIdx.x >= s.len || (status[s.tensor] & STATUS_SKIP)) return;
    const Tensor t = tensors[s.tensor];
    const Group<T> k = groups[t.group];
    const T beta = PASS == PASS_SQ ? k.beta2 : k.beta3;
    const T omb = PASS == PASS_SQ ? k.omb2 : k.omb3;
    // columns: partial sums over tile rows, averaged over the rows; rows: the other way round
    const bool col = s.cols;
    const long long parts = col ? t.tiles_r : t.tiles_c;
    const long long part = col ? t.col_part : t.row_part;
    const long long stride = t.batch * (col ? t.cols : t.rows);
    const long long sq = col ? t.sq_col : t.sq_row;
    const long long res = col ? t.res_col : t.res_row;
    // the tiles' partial sums in tile order, with Kahan's compensation so that the error does
    // not grow with the number of tiles (a column of a million rows has 15,625): kahan() of
    // src/came/sum.rs
    T sum = T(0), comp = T(0);
    for (long long p = 0; p < parts; ++p) kahan(&sum, &comp, work[part + p * stride + i]);
    const T old = state[(PASS == PASS_SQ ? sq : res) + i];
    const T next = ema(old, sum / T(col ? t.rows : t.cols), beta, omb);
    work[(col ? t.next_col : t.next_row) + i] = next;
    // a corrupt statistic is the state's fault, whatever the gradient
    if (PASS == PASS_SQ && !(statistic(old) && statistic(state[res + i])))
        atomicOr(&status[s.tensor], STATUS_STATE);
    if (!finite(next)) {
        if (PASS == PASS_SQ) {
            atomicOr(&status[s.tensor], STATUS_GRAD);
        } else {
            // found after the guard: the momentum was corrupt; this tensor stops here
            atomicOr(&status[s.tensor], STATUS_STATE);
            atomicOr(&guard[1], 1);
        }
    }
}

// The reference's factors of one matrix (one block per matrix): rf = rsqrt(row / mean(row)),
// cf = rsqrt(col), from the new statistics; PASS_RES also commits them to the state.
template <typename T, int PASS>
__device__ void factors(const Tensor* tensors, const Task* mats, T* state, T* work, const int* guard,
                        const int* status) {
    if (guard[0]) return;
    const Task task = mats[blockIdx.x];
    if (status[task.tensor] & STATUS_SKIP) return;
    // a tensor whose instability statistics came out non-finite stops here
    if (PASS == PASS_RES && (status[task.tensor] & STATUS_STATE)) return;
    const Tensor t = tensors[task.tensor];
    const long long R = t.rows, C = t.cols, b = task.b;
    const T* nr = work + t.next_row + b * R;
    const T* nc = work + t.next_col + b * C;
    __shared__ double part[THREADS];
    double s = 0.0;
    for (long long i = threadIdx.x; i < R; i += THREADS) s += (double)nr[i];
    part[threadIdx.x] = s;
    __syncthreads();
    for (int w = THREADS / 2; w > 0; w >>= 1) {
        if (threadIdx.x < w) part[threadIdx.x] += part[threadIdx.x + w];
        __syncthreads();
    }
    const T mean = (T)(part[0] / (double)R);
    T* rf = work + t.fac_row + b * R;
    T* cf = work + t.fac_col + b * C;
    T* keep_r = state + (PASS == PASS_SQ ? t.sq_row : t.res_row) + b * R;
    T* keep_c = state + (PASS == PASS_SQ ? t.sq_col : t.res_col) + b * C;
    for (long long i = threadIdx.x; i < R; i += THREADS) {
        rf[i] = rsqrt(nr[i] / mean);
        if (PASS == PASS_RES) keep_r[i] = nr[i];
    }
    for (long long i = threadIdx.x; i < C; i += THREADS) {
        cf[i] = rsqrt(nc[i]);
        if (PASS == PASS_RES) keep_c[i] = nc[i];
    }
}

// Commits the new squared-gradient statistics (kept in the workspace until the guard passed).
template <typename T>
__device__ void commit_sq(const Tensor* tensors, const Span* spans, T* state, const T* work,
                          const int* guard, const int* status) {
    if (*guard) return;
    const Span s = spans[blockIdx.x];
    if (threadIdx.x >= s.len || (status[s.tensor] & STATUS_SKIP)) return;
    const Tensor t = tensors[s.tensor];
    const long long i = s.start + threadIdx.x;
    if (s.cols) state[t.sq_col + i] = work[t.next_col + i];
    else state[t.sq_row + i] = work[t.next_row + i];
}

// Block sum in a fixed order; the result in thread 0.
template <typename T>
__device__ T block_sum(T v, T* shared) {
    v = warp_sum(v);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    T s = T(0);
    if (threadIdx.x == 0)
        for (int w = 0; w < WARPS; ++w) s += shared[w];
    __syncthreads();
    return s;
}

// Squared norm of one tile of the unclipped update ((rf * cf) * g)^2.
template <typename T, typename G>
__device__ void tile_norm(const Tensor* tensors, const Task* tasks, const T* work,
                          const G* const* grads, double* norm_parts, long long task_offset,
                          const int* status) {
    const Task task = tasks[blockIdx.x];
    if (status[task.tensor] & STATUS_SKIP) return;
    const Tensor t = tensors[task.tensor];
    const long long R = t.rows, C = t.cols;
    const G* g = grads[task.tensor] + task.b * R * C;
    const T* rf = work + t.fac_row + task.b * R;
    const T* cf = work + t.fac_col + task.b * C;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    T acc = T(0);
    for (int i = 0; i < ROWS_PER_WARP; ++i) {
        const long long r = task.tr * TILE_R + warp + (long long)i * WARPS;
        if (r >= R) break;
        for (int j = 0; j < COLS_PER_LANE; ++j) {
            const long long c = task.tc * TILE_C + lane + 32 * j;
            if (c < C) {
                const T u = (rf[r] * cf[c]) * Elem<G>::load(g[r * C + c]);
                acc += u * u;
            }
        }
    }
    __shared__ T shared[WARPS];
    const T s = block_sum(acc, shared);
    const long long tile = (task.b * t.tiles_r + task.tr) * t.tiles_c + task.tc;
    if (threadIdx.x == 0) norm_parts[t.norm_part + tile] = (double)s;
    (void)task_offset;
}

// A chunk of a vector tensor: squared norm of the unclipped update rsqrt(v_new) g, and the
// finiteness of v_new and m.
template <typename T, typename G>
__device__ void vector_norm(const Tensor* tensors, const Group<T>* groups, const Task* tasks,
                            const T* state, const G* const* grads, double* norm_parts,
                            int* status, long long* first_bad) {
    const Task task = tasks[blockIdx.x];
    if (status[task.tensor] & STATUS_SKIP) return;
    const Tensor t = tensors[task.tensor];
    const Group<T> k = groups[t.group];
    const long long start = task.b * VEC_CHUNK;
    const long long end = min(start + (long long)VEC_CHUNK, t.numel);
    const G* g = grads[task.tensor];
    T acc = T(0);
    bool bad_state = false, bad_grad = false;
    long long bad_at = 0x7fffffffffffffffLL;
    for (long long i = start + threadIdx.x; i < end; i += THREADS) {
        const T x = Elem<G>::load(g[i]);
        T vn, u;
        vector_second_moment(k, x, state[t.sq_row + i], &vn, &u);
        acc += u * u;
        if (!finite(x)) { bad_grad = true; bad_at = min(bad_at, i); }
        else if (!finite(vn)) bad_grad = true;
        // a negative second moment is the state's fault where it spoils the update, as on the CPU
        const T v = state[t.sq_row + i];
        if (!finite(state[t.m + i]) || !finite(v) || (v < T(0) && !finite(u))) bad_state = true;
    }
    __shared__ T shared[WARPS];
    const T s = block_sum(acc, shared);
    if (threadIdx.x == 0) norm_parts[t.norm_part + task.b] = (double)s;
    if (bad_grad) { atomicOr(&status[task.tensor], STATUS_GRAD); atomicMin(&first_bad[task.tensor], bad_at); }
    if (bad_state) atomicOr(&status[task.tensor], STATUS_STATE);
}

// Per tensor (one block each): the update's squared norm from its partials, in order, and the
// clip divisor d = max(1, rms / clip); then, in the last block to finish, the guard flag.
template <typename T>
__device__ void finish_norm(const Tensor* tensors, const Group<T>* groups, const double* norm_parts,
                            T* clip_d, double* rms_out, int* status, int n_tensors, int* guard,
                            unsigned int* done) {
    const int ti = blockIdx.x;
    const Tensor t = tensors[ti];
    const Group<T> k = groups[t.group];
    __shared__ double part[THREADS];
    double s = 0.0;
    for (long long i = threadIdx.x; i < t.norm_parts; i += THREADS) s += norm_parts[t.norm_part + i];
    part[threadIdx.x] = s;
    __syncthreads();
    for (int w = THREADS / 2; w > 0; w >>= 1) {
        if (threadIdx.x < w) part[threadIdx.x] += part[threadIdx.x + w];
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        // a tensor left out of the step has no norm, but still counts towards the guard's turn
        if (!(status[ti] & STATUS_SKIP)) {
            const double norm = sqrt(part[0]);
            const double sqrt_n = sqrt((double)t.numel);
            const T rms = (T)norm / (T)sqrt_n;
            const T ratio = rms / k.clip;
            clip_d[ti] = ratio > T(1) ? ratio : T(1);
            rms_out[ti] = norm / sqrt_n;
            if (!isfinite(part[0])) atomicOr(&status[ti], STATUS_GRAD);
        }
        __threadfence();
        // the last block sees every status: it sets the guard
        if (atomicAdd(done, 1u) == (unsigned)(n_tensors - 1)) {
            int any = 0;
            for (int i = 0; i < n_tensors; ++i) any |= atomicOr(&status[i], 0) & ~STATUS_SKIP;
            *guard = any;
            *done = 0;
        }
    }
}

// The whole update of a chunk of a vector tensor: second moment, clipped update, momentum,
// weight decay, parameters (no confidence term), rounded to P as the group says.
template <typename T, typename P, typename G>
__device__ void vector_update(const Tensor* tensors, const Group<T>* groups, const Task* tasks,
                              T* state, P* const* params, const G* const* grads, const T* clip_d,
                              const unsigned long long* keys, const int* guard, int* status,
                              long long* first_bad) {
    if (*guard) return;
    const Task task = tasks[blockIdx.x];
    if (status[task.tensor] & STATUS_SKIP) return;
    const Tensor t = tensors[task.tensor];
    const Group<T> k = groups[t.group];
    const T d = clip_d[task.tensor];
    const unsigned long long key = keys[task.tensor];
    const long long start = task.b * VEC_CHUNK;
    const long long end = min(start + (long long)VEC_CHUNK, t.numel);
    const G* g = grads[task.tensor];
    P* p = params[task.tensor];
    bool bad = false;
    long long bad_at = 0x7fffffffffffffffLL;
    for (long long i = start + threadIdx.x; i < end; i += THREADS) {
        T vn, u;
        vector_second_moment(k, Elem<G>::load(g[i]), state[t.sq_row + i], &vn, &u);
        state[t.sq_row + i] = vn;
        T mn = state[t.m + i];
        T pn = decayed<P>(k, Elem<P>::load(p[i]));
        vector_update(k, u, d, &mn, &pn);
        state[t.m + i] = mn;
        const P out = store<P>(k, pn, key, i);
        p[i] = out;
        if (overflowed(out)) {
            bad = true;
            bad_at = min(bad_at, i);
        }
    }
    if (bad) {
        atomicOr(&status[task.tensor], STATUS_OVERFLOW);
        atomicMin(&first_bad[task.tensor], bad_at);
    }
}

// One tile's parameter update: decay, then p -= ((Rf * Cf) * m) * lr, rounded to P as the group
// says.
template <typename T, typename P>
__device__ void tile_apply(const Tensor* tensors, const Group<T>* groups, const Task* tasks,
                           const T* state, const T* work, P* const* params,
                           const unsigned long long* keys, const int* guard, int* status,
                           long long* first_bad) {
    if (guard[0]) return;
    const Task task = tasks[blockIdx.x];
    if (status[task.tensor] & (STATUS_STATE | STATUS_SKIP)) return;
    const Tensor t = tensors[task.tensor];
    const Group<T> k = groups[t.group];
    const unsigned long long key = keys[task.tensor];
    const long long R = t.rows, C = t.cols;
    // the flat index of the matrix's first element, for the random bits
    const long long base = task.b * R * C;
    const T* m = state + t.m + base;
    P* p = params[task.tensor] + base;
    const T* rf = work + t.fac_row + task.b * R;
    const T* cf = work + t.fac_col + task.b * C;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    bool bad = false;
    long long bad_at = 0x7fffffffffffffffLL;
    for (int i = 0; i < ROWS_PER_WARP; ++i) {
        const long long r = task.tr * TILE_R + warp + (long long)i * WARPS;
        if (r >= R) break;
        for (int j = 0; j < COLS_PER_LANE; ++j) {
            const long long c = task.tc * TILE_C + lane + 32 * j;
            if (c < C) {
                const long long e = r * C + c;
                const T x = apply(k, decayed<P>(k, Elem<P>::load(p[e])), m[e], rf[r], cf[c]);
                const P out = store<P>(k, x, key, base + e);
                p[e] = out;
                if (overflowed(out)) {
                    bad = true;
                    bad_at = min(bad_at, base + e);
                }
            }
        }
    }
    if (bad) {
        atomicOr(&status[task.tensor], STATUS_OVERFLOW);
        atomicMin(&first_bad[task.tensor], bad_at);
    }
}

// The kernels, each instantiated for the types it touches: T is the compute type, G the
// gradients' storage type, P the parameters'. Names end in the types' names as the host spells
// them (compile.rs): `_f32` (T or G or P alone), `_bf16_f32` (P then G).

// The statistics, factors, commits and the clip: T only.
#define INSTANTIATE_T(T, S)                                                                        \
extern "C" __global__ void __launch_bounds__(THREADS) came_finish_sq_##S(const Tensor* a, const Group<T>* b, const Span* c, T* d, T* e, int* f, int* g) { finish_stats<T, PASS_SQ>(a, b, c, d, e, f, g); } \
extern "C" __global__ void __launch_bounds__(THREADS) came_finish_res_##S(const Tensor* a, const Group<T>* b, const Span* c, T* d, T* e, int* f, int* g) { finish_stats<T, PASS_RES>(a, b, c, d, e, f, g); } \
extern "C" __global__ void __launch_bounds__(THREADS) came_factors_sq_##S(const Tensor* a, const Task* b, T* c, T* d, const int* e, const int* f) { factors<T, PASS_SQ>(a, b, c, d, e, f); } \
extern "C" __global__ void __launch_bounds__(THREADS) came_factors_res_##S(const Tensor* a, const Task* b, T* c, T* d, const int* e, const int* f) { factors<T, PASS_RES>(a, b, c, d, e, f); } \
extern "C" __global__ void __launch_bounds__(THREADS) came_commit_sq_##S(const Tensor* a, const Span* b, T* c, const T* d, const int* e, const int* f) { commit_sq<T>(a, b, c, d, e, f); } \
extern "C" __global__ void __launch_bounds__(THREADS) came_finish_norm_##S(const Tensor* a, const Group<T>* b, const double* c, T* d, double* e, int* f, int g, int* h, unsigned int* i) { finish_norm<T>(a, b, c, d, e, f, g, h, i); }

// The sweeps that read the gradients: T and G.
#define INSTANTIATE_G(T, G, S)                                                                     \
extern "C" __global__ void __launch_bounds__(THREADS) came_tile_sq_##S(const Tensor* a, const Group<T>* b, const Task* c, T* d, T* e, void* const* f, const G* const* g, const T* h, const int* i, int* j, long long* k) { tile_stats<T, G, PASS_SQ>(a, b, c, d, e, f, g, h, i, j, k); } \
extern "C" __global__ void __launch_bounds__(THREADS) came_tile_res_##S(const Tensor* a, const Group<T>* b, const Task* c, T* d, T* e, void* const* f, const G* const* g, const T* h, const int* i, int* j, long long* k) { tile_stats<T, G, PASS_RES>(a, b, c, d, e, f, g, h, i, j, k); } \
extern "C" __global__ void __launch_bounds__(THREADS) came_tile_norm_##S(const Tensor* a, const Task* b, const T* c, const G* const* d, double* e, long long f, const int* g) { tile_norm<T, G>(a, b, c, d, e, f, g); } \
extern "C" __global__ void __launch_bounds__(THREADS) came_vector_norm_##S(const Tensor* a, const Group<T>* b, const Task* c, const T* d, const G* const* e, double* f, int* g, long long* h) { vector_norm<T, G>(a, b, c, d, e, f, g, h); }

// The parameter update of factored tensors: T and P.
#define INSTANTIATE_P(T, P, S)                                                                     \
extern "C" __global__ void __launch_bounds__(THREADS) came_tile_apply_##S(const Tensor* a, const Group<T>* b, const Task* c, const T* d, const T* e, P* const* f, const unsigned long long* g, const int* h, int* i, long long* j) { tile_apply<T, P>(a, b, c, d, e, f, g, h, i, j); }

// The whole update of vectors: T, P and G.
#define INSTANTIATE_PG(T, P, G, S)                                                                 \
extern "C" __global__ void __launch_bounds__(THREADS) came_vector_update_##S(const Tensor* a, const Group<T>* b, const Task* c, T* d, P* const* e, const G* const* f, const T* g, const unsigned long long* h, const int* i, int* j, long long* k) { vector_update<T, P, G>(a, b, c, d, e, f, g, h, i, j, k); }

INSTANTIATE_T(float, f32)
INSTANTIATE_T(double, f64)

INSTANTIATE_G(float, float, f32)
INSTANTIATE_G(double, double, f64)
INSTANTIATE_G(float, bf16_t, bf16)
INSTANTIATE_G(float, f16_t, f16)

INSTANTIATE_P(float, float, f32)
INSTANTIATE_P(double, double, f64)
INSTANTIATE_P(float, bf16_t, bf16)
INSTANTIATE_P(float, f16_t, f16)

INSTANTIATE_PG(double, double, double, f64_f64)
INSTANTIATE_PG(float, float, float, f32_f32)
INSTANTIATE_PG(float, float, bf16_t, f32_bf16)
INSTANTIATE_PG(float, float, f16_t, f32_f16)
INSTANTIATE_PG(float, bf16_t, bf16_t, bf16_bf16)
INSTANTIATE_PG(float, bf16_t, float, bf16_f32)
INSTANTIATE_PG(float, bf16_t, f16_t, bf16_f16)
INSTANTIATE_PG(float, f16_t, f16_t, f16_f16)
INSTANTIATE_PG(float, f16_t, float, f16_f32)
INSTANTIATE_PG(float, f16_t, bf16_t, f16_bf16)
