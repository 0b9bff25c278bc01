/* The projections of gemm.c on int8 weights, for decoding where memory bandwidth is the limit
 * (included by gemm.c; AVX2 and FMA, as the rest).
 *
 * Same contract as r1_linear: out[O, N] (+)= W[O, K] @ f(x) (+ bias), activations feature-major,
 * f(x) in fp32 by gemm.c's prologue (chunks of 64 columns). W is quantized once by r1_pack_q8 as
 * llama.cpp's Q8_0 does: each row in blocks of 32 weights, a block stored as 32 int8 values q and
 * one fp32 scale d = max |w| / 127, w ~ q * d. A weight takes 1.125 bytes instead of 4, and a
 * decode step of a few sequences reads every weight once, so the bytes are the time. The
 * activations and the sums stay fp32 (llama.cpp's Q8_0 products round the activations to int8 too).
 *
 * Layout: panels of 8 rows, k-major: Q [OP/8, K, 8] int8 (OP = O rounded up to 8, zero rows at
 * the end), then the scales S [OP/8, K/32, 8] fp32. At each k the inner loop turns the 8 rows'
 * values into 8 fp32 weights (q * d). With up to 6 columns (a decode step of a few sequences) 4
 * panels go at once, dequantized in registers for each pair of columns, a lane per row, each column
 * of f(x) broadcast.
 * With more, three panels at a time are dequantized once per 64 columns into a buffer, and
 * multiplied into 16 columns 6 rows at a time as gemm.c's fp32 panels are (a lane per column).
 * Either way every (row, column) sum is one FMA chain over k in order, of the same weights, so a
 * column's value does not depend on its place in the batch. K must be a multiple of 32.
 */
#include <stdint.h>

enum { Q8_BLOCK = 32, Q8_PANEL = 8, Q8_PANELS = 4 };
enum { Q8_NARROW = 6 };  /* up to this many columns, 2 at a time straight from the int8 values */

/* the rows a Q8 weight of O rows stores: O rounded up to a whole panel */
static inline long q8_rows(long O) {
    return (O + Q8_PANEL - 1) / Q8_PANEL * Q8_PANEL;
}

/* the rows of parts[0], parts[1], ... (stacked: O rows of K) -> Q [OP/8, K, 8] int8, then S
   [OP/8, K/32, 8] fp32 at Q + OP * K; q = round(w / d), d = max |w| / 127 over the block (0 for an
   all-zero block) */
void r1_pack_q8(const float *const *parts, const long *part_rows, long nparts, int8_t *Q, long O, long K) {
    long OP = q8_rows(O), nb = K / Q8_BLOCK;
    float *S = (float *)(Q + OP * K);
    #pragma omp parallel for schedule(static)
    for (long o = 0; o < OP; o++) {
        long r = o, i = 0, t = o / Q8_PANEL, lane = o % Q8_PANEL;
        while (i < nparts && r >= part_rows[i])
            r -= part_rows[i++];
        const float *src = i < nparts ? parts[i] + r * K : NULL;
        int8_t *q = Q + t * K * Q8_PANEL + lane;
        for (long b = 0; b < nb; b++) {
            float amax = 0.0f;
            for (long j = 0; src && j < Q8_BLOCK; j++)
                amax = fmaxf(amax, fabsf(src[b * Q8_BLOCK + j]));
            float d = amax / 127.0f, id = d > 0.0f ? 1.0f / d : 0.0f;
            S[(t * nb + b) * Q8_PANEL + lane] = d;
            for (long j = 0; j < Q8_BLOCK; j++) {
                float v = src ? roundf(src[b * Q8_BLOCK + j] * id) : 0.0f;
                q[(b * Q8_BLOCK + j) * Q8_PANEL] = (int8_t)(v > 127.0f ? 127.0f : v < -127.0f ? -127.0f : v);
            }
        }
    }
}

/* the 8 rows' weights at k of a panel (q: its values at k, d: its scales for k's block) */
static inline __m256 q8_weights(const int8_t *q, __m256 d) {
    return _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)q))), d);
}

/* acc (8 rows' lanes, per column) -> out rows o..o+rows, columns n..n+cols (+ bias) */
static inline void q8_store(const __m256 *acc, long o, int rows, long n, int cols, const float *bias, float *out,
                            long ldo, int accumulate, int transposed) {
    for (int j = 0; j < cols; j++) {
        float v[8];
        _mm256_storeu_ps(v, acc[j]);
        for (int r = 0; r < rows; r++) {
            float *dst = transposed ? out + (n + j) * ldo + o + r : out + (o + r) * ldo + n + j;
            float s = v[r] + (bias ? bias[o + r] : 0.0f);
            *dst = accumulate ? *dst + s : s;
        }
    }
}

/* panels t..t+P (P = 1..4, dequantized in registers) times columns n, n+1 (C = 1, 2) of f(x) (x:
   its block of width w, columns from j). The accumulators are named variables, not an array: GCC
   stored an array (its address is passed on) to memory at every k. */
static inline __attribute__((always_inline)) void q8_narrow(const int8_t *Q, const float *S, long K, long O, long t,
        const float *x, long w, long j, long n, const float *bias, float *out, long ldo, int accumulate, int transposed,
        const int P, const int C) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
    long nb = K / Q8_BLOCK;
    const int8_t *q0 = Q + t * K * Q8_PANEL, *q1 = q0 + K * Q8_PANEL, *q2 = q1 + K * Q8_PANEL, *q3 = q2 + K * Q8_PANEL;
    const float *s0 = S + t * nb * Q8_PANEL, *s1 = s0 + nb * Q8_PANEL, *s2 = s1 + nb * Q8_PANEL, *s3 = s2 + nb * Q8_PANEL;
    for (long b = 0; b < nb; b++) {
        __m256 d0 = _mm256_loadu_ps(s0 + b * Q8_PANEL), d1 = d0, d2 = d0, d3 = d0;
        _mm_prefetch((const char *)(q0 + (b + 4) * Q8_BLOCK * Q8_PANEL), _MM_HINT_T0);
        if (P > 1) d1 = _mm256_loadu_ps(s1 + b * Q8_PANEL), _mm_prefetch((const char *)(q1 + (b + 4) * Q8_BLOCK * Q8_PANEL), _MM_HINT_T0);
        if (P > 2) d2 = _mm256_loadu_ps(s2 + b * Q8_PANEL), _mm_prefetch((const char *)(q2 + (b + 4) * Q8_BLOCK * Q8_PANEL), _MM_HINT_T0);
        if (P > 3) d3 = _mm256_loadu_ps(s3 + b * Q8_PANEL), _mm_prefetch((const char *)(q3 + (b + 4) * Q8_BLOCK * Q8_PANEL), _MM_HINT_T0);
        for (long k = b * Q8_BLOCK; k < (b + 1) * Q8_BLOCK; k++) {
            __m256 x0 = _mm256_broadcast_ss(x + k * w + j), x1 = C == 2 ? _mm256_broadcast_ss(x + k * w + j + 1) : x0;
            __m256 w0 = q8_weights(q0 + k * Q8_PANEL, d0);
            a0 = _mm256_fmadd_ps(w0, x0, a0);
            if (C == 2) b0 = _mm256_fmadd_ps(w0, x1, b0);
            if (P > 1) {
                __m256 w1 = q8_weights(q1 + k * Q8_PANEL, d1);
                a1 = _mm256_fmadd_ps(w1, x0, a1);
                if (C == 2) b1 = _mm256_fmadd_ps(w1, x1, b1);
            }
            if (P > 2) {
                __m256 w2 = q8_weights(q2 + k * Q8_PANEL, d2);
                a2 = _mm256_fmadd_ps(w2, x0, a2);
                if (C == 2) b2 = _mm256_fmadd_ps(w2, x1, b2);
            }
            if (P > 3) {
                __m256 w3 = q8_weights(q3 + k * Q8_PANEL, d3);
                a3 = _mm256_fmadd_ps(w3, x0, a3);
                if (C == 2) b3 = _mm256_fmadd_ps(w3, x1, b3);
            }
        }
    }
    __m256 acc[Q8_PANELS][2] = {{a0, b0}, {a1, b1}, {a2, b2}, {a3, b3}};
    for (int p = 0; p < P; p++) {
        long o = (t + p) * Q8_PANEL;
        q8_store(acc[p], o, O - o < Q8_PANEL ? (int)(O - o) : Q8_PANEL, n, C, bias, out, ldo, accumulate, transposed);
    }
}

/* 6 rows of dequantized weights times W (8 or 16) columns of f(x) from x (row stride ldx), as
   gemm.c's panel(): a lane per column, each row's weight broadcast. Row i's weights are at
   wf[i][k * 8] (8 floats apart: rows of the [K, 8] panels q8_wide fills). The FMAs are those of
   q8_narrow with the roles of the lanes swapped, so the sums are the same bits. */
static inline __attribute__((always_inline)) void q8_six(const float *const wf[6], long K, const float *x, long ldx,
        long o, int rows, long n, int cols, const float *bias, float *out, long ldo, int accumulate, int transposed,
        const int W) {
    __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00,
           c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
    const float *w0 = wf[0], *w1 = wf[1], *w2 = wf[2], *w3 = wf[3], *w4 = wf[4], *w5 = wf[5];
    for (long k = 0, at = 0; k < K; k++, at += Q8_PANEL, x += ldx) {
        __m256 x0 = _mm256_loadu_ps(x), x1 = W == 16 ? _mm256_loadu_ps(x + 8) : x0, b;
#define Q8ROW(i) b = _mm256_broadcast_ss(w##i + at); c##i##0 = _mm256_fmadd_ps(b, x0, c##i##0); \
                 if (W == 16) c##i##1 = _mm256_fmadd_ps(b, x1, c##i##1);
        Q8ROW(0) Q8ROW(1) Q8ROW(2) Q8ROW(3) Q8ROW(4) Q8ROW(5)
#undef Q8ROW
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

/* three panels from panel t (24 rows), dequantized once into wf [3, K, 8], times columns c..end of
   f(x) (its block of width w: 8, or a multiple of 16), 6 rows at a time */
static void q8_wide(const int8_t *Q, const float *S, long K, long O, long panels, long t, float *wf, const float *block,
                    long w, long c, long end, const float *bias, float *out, long ldo, int accumulate, int transposed) {
    long nb = K / Q8_BLOCK;
    for (long p = 0; p < 3 && t + p < panels; p++) {
        const int8_t *q = Q + (t + p) * K * Q8_PANEL;
        const float *s = S + (t + p) * nb * Q8_PANEL;
        float *dst = wf + p * K * Q8_PANEL;
        for (long b = 0; b < nb; b++) {
            __m256 d = _mm256_loadu_ps(s + b * Q8_PANEL);
            for (long k = b * Q8_BLOCK; k < (b + 1) * Q8_BLOCK; k++)
                _mm256_store_ps(dst + k * Q8_PANEL, q8_weights(q + k * Q8_PANEL, d));
        }
    }
    for (long r0 = 0; r0 < 3 * Q8_PANEL; r0 += 6) {
        long o = t * Q8_PANEL + r0;
        if (o >= O)
            break;
        int rows = O - o < 6 ? (int)(O - o) : 6;
        const float *rowp[6];
        for (int i = 0; i < 6; i++)
            rowp[i] = wf + (r0 + i) / Q8_PANEL * K * Q8_PANEL + (r0 + i) % Q8_PANEL;
        for (long n = c; n < end; n += w == 8 ? 8 : 16) {  /* f(x) is padded with zero columns to its width */
            int cols = end - n < (w == 8 ? 8 : 16) ? (int)(end - n) : (w == 8 ? 8 : 16);
            if (w == 8)
                q8_six(rowp, K, block + (n - c), w, o, rows, n, cols, bias, out, ldo, accumulate, transposed, 8);
            else
                q8_six(rowp, K, block + (n - c), w, o, rows, n, cols, bias, out, ldo, accumulate, transposed, 16);
        }
    }
}

/* out (+)= W @ f(x) (+ bias) for W packed by r1_pack_q8; arguments as r1_linear's */
void r1_linear_q8(const int8_t *Q, long O, long K, const float *x, long N, int mode, const float *norm_w, float eps,
                  float *xs, const float *bias, float *out, int accumulate, int transposed) {
    long NP = padded_columns(N), panels = q8_rows(O) / Q8_PANEL, nb = K / Q8_BLOCK, ldo = transposed ? O : N;
    const float *S = (const float *)(Q + q8_rows(O) * K);
    float *inv = xs + K * NP;
    #pragma omp parallel
    {
        prologue(x, K, N, NP, mode, norm_w, eps, xs, inv);
        if (N <= Q8_NARROW) {
            long w;
            const float *block = chunk_at(xs, K, NP, 0, &w);
            #pragma omp for schedule(static)
            for (long t = 0; t < panels; t += Q8_PANELS)
                for (long n = 0; n < N; n += 2)  /* the panels' weights are in cache after the first pair */
                    for (long u = t; u < t + Q8_PANELS && u < panels; u += panels - u >= Q8_PANELS ? Q8_PANELS : 1) {
                        int four = u == t && panels - t >= Q8_PANELS;
                        if (four && N - n >= 2)
                            q8_narrow(Q, S, K, O, u, block, w, n, n, bias, out, ldo, accumulate, transposed, Q8_PANELS, 2);
                        else if (four)
                            q8_narrow(Q, S, K, O, u, block, w, n, n, bias, out, ldo, accumulate, transposed, Q8_PANELS, 1);
                        else if (N - n >= 2)
                            q8_narrow(Q, S, K, O, u, block, w, n, n, bias, out, ldo, accumulate, transposed, 1, 2);
                        else
                            q8_narrow(Q, S, K, O, u, block, w, n, n, bias, out, ldo, accumulate, transposed, 1, 1);
                    }
        } else {
            float *wf = aligned_alloc(32, 3 * K * Q8_PANEL * sizeof(float));
            for (long c = 0; c < N; c += 64) {
                long w;
                const float *block = chunk_at(xs, K, NP, c, &w);
                long end = c + 64 < N ? c + 64 : N;
                #pragma omp for schedule(static)
                for (long t = 0; t < panels; t += 3)
                    q8_wide(Q, S, K, O, panels, t, wf, block, w, c, end, bias, out, ldo, accumulate, transposed);
            }
            free(wf);
        }
    }
}
