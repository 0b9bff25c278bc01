/* The projections of gemm.c as bf16 products, for x86-64 CPUs with AVX-512 BF16 (included by
 * gemm.c; compiled only where the compiler knows the instructions, used only where the CPU has
 * them).
 *
 * Same contract as r1_linear: out[O, N] (+)= W[O, K] @ f(x) (+ bias), activations feature-major.
 * W holds bf16 weights, packed once per sync by r1_pack6_bf16 into panels of 6 rows of K/2 pairs
 * ([O/6][K/2][6] 32-bit words, weights 2k and 2k+1 of a row in one word). f(x) is computed in fp32
 * by gemm.c's prologue, then rounded to bf16 and paired the same way ([K/2][columns] words, in
 * chunks of 64 columns). Each step of the inner loop broadcasts the 6 rows' pairs and multiplies
 * them into 32 columns with VDPBF16PS (two bf16 products summed into an fp32 lane): 12 fp32
 * accumulators of 16 columns. 2..16 columns take two panels times 16 columns instead, and one
 * column a lane per weight row (narrow1_bf16): the 16-column tile would compute it 16 times over. A column's
 * sum runs over k in the same order whatever its tile, so its value does not depend on its place
 * in the batch. K must be even.
 */
#include <stdint.h>

#define BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512bf16")))

/* the columns f(x) is padded to for bf16 products: 16 for 1..16, else a multiple of 32 */
static inline long padded_columns_bf16(long N) {
    return N <= 16 ? 16 : (N + 31) / 32 * 32;
}

/* fp32 -> bf16 bits, rounded to nearest even (as PyTorch rounds), NaN kept a NaN */
static inline uint32_t bf16_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (u >> 16) | 0x40u;
    return (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
}

/* as r1_pack6, into bf16 pairs: P [ceil(O/6), K/2, 6] words */
void r1_pack6_bf16(const float *const *parts, const long *part_rows, long nparts, uint32_t *P, long O, long K) {
    long panels = (O + 5) / 6, K2 = K / 2;
    #pragma omp parallel for schedule(static)
    for (long t = 0; t < panels; t++) {
        const float *src[6];
        panel_rows(parts, part_rows, nparts, K, t, src);
        uint32_t *p = P + t * K2 * 6;
        for (long k = 0; k < K2; k++)
            for (long r = 0; r < 6; r++)
                p[k * 6 + r] = src[r] ? bf16_bits(src[r][2 * k]) | bf16_bits(src[r][2 * k + 1]) << 16 : 0u;
    }
}

/* xs (f(x) in fp32, chunked as gemm.c's chunk_at) -> xb, bf16 pairs: chunk c of columns is a
   [K/2, w] block of words at xb + c * K/2. Called by every thread of a parallel region. */
BF16_TARGET static void to_pairs(float *xs, long K, long NP, uint32_t *xb) {
    long K2 = K / 2;
    #pragma omp for schedule(static)
    for (long k = 0; k < K2; k++)
        for (long c = 0; c < NP; c += 64) {
            long w;
            const float *a = chunk_at(xs, K, NP, c, &w) + 2 * k * w, *b = a + w;
            uint32_t *dst = xb + c * K2 + k * w;
            for (long j = 0; j < w; j += 16) {  /* w is a multiple of 16 */
                __m512i lo = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(a + j)));
                __m512i hi = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(b + j)));
                _mm512_storeu_si512(dst + j, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
            }
        }
}

#define DP2(i, p) { __m512bh w_ = (__m512bh)_mm512_set1_epi32((int)(p)); \
    c##i##0 = _mm512_dpbf16_ps(c##i##0, w_, x0); c##i##1 = _mm512_dpbf16_ps(c##i##1, w_, x1); }

/* one panel of 6 weight rows times 32 columns of paired f(x); `prefetch` as in gemm.c's panel */
BF16_TARGET static inline __attribute__((always_inline)) void panel_bf16(const uint32_t *P, const uint32_t *x, long ldx,
        long K2, long o, int rows, long n, int cols, const float *bias, float *out, long ldo, int accumulate,
        int transposed, const int prefetch) {
    __m512 c00 = _mm512_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00,
           c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
    for (long k = 0; k < K2; k++) {
        if (prefetch)
            _mm_prefetch((const char *)(P + 256), _MM_HINT_T0);
        __m512bh x0 = (__m512bh)_mm512_loadu_si512(x), x1 = (__m512bh)_mm512_loadu_si512(x + 16);
        x += ldx;
        DP2(0, P[0]) DP2(1, P[1]) DP2(2, P[2]) DP2(3, P[3]) DP2(4, P[4]) DP2(5, P[5])
        P += 6;
    }
    float acc[6][32];
    _mm512_storeu_ps(acc[0], c00); _mm512_storeu_ps(acc[0] + 16, c01);
    _mm512_storeu_ps(acc[1], c10); _mm512_storeu_ps(acc[1] + 16, c11);
    _mm512_storeu_ps(acc[2], c20); _mm512_storeu_ps(acc[2] + 16, c21);
    _mm512_storeu_ps(acc[3], c30); _mm512_storeu_ps(acc[3] + 16, c31);
    _mm512_storeu_ps(acc[4], c40); _mm512_storeu_ps(acc[4] + 16, c41);
    _mm512_storeu_ps(acc[5], c50); _mm512_storeu_ps(acc[5] + 16, c51);
    store(acc[0], 32, o, rows, n, cols, bias, out, ldo, accumulate, transposed);
}

#define DP1(i, p) c##i = _mm512_dpbf16_ps(c##i, (__m512bh)_mm512_set1_epi32((int)(p)), x0);

/* two panels (12 weight rows, the second at P1) times 16 columns: batches of 1..16 sequences */
BF16_TARGET static inline void panel_pair16_bf16(const uint32_t *P0, const uint32_t *P1, const uint32_t *x, long K2,
        long o, int rows, int cols, const float *bias, float *out, long ldo, int accumulate, int transposed) {
    __m512 c0 = _mm512_setzero_ps(), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0,
           c6 = c0, c7 = c0, c8 = c0, c9 = c0, c10 = c0, c11 = c0;
    for (long k = 0; k < K2; k++) {
        _mm_prefetch((const char *)(P0 + 256), _MM_HINT_T0);
        _mm_prefetch((const char *)(P1 + 256), _MM_HINT_T0);
        __m512bh x0 = (__m512bh)_mm512_loadu_si512(x);
        x += 16;
        DP1(0, P0[0]) DP1(1, P0[1]) DP1(2, P0[2]) DP1(3, P0[3]) DP1(4, P0[4]) DP1(5, P0[5])
        DP1(6, P1[0]) DP1(7, P1[1]) DP1(8, P1[2]) DP1(9, P1[3]) DP1(10, P1[4]) DP1(11, P1[5])
        P0 += 6;
        P1 += 6;
    }
    float acc[12][16];
    _mm512_storeu_ps(acc[0], c0); _mm512_storeu_ps(acc[1], c1); _mm512_storeu_ps(acc[2], c2);
    _mm512_storeu_ps(acc[3], c3); _mm512_storeu_ps(acc[4], c4); _mm512_storeu_ps(acc[5], c5);
    _mm512_storeu_ps(acc[6], c6); _mm512_storeu_ps(acc[7], c7); _mm512_storeu_ps(acc[8], c8);
    _mm512_storeu_ps(acc[9], c9); _mm512_storeu_ps(acc[10], c10); _mm512_storeu_ps(acc[11], c11);
    store(acc[0], 16, o, rows, 0, cols, bias, out, ldo, accumulate, transposed);
}

enum { BF16_GROUPS = 4 };  /* vectors of 12 rows at once for one column: independent chains */

/* one column of paired f(x) (x: a word every ldx) times panels t..t+8 (one column is a decode step
   of one sequence, which the 16-column tile would compute 16 times over): a lane per weight row,
   two panels (12 rows) per vector, the column's pair broadcast. Lane r of a vector sums row r's
   pairs over k in order with VDPBF16PS, the instruction and the operands panel_pair16_bf16 uses
   for the same row and column, so the same bits as in a batch. */
BF16_TARGET static inline void narrow1_bf16(const uint32_t *P, long K2, long O, long panels, long t, const uint32_t *x,
        long ldx, const float *bias, float *out, long ldo, int accumulate, int transposed) {
    __m512 acc[BF16_GROUPS];
    const uint32_t *p0[BF16_GROUPS], *p1[BF16_GROUPS];
    for (int g = 0; g < BF16_GROUPS; g++) {
        long a = t + 2 * g < panels ? t + 2 * g : panels - 1, b = a + 1 < panels ? a + 1 : a;
        acc[g] = _mm512_setzero_ps();
        p0[g] = P + a * K2 * 6;
        p1[g] = P + b * K2 * 6 - 6;  /* lanes 6..11 read panel b's 6 words */
    }
    for (long k = 0; k < K2; k++) {
        __m512bh xk = (__m512bh)_mm512_set1_epi32((int)x[k * ldx]);
        for (int g = 0; g < BF16_GROUPS; g++) {
            _mm_prefetch((const char *)(p0[g] + k * 6 + 256), _MM_HINT_T0);
            _mm_prefetch((const char *)(p1[g] + k * 6 + 262), _MM_HINT_T0);
            __m512i w = _mm512_mask_loadu_epi32(_mm512_maskz_loadu_epi32(0x003f, p0[g] + k * 6), 0x0fc0, p1[g] + k * 6);
            acc[g] = _mm512_dpbf16_ps(acc[g], (__m512bh)w, xk);
        }
    }
    for (int g = 0; g < BF16_GROUPS && t + 2 * g < panels; g++) {
        float v[16];
        long o = (t + 2 * g) * 6;
        _mm512_storeu_ps(v, acc[g]);
        int rows = O - o < 12 ? (int)(O - o) : 12;
        store(v, 1, o, rows, 0, 1, bias, out, ldo, accumulate, transposed);
    }
}

/* as r1_linear, with P packed by r1_pack6_bf16 and xs of r1_linear_work(K, N) floats */
BF16_TARGET void r1_linear_bf16(const uint32_t *P, long O, long K, const float *x, long N, int mode,
                                const float *norm_w, float eps, float *xs, const float *bias, float *out,
                                int accumulate, int transposed) {
    long NP = padded_columns_bf16(N), panels = (O + 5) / 6, ldo = transposed ? O : N, K2 = K / 2;
    float *inv = xs + K * NP;
    uint32_t *xb = (uint32_t *)(inv + NP);
    #pragma omp parallel
    {
        prologue(x, K, N, NP, mode, norm_w, eps, xs, inv);
        to_pairs(xs, K, NP, xb);
        if (N == 1) {
            #pragma omp for schedule(static)
            for (long t = 0; t < panels; t += 2 * BF16_GROUPS)
                narrow1_bf16(P, K2, O, panels, t, xb, NP, bias, out, ldo, accumulate, transposed);
        } else if (NP == 16) {
            #pragma omp for schedule(static)
            for (long t = 0; t < panels; t += 2) {
                const uint32_t *P0 = P + t * K2 * 6, *P1 = t + 1 < panels ? P0 + K2 * 6 : P0;
                long rows = O - t * 6 < 12 ? O - t * 6 : 12;
                panel_pair16_bf16(P0, P1, xb, K2, t * 6, (int)rows, (int)N, bias, out, ldo, accumulate, transposed);
            }
        }
        for (long c = 0; NP > 16 && c < NP; c += 64) {
            long w = NP - c < 64 ? NP - c : 64;
            const uint32_t *block = xb + c * K2;
            #pragma omp for schedule(static)
            for (long t = 0; t < panels; t++) {
                int rows = O - t * 6 < 6 ? (int)(O - t * 6) : 6;
                for (long n = c; n < c + w; n += 32) {
                    int cols = N - n < 32 ? (int)(N - n) : 32;
                    if (cols > 0 && n == c)
                        panel_bf16(P + t * K2 * 6, block, w, K2, t * 6, rows, n, cols, bias, out, ldo, accumulate, transposed, 1);
                    else if (cols > 0)
                        panel_bf16(P + t * K2 * 6, block + (n - c), w, K2, t * 6, rows, n, cols, bias, out, ldo, accumulate, transposed, 0);
                }
            }
        }
    }
}
