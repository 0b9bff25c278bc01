/* The projections of a decode step on x86-64 CPUs with AVX2 and FMA, fp32.
 *
 * r1_linear computes out[O, N] (+)= W[O, K] @ f(x) (+ bias), activations feature-major ([K, N],
 * one column per sequence), where f is the identity, an RMS norm over K times a weight, or SwiGLU
 * (x has 2K rows: silu(gate) * up). W is packed once by r1_pack6 into panels of 6 rows laid out
 * k-major ([O/6][K][6], zero rows at the end), so the inner loop reads it sequentially. Each step
 * of the inner loop broadcasts 6 weights and multiplies them into 16 columns of f(x) held in two
 * registers: 12 accumulators, enough independent FMAs to hide their latency; 1..8 columns take two
 * panels times 8 columns instead. f(x) is written once per call into a scratch buffer, padded to a
 * multiple of 16 columns (8 for 1..8) and laid out in chunks of 64 columns. Threads split the panels
 * with OpenMP; the library links against the libgomp PyTorch loaded, so both share one thread pool.
 * r1_attend is the attention (a decode step's or prefill's); r1_decode_step chains them into a whole
 * decode step. gemm_bf16.c has the products on bf16 weights, gemm_int8.c on int8 ones.
 */
#include <immintrin.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { PLAIN = 0, RMSNORM = 1, SWIGLU = 2 };

/* the columns f(x) is padded to: 8 for 1..8, else a multiple of 16 */
static inline long padded_columns(long N) {
    return N <= 8 ? 8 : (N + 15) / 16 * 16;
}

/* src[r] = row 6t + r of the stacked parts (NULL past the last row) */
static inline void panel_rows(const float *const *parts, const long *part_rows, long nparts, long K, long t,
                              const float *src[6]) {
    for (long r = 0; r < 6; r++) {
        long o = t * 6 + r, i = 0;
        while (i < nparts && o >= part_rows[i])
            o -= part_rows[i++];
        src[r] = i < nparts ? parts[i] + o * K : NULL;
    }
}

/* the rows of parts[0], parts[1], ... (part_rows[i] rows of K each, stacked: O rows in all) ->
   P [ceil(O/6), K, 6]; stacking q/k/v or gate/up this way needs no concatenated copy */
void r1_pack6(const float *const *parts, const long *part_rows, long nparts, float *P, long O, long K) {
    long panels = (O + 5) / 6;
    #pragma omp parallel for schedule(static)
    for (long t = 0; t < panels; t++) {
        const float *src[6];
        panel_rows(parts, part_rows, nparts, K, t, src);
        float *p = P + t * K * 6;
        for (long k = 0; k < K; k++)
            for (long r = 0; r < 6; r++)
                p[k * 6 + r] = src[r] ? src[r][k] : 0.0f;
    }
}

/* exp(x) for 8 floats: 2^n * e^r with n = round(x / ln 2), |r| <= ln(2) / 2, e^r by its degree-6
   Taylor polynomial (relative error ~2e-7), x clamped to [-87, 88] (results stay normal) */
static inline __m256 exp8(__m256 x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0f)), _mm256_set1_ps(88.0f));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);      /* ln 2 in two parts, */
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);          /* exact products */
    __m256 p = _mm256_set1_ps(1.0f / 720);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

/* f(x) is laid out chunk by chunk: columns 64c..64c+w (w = 64, less for the last chunk) of all K
   rows are one contiguous [K, w] block at xs + 64cK, so the chunk a panel works on stays in L2. */
static inline float *chunk_at(float *xs, long K, long NP, long n, long *width) {
    long c0 = n / 64 * 64;
    *width = NP - c0 < 64 ? NP - c0 : 64;
    return xs + c0 * K;
}

/* silu(g) * u for 8 lanes, each lane alone (so a value does not depend on its lane) */
static inline __m256 swiglu8(__m256 g, __m256 u) {
    __m256 sig = _mm256_div_ps(_mm256_set1_ps(1.0f), _mm256_add_ps(_mm256_set1_ps(1.0f), exp8(_mm256_sub_ps(_mm256_setzero_ps(), g))));
    return _mm256_mul_ps(_mm256_mul_ps(g, sig), u);
}

/* lanes 0..m of 8 */
static inline __m256i first_lanes(long m) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)m), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* prologue() for one column (a decode step of one sequence): 8 rows per vector instead of one
   column per vector with 7 padded, every value computed as prologue() computes it (the same
   elementwise code; the norm's sum of squares the same FMA chain over k), so a sequence's values
   do not depend on whether it decodes alone. */
static void prologue1(const float *x, long K, long NP, int mode, const float *norm_w, float eps, float *xs, float *inv) {
    #pragma omp for schedule(static)
    for (long k0 = 0; k0 < K; k0 += 8) {
        long m = K - k0 < 8 ? K - k0 : 8;
        __m256i lanes = first_lanes(m);
        __m256 v = _mm256_maskload_ps(x + k0, lanes);
        if (mode == SWIGLU)
            v = swiglu8(v, _mm256_maskload_ps(x + K + k0, lanes));
        float r[8];
        _mm256_storeu_ps(r, v);
        for (long j = 0; j < m; j++) {  /* row k of xs: [value, 0 x NP - 1] (NP: 8, or 16 for bf16 pairs) */
            _mm256_storeu_ps(xs + (k0 + j) * NP, _mm256_castps128_ps256(_mm_set_ss(r[j])));
            for (long c = 8; c < NP; c += 8)
                _mm256_storeu_ps(xs + (k0 + j) * NP + c, _mm256_setzero_ps());
        }
    }
    if (mode != RMSNORM)
        return;
    #pragma omp single
    {
        float sum = 0.0f;
        for (long k = 0; k < K; k++)
            sum = fmaf(xs[k * NP], xs[k * NP], sum);
        for (long j = 0; j < NP; j++)  /* the padded columns' factor, as prologue() computes it */
            inv[j] = 1.0f / sqrtf((j ? 0.0f : sum) / (float)K + eps);
    }
    #pragma omp for schedule(static)
    for (long k = 0; k < K; k++)
        xs[k * NP] *= inv[0] * norm_w[k];
}

/* xs = f(x), x [K or 2K, N], chunked as above; columns N..NP are zero. Called by every thread of a
   parallel region: rows are split between them; inv is a shared scratch of NP floats. */
static void prologue(const float *x, long K, long N, long NP, int mode, const float *norm_w, float eps, float *xs, float *inv) {
    if (N == 1) {
        prologue1(x, K, NP, mode, norm_w, eps, xs, inv);
        return;
    }
    #pragma omp for schedule(static)
    for (long k = 0; k < K; k++) {
        const float *src = x + k * N;
        const float *up = x + (K + k) * N;
        for (long c = 0; c < NP; c += 64) {
            long w;
            float *row = chunk_at(xs, K, NP, c, &w) + k * w;
            long n = c, end = c + w < N ? c + w : N;
            if (mode == SWIGLU) {
                /* every column by the same vector code (the last few from padded copies): a
                   column's value must not depend on its place in the batch */
                for (; n < end; n += 8) {  /* a last partial 8 reads zeros past the end: silu(0) * 0 = 0 */
                    __m256i lanes = first_lanes(end - n);
                    _mm256_storeu_ps(row + n - c, swiglu8(_mm256_maskload_ps(src + n, lanes), _mm256_maskload_ps(up + n, lanes)));
                }
            } else if (w == 8) {  /* 1..8 columns (a decode step of a few sequences): one masked load */
                _mm256_storeu_ps(row, _mm256_maskload_ps(src + n, first_lanes(end - n)));
                n = c + w;
            } else if (end > n) {
                memcpy(row, src + n, (end - n) * sizeof(float));
                n = end;
            }
            for (n = n > end ? n : end; n < c + w; n++)
                row[n - c] = 0.0f;
        }
    }
    if (mode != RMSNORM)
        return;
    /* each column's factor by the same 8-lane code (NP is a multiple of 8): one FMA chain over k */
    #pragma omp for schedule(static)
    for (long c8 = 0; c8 < NP; c8 += 8) {
        long w;
        const float *block = chunk_at(xs, K, NP, c8, &w) + c8 % 64;
        __m256 sum = _mm256_setzero_ps();
        for (long k = 0; k < K; k++) {
            __m256 v = _mm256_loadu_ps(block + k * w);
            sum = _mm256_fmadd_ps(v, v, sum);
        }
        __m256 mean = _mm256_add_ps(_mm256_div_ps(sum, _mm256_set1_ps((float)K)), _mm256_set1_ps(eps));
        _mm256_storeu_ps(inv + c8, _mm256_div_ps(_mm256_set1_ps(1.0f), _mm256_sqrt_ps(mean)));
    }
    #pragma omp for schedule(static)
    for (long k = 0; k < K; k++)
        for (long c = 0; c < NP; c += 64) {
            long w;
            float *row = chunk_at(xs, K, NP, c, &w) + k * w;
            for (long j = 0; j < w; j++)
                row[j] *= inv[c + j] * norm_w[k];
        }
}

#define FMA2(i, p) { __m256 b = _mm256_broadcast_ss(p); \
    c##i##0 = _mm256_fmadd_ps(b, x0, c##i##0); c##i##1 = _mm256_fmadd_ps(b, x1, c##i##1); }

/* rows o..o+rows, columns n..n+cols of the result, from acc (row r at acc + r * lda): out[o, n] at
   out + o * ldo + n, or out + n * ldo + o when transposed */
static inline void store(const float *acc, int lda, long o, int rows, long n, int cols, const float *bias,
                         float *out, long ldo, int accumulate, int transposed) {
    for (int r = 0; r < rows; r++) {
        float b = bias ? bias[o + r] : 0.0f;
        for (int j = 0; j < cols; j++) {
            float *dst = transposed ? out + (n + j) * ldo + o + r : out + (o + r) * ldo + n + j;
            *dst = accumulate ? *dst + acc[r * lda + j] + b : acc[r * lda + j] + b;
        }
    }
}

/* one panel of 6 weight rows times 16 columns of f(x) (x: their first row, stride ldx). With
   `prefetch`, the panel's first pass over a chunk of columns, the weights stream from memory: ask
   for them 4 KB ahead (all products of a batch-16 step 26.4 vs 33.2 ms on the 2-core EPYC; later
   passes find the panel in L1, and prefetching there too made 64 columns 12% slower). */
static inline __attribute__((always_inline)) void panel(const float *P, const float *x, long ldx, long K, long o,
        int rows, long n, int cols, const float *bias, float *out, long ldo, int accumulate, int transposed,
        const int prefetch) {
    __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00,
           c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
    for (long k = 0; k < K; k++) {
        if (prefetch)
            _mm_prefetch((const char *)(P + 1024), _MM_HINT_T0);
        __m256 x0 = _mm256_loadu_ps(x), x1 = _mm256_loadu_ps(x + 8);
        x += ldx;
        FMA2(0, P) FMA2(1, P + 1) FMA2(2, P + 2) FMA2(3, P + 3) FMA2(4, P + 4) FMA2(5, P + 5)
        P += 6;
    }
    float acc[6][16];
    _mm256_storeu_ps(acc[0], c00); _mm256_storeu_ps(acc[0] + 8, c01);
    _mm256_storeu_ps(acc[1], c10); _mm256_storeu_ps(acc[1] + 8, c11);
    _mm256_storeu_ps(acc[2], c20); _mm256_storeu_ps(acc[2] + 8, c21);
    _mm256_storeu_ps(acc[3], c30); _mm256_storeu_ps(acc[3] + 8, c31);
    _mm256_storeu_ps(acc[4], c40); _mm256_storeu_ps(acc[4] + 8, c41);
    _mm256_storeu_ps(acc[5], c50); _mm256_storeu_ps(acc[5] + 8, c51);
    store(acc[0], 16, o, rows, n, cols, bias, out, ldo, accumulate, transposed);
}

#define FMA1(i, p) c##i = _mm256_fmadd_ps(_mm256_broadcast_ss(p), x0, c##i);

/* two panels (12 weight rows, the second starting at P1) times 8 columns: for batches of 1..8
   sequences, half the work of padding them to 16 with the same 12 independent accumulators */
static inline void panel_pair8(const float *P0, const float *P1, const float *x, long ldx, long K, long o, int rows,
                               int cols, const float *bias, float *out, long ldo, int accumulate, int transposed) {
    __m256 c0 = _mm256_setzero_ps(), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0,
           c6 = c0, c7 = c0, c8 = c0, c9 = c0, c10 = c0, c11 = c0;
    for (long k = 0; k < K; k++) {
        /* the weights stream from memory: ask for them 2 KB ahead (all products of a batch-8 step
           28.8 vs 32.0 ms, batch 1 29.4 vs 30.7 on the 2-core EPYC) */
        _mm_prefetch((const char *)(P0 + 512), _MM_HINT_T0);
        _mm_prefetch((const char *)(P1 + 512), _MM_HINT_T0);
        __m256 x0 = _mm256_loadu_ps(x);
        x += ldx;
        FMA1(0, P0) FMA1(1, P0 + 1) FMA1(2, P0 + 2) FMA1(3, P0 + 3) FMA1(4, P0 + 4) FMA1(5, P0 + 5)
        FMA1(6, P1) FMA1(7, P1 + 1) FMA1(8, P1 + 2) FMA1(9, P1 + 3) FMA1(10, P1 + 4) FMA1(11, P1 + 5)
        P0 += 6;
        P1 += 6;
    }
    float acc[12][8];
    _mm256_storeu_ps(acc[0], c0); _mm256_storeu_ps(acc[1], c1); _mm256_storeu_ps(acc[2], c2);
    _mm256_storeu_ps(acc[3], c3); _mm256_storeu_ps(acc[4], c4); _mm256_storeu_ps(acc[5], c5);
    _mm256_storeu_ps(acc[6], c6); _mm256_storeu_ps(acc[7], c7); _mm256_storeu_ps(acc[8], c8);
    _mm256_storeu_ps(acc[9], c9); _mm256_storeu_ps(acc[10], c10); _mm256_storeu_ps(acc[11], c11);
    store(acc[0], 8, o, rows, 0, cols, bias, out, ldo, accumulate, transposed);
}

#ifndef R1_NO_BF16
#include "gemm_bf16.c"
#else
static inline long padded_columns_bf16(long N) { return padded_columns(N); }
#endif

/* floats of scratch r1_linear needs for K input features and N columns: f(x) and the norm's
   factors, then room for r1_linear_bf16's bf16 pairs of f(x) or r1_linear_q8's transposed copy */
long r1_linear_work(long K, long N) {
    return (2 * K + 1) * padded_columns_bf16(N);
}

/* out (+)= W @ f(x) (+ bias): W packed [O, K]; x [K, N] (2K rows for SWIGLU); xs scratch of
   (K + 1) * NP floats, NP = N rounded up to 16 (to 8 when N <= 8); out [O, N] (ldo = N), or [N, O]
   when transposed (ldo = O). Columns go in chunks of 64 (a [K, 64] block of f(x), in L2) past all
   the panels. */
void r1_linear(const float *P, long O, long K, const float *x, long N, int mode, const float *norm_w, float eps,
               float *xs, const float *bias, float *out, int accumulate, int transposed) {
    long NP = padded_columns(N), panels = (O + 5) / 6, ldo = transposed ? O : N;
    float *inv = xs + K * NP;
    #pragma omp parallel
    {
        prologue(x, K, N, NP, mode, norm_w, eps, xs, inv);
        if (NP == 8) {
            #pragma omp for schedule(static)
            for (long t = 0; t < panels; t += 2) {
                const float *P0 = P + t * K * 6, *P1 = t + 1 < panels ? P0 + K * 6 : P0;
                long rows = O - t * 6 < 12 ? O - t * 6 : 12;
                panel_pair8(P0, P1, xs, 8, K, t * 6, (int)rows, (int)N, bias, out, ldo, accumulate, transposed);
            }
        }
        for (long c = 0; NP > 8 && c < NP; c += 64) {
            long w;
            const float *block = chunk_at(xs, K, NP, c, &w);
            #pragma omp for schedule(static)
            for (long t = 0; t < panels; t++) {
                int rows = O - t * 6 < 6 ? (int)(O - t * 6) : 6;
                for (long n = c; n < c + w; n += 16) {
                    int cols = N - n < 16 ? (int)(N - n) : 16;
                    /* two calls, so that each inlined copy has its prefetch flag as a constant */
                    if (cols > 0 && n == c)
                        panel(P + t * K * 6, block, w, K, t * 6, rows, n, cols, bias, out, ldo, accumulate, transposed, 1);
                    else if (cols > 0)
                        panel(P + t * K * 6, block + (n - c), w, K, t * 6, rows, n, cols, bias, out, ldo, accumulate, transposed, 0);
                }
            }
        }
    }
}

/* exp(x - top) for the 8 scores or logits at x, exactly 0 where one is -inf (masked) */
static inline __m256 weight8(const float *x, __m256 top) {
    __m256 v = _mm256_loadu_ps(x);
    return _mm256_and_ps(exp8(_mm256_sub_ps(v, top)), _mm256_cmp_ps(v, _mm256_set1_ps(-INFINITY), _CMP_GT_OQ));
}

static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* rotate-half RoPE of one head vector src (stride `stride` between its D elements) into dst */
static inline void rope(const float *src, long stride, const float *cos, const float *sin, long D, float *dst) {
    long half = D / 2;
    for (long d = 0; d < half; d++) {
        float a = src[d * stride], b = src[(d + half) * stride];
        dst[d] = a * cos[d] - b * sin[d];
        dst[d + half] = b * cos[d + half] + a * sin[d + half];
    }
}

/* sc[j] = q . K[j] * scale for j in j0..j1 */
static inline __attribute__((always_inline)) void dot_keys(const float *q, const float *K, long j0, long j1, float scale,
                                                           float *sc, const long D) {
    long j = j0;
    for (; j + 4 <= j1; j += 4) {  /* four keys at a time: four independent FMA chains */
        const float *k0 = K + j * D;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (long d = 0; d < D; d += 8) {
            __m256 qd = _mm256_loadu_ps(q + d);
            a0 = _mm256_fmadd_ps(qd, _mm256_loadu_ps(k0 + d), a0);
            a1 = _mm256_fmadd_ps(qd, _mm256_loadu_ps(k0 + D + d), a1);
            a2 = _mm256_fmadd_ps(qd, _mm256_loadu_ps(k0 + 2 * D + d), a2);
            a3 = _mm256_fmadd_ps(qd, _mm256_loadu_ps(k0 + 3 * D + d), a3);
        }
        sc[j] = hsum8(a0) * scale; sc[j + 1] = hsum8(a1) * scale;
        sc[j + 2] = hsum8(a2) * scale; sc[j + 3] = hsum8(a3) * scale;
    }
    for (; j < j1; j++) {
        __m256 a0 = _mm256_setzero_ps();
        for (long d = 0; d < D; d += 8)
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + d), _mm256_loadu_ps(K + j * D + d), a0);
        sc[j] = hsum8(a0) * scale;
    }
}

/* scores, softmax and weighted values of one query head q [D] over keys K and values V [S, D]
   (rows where ok[j] == 0 masked, except the last, the query's own: a pad query of a left-padded
   row then attends to itself alone and stays finite); o [D]. Keys and values before `shared` are
   read from K0, V0 instead (a prefix every sequence has: one copy stays in cache for all of them).
   Inlined with D a constant (64, 128) so that the compiler keeps a head's accumulators in
   registers. */
static inline __attribute__((always_inline)) void attend_head(const float *q, const float *K, const float *V,
        const float *K0, const float *V0, long shared, long S, const unsigned char *ok, float scale, float *sc,
        float *o, const long D) {
    long j;
    dot_keys(q, K0, 0, shared, scale, sc, D);
    dot_keys(q, K, shared, S, scale, sc, D);
    float top = -INFINITY;
    for (j = 0; j < S; j++) {
        if (ok && !ok[j] && j < S - 1)
            sc[j] = -INFINITY;
        top = sc[j] > top ? sc[j] : top;
    }
    /* A key's weight and its place in the sums depend on the real keys before it, never on its
       column: every weight is computed by exp8 (the last few from a copy padded with masked
       scores), the total adds them in order, and a masked key adds an exact 0. So a row's
       output does not depend on where padding put its keys: a sequence decodes to the same bits
       alone and in any batch. */
    for (j = 0; j + 8 <= S; j += 8)
        _mm256_storeu_ps(sc + j, weight8(sc + j, _mm256_set1_ps(top)));
    if (j < S) {
        float tail[8] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY};
        memcpy(tail, sc + j, (S - j) * sizeof(float));
        _mm256_storeu_ps(tail, weight8(tail, _mm256_set1_ps(top)));
        memcpy(sc + j, tail, (S - j) * sizeof(float));
    }
    float total = 0.0f;
    for (j = 0; j < S; j++)
        total += sc[j];
    for (long d0 = 0; d0 < D; d0 += 64) {  /* 64 outputs (8 registers) at a time */
        long width = D - d0 < 64 ? D - d0 : 64;
        __m256 acc[8];
        for (int r = 0; r < 8; r++)
            acc[r] = _mm256_setzero_ps();
        for (j = 0; j < S; j++) {
            __m256 p = _mm256_set1_ps(sc[j]);
            const float *v = (j < shared ? V0 : V) + j * D + d0;
            for (int r = 0; r < width / 8; r++)
                acc[r] = _mm256_fmadd_ps(p, _mm256_loadu_ps(v + 8 * r), acc[r]);
        }
        __m256 norm = _mm256_set1_ps(1.0f / total);
        for (int r = 0; r < width / 8; r++)
            _mm256_storeu_ps(o + d0 + 8 * r, _mm256_mul_ps(acc[r], norm));
    }
}

/* Grouped-query attention of T new tokens per sequence (T = 1: a decode step; more: prefill),
   RoPE and the cache write included. qkv [(H + 2 KV) * D, B * T] feature-major (the output of the
   qkv projection; column b * T + t is token t of sequence b); cos, sin [B * T, D]; cache
   [2, B, KV, L, D] for this layer: the new keys and values go to columns pos..pos + T, and token t
   attends causally to columns 0..pos + t, of which 0..shared are the same in every sequence (read
   from the first); valid [B, valid_stride] (nonzero = a real token) or NULL for all; out [H * D, B * T]
   feature-major. D % 8 == 0, D <= 256. Threads split the sequences' kv groups to write the cache,
   then the (sequence, head, token) queries. */
void r1_attend(const float *qkv, long B, long T, long H, long KV, long D, const float *cos, const float *sin,
               float *cache, long L, long pos, long shared, const unsigned char *valid, long valid_stride,
               float scale, float *out) {
    long G = H / KV, N = B * T;
    #pragma omp parallel
    {
        #pragma omp for schedule(static)
        for (long bg = 0; bg < B * KV; bg++) {
            long b = bg / KV, g = bg % KV;
            float *K = cache + (b * KV + g) * L * D, *V = cache + ((B + b) * KV + g) * L * D;
            for (long t = 0, n = b * T; t < T; t++, n++) {
                rope(qkv + ((H + g) * D) * N + n, N, cos + n * D, sin + n * D, D, K + (pos + t) * D);
                for (long d = 0; d < D; d++)
                    V[(pos + t) * D + d] = qkv[((H + KV + g) * D + d) * N + n];
            }
        }
        float *sc = malloc((pos + T) * sizeof(float));  /* this thread's scores */
        #pragma omp for schedule(static)
        for (long item = 0; item < B * H * T; item++) {
            long t = item % T, h = item / T % H, b = item / T / H, g = h / G, n = b * T + t, S = pos + t + 1;
            const float *K = cache + (b * KV + g) * L * D, *V = cache + ((B + b) * KV + g) * L * D;
            const float *K0 = cache + g * L * D, *V0 = cache + (B * KV + g) * L * D;
            const unsigned char *ok = valid ? valid + b * valid_stride : NULL;
            long sh = shared < S ? shared : S;
            float q[256], o[256];
            rope(qkv + (h * D) * N + n, N, cos + n * D, sin + n * D, D, q);
            if (D == 64)
                attend_head(q, K, V, K0, V0, sh, S, ok, scale, sc, o, 64);
            else if (D == 128)
                attend_head(q, K, V, K0, V0, sh, S, ok, scale, sc, o, 128);
            else
                attend_head(q, K, V, K0, V0, sh, S, ok, scale, sc, o, D);
            for (long d = 0; d < D; d++)
                out[(h * D + d) * N + n] = o[d];
        }
        free(sc);
    }
}

#include "gemm_int8.c"

enum { FP32 = 0, BF16 = 1, Q8 = 2 };  /* how a decode step's weights are packed */

/* r1_linear, r1_linear_bf16 on bf16 pairs or r1_linear_q8 on int8 blocks */
static void linear_any(int kind, const void *P, long O, long K, const float *x, long N, int mode, const float *norm_w,
                       float eps, float *xs, const float *bias, float *out, int accumulate, int transposed) {
#ifndef R1_NO_BF16
    if (kind == BF16) {
        r1_linear_bf16((const uint32_t *)P, O, K, x, N, mode, norm_w, eps, xs, bias, out, accumulate, transposed);
        return;
    }
#endif
    if (kind == Q8)
        r1_linear_q8((const int8_t *)P, O, K, x, N, mode, norm_w, eps, xs, bias, out, accumulate, transposed);
    else
        r1_linear((const float *)P, O, K, x, N, mode, norm_w, eps, xs, bias, out, accumulate, transposed);
}

/* floats of scratch r1_decode_step needs for N sequences */
long r1_decode_work(long C, long H, long KV, long D, long I, long N) {
    long K = C > H * D ? C : H * D;  /* the widest input of a projection */
    K = K > I ? K : I;
    return ((H + 2 * KV) * D + H * D + 2 * I) * N + r1_linear_work(K, N);
}

/* One decode step of a Llama-family model, one new token per sequence, in one call: per layer
   x += o(attention(qkv(rmsnorm(x)))), x += down(swiglu(gate_up(rmsnorm(x)))), then the vocabulary
   head of rmsnorm(x). The same sequence of r1_linear and r1_attend calls the decoder makes
   from Python for prefill; here a step pays for one call from Python instead of ~150 (~15-40 us
   each).
   weights: per layer the packed qkv, o, gate|up and down projections, then the head (4 n + 1);
   vectors: per layer ln1, ln2 and the biases of qkv, o, gate|up, down (NULL: none), then the final
   norm (6 n + 1); scale: the attention's, 1/sqrt(D); x [C, N] the residual stream (the embedded
   tokens; updated); cos, sin [N, D]; cache [n, 2, N, KV, L, D]; valid as r1_attend; work
   r1_decode_work floats; logits [N, V]; kind: how the weights are packed (FP32: r1_pack6, BF16:
   r1_pack6_bf16, Q8: r1_pack_q8). */
void r1_decode_step(long n_layers, long C, long H, long KV, long D, long I, long V,
                    const void *const *weights, const float *const *vectors, float eps, float scale, float *x, long N,
                    const float *cos, const float *sin, float *cache, long L, long pos, long shared,
                    const unsigned char *valid, long valid_stride, float *work, float *logits, int kind) {
    float *qkv = work, *att = qkv + (H + 2 * KV) * D * N, *gu = att + H * D * N, *xs = gu + 2 * I * N;
    for (long i = 0; i < n_layers; i++) {
        const void *const *w = weights + 4 * i;
        const float *const *v = vectors + 6 * i;
        linear_any(kind, w[0], (H + 2 * KV) * D, C, x, N, RMSNORM, v[0], eps, xs, v[2], qkv, 0, 0);
        r1_attend(qkv, N, 1, H, KV, D, cos, sin, cache + i * 2 * N * KV * L * D, L, pos, shared, valid, valid_stride,
                  scale, att);
        linear_any(kind, w[1], C, H * D, att, N, PLAIN, NULL, 0.0f, xs, v[3], x, 1, 0);
        linear_any(kind, w[2], 2 * I, C, x, N, RMSNORM, v[1], eps, xs, v[4], gu, 0, 0);
        linear_any(kind, w[3], C, I, gu, N, SWIGLU, NULL, 0.0f, xs, v[5], x, 1, 0);
    }
    linear_any(kind, weights[4 * n_layers], V, C, x, N, RMSNORM, vectors[6 * n_layers], eps, xs, NULL, logits, 0, 1);
}

/* w[0..n) = exp(x - top) for n <= 256 logits (0 at -inf); returns their sum */
static float block_weights(const float *x, long n, float top, float *w) {
    float buf[8] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY};
    __m256 t8 = _mm256_set1_ps(top), s8 = _mm256_setzero_ps();
    long j = 0;
    for (; j + 8 <= n; j += 8) {
        __m256 e = weight8(x + j, t8);
        _mm256_storeu_ps(w + j, e);
        s8 = _mm256_add_ps(s8, e);
    }
    if (j < n) {  /* the tail, padded with -inf */
        float tail[8];
        memcpy(buf, x + j, (n - j) * sizeof(float));
        __m256 e = weight8(buf, t8);
        _mm256_storeu_ps(tail, e);
        memcpy(w + j, tail, (n - j) * sizeof(float));
        s8 = _mm256_add_ps(s8, e);
    }
    return hsum8(s8);
}

/* One draw per row from softmax(logits) by inverting its cumulative distribution: row i takes the
   first token whose cumulative weight exceeds u[i] (in [0, 1)) times the row's total. The weights
   exp(x - max) are summed in blocks of 256, and the search walks the block sums, then one block;
   tokens at -inf weigh exactly 0 and are never drawn. logits [N, V], out [N] token ids. Replaces
   exp, cumsum and searchsorted over the whole row (PyTorch: 1.1-1.8 ms for 16 x 49k logits). */
void r1_sample(const float *logits, long N, long V, const float *u, long *out) {
    long nb = (V + 255) / 256;
    #pragma omp parallel
    {
        float *blocks = malloc(nb * sizeof(float)), w[256];
        #pragma omp for schedule(static)
        for (long i = 0; i < N; i++) {
            const float *x = logits + i * V;
            __m256 m8 = _mm256_set1_ps(-INFINITY);
            long j = 0;
            for (; j + 8 <= V; j += 8)
                m8 = _mm256_max_ps(m8, _mm256_loadu_ps(x + j));
            float m[8], top = -INFINITY;
            _mm256_storeu_ps(m, m8);
            for (int r = 0; r < 8; r++)
                top = m[r] > top ? m[r] : top;
            for (; j < V; j++)
                top = x[j] > top ? x[j] : top;
            float total = 0.0f;
            for (long b = 0; b < nb; b++) {
                long n = V - b * 256 < 256 ? V - b * 256 : 256;
                blocks[b] = block_weights(x + b * 256, n, top, w);
                total += blocks[b];
            }
            float target = u[i] * total, acc = 0.0f;
            long pick = -1;
            for (long b = 0; b < nb && pick < 0; b++) {
                if (acc + blocks[b] <= target) {
                    acc += blocks[b];
                    continue;
                }
                long n = V - b * 256 < 256 ? V - b * 256 : 256;
                block_weights(x + b * 256, n, top, w);
                for (long k = 0; k < n; k++) {
                    if (w[k] > 0.0f && acc + w[k] > target) {
                        pick = b * 256 + k;
                        break;
                    }
                    acc += w[k];
                }
            }
            for (j = V - 1; pick < 0 && j >= 0; j--)  /* rounding left the target past the end */
                if (x[j] > -INFINITY)
                    pick = j;
            out[i] = pick < 0 ? 0 : pick;
        }
        free(blocks);
    }
}
