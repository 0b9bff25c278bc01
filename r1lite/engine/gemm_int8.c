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
 * the end), then the scales S [OP/8, K/32, 8] fp32. Every (row, column) result is computed alike:
 * per block of 32, a partial sum t = sum of q * x over the block's k, one FMA chain in order from
 * 0, then acc = fma(t, d, acc) block after block. So a column's value does not depend on its place
 * in the batch, and the scale costs one FMA per 32 weights instead of a product per weight (a
 * decode step of one sequence: 15.4 -> 9.2 ms with the prologue's fast path, 2-core AVX2 EPYC).
 * - Up to 6 columns (a decode step of a few sequences): straight from the int8 values, a lane per
 *   row, each column of f(x) broadcast; 8 panels at once for one column, 4 for a pair (that many
 *   independent FMA chains), each thread a contiguous share of the panels.
 * - More: three panels at a time turned into floats once per 64 columns, then 6 rows times 16
 *   columns as gemm.c's fp32 panels are (a lane per column, each row's value broadcast).
 * K must be a multiple of 32.
 */
#include <omp.h>
#include <stdint.h>

enum { Q8_BLOCK = 32, Q8_PANEL = 8, Q8_PANELS = 4 };  /* Q8_PANELS: at once for a pair of columns */
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

/* the 8 rows' int8 values at k of a panel, as floats (exact) */
static inline __m256 q8_values(const int8_t *q) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)q)));
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

/* panels t..t+P times columns n, n+1 (C = 1, 2; P * C <= 8) of f(x) (x: its block of width w,
   columns from j), straight from the int8 values: a lane per row, each column broadcast. Per
   block of 32, a column's partial sum t = sum q * x starts at 0 and is one FMA chain over the
   block's k in order; then acc = fma(t, d, acc). The partial sums are named variables (GCC kept an
   array of them in memory, a store per FMA); the accumulators, touched once per block, are not. */
static inline __attribute__((always_inline)) void q8_narrow(const int8_t *Q, const float *S, long K, long O, long t,
        const float *x, long w, long j, long n, const float *bias, float *out, long ldo, int accumulate, int transposed,
        const int P, const int C) {
    __m256 acc[Q8_PANELS * 2];
    for (int i = 0; i < P * C; i++)
        acc[i] = _mm256_setzero_ps();
    long nb = K / Q8_BLOCK, stride = K * Q8_PANEL;
    const int8_t *q = Q + t * stride;
    const float *s = S + t * nb * Q8_PANEL;
    for (long b = 0; b < nb; b++) {
        __m256 t0 = _mm256_setzero_ps(), t1 = t0, t2 = t0, t3 = t0, t4 = t0, t5 = t0, t6 = t0, t7 = t0;
        for (int p = 0; p < P; p++)
            _mm_prefetch((const char *)(q + p * stride + (b + 4) * Q8_BLOCK * Q8_PANEL), _MM_HINT_T0);
        for (long k = b * Q8_BLOCK; k < (b + 1) * Q8_BLOCK; k++) {
            const int8_t *qk = q + k * Q8_PANEL;
            __m256 x0 = _mm256_broadcast_ss(x + k * w + j), x1 = C == 2 ? _mm256_broadcast_ss(x + k * w + j + 1) : x0;
            if (C == 1) {  /* t_p: panel p */
#define Q8T(i) if (P > i) t##i = _mm256_fmadd_ps(q8_values(qk + i * stride), x0, t##i);
                Q8T(0) Q8T(1) Q8T(2) Q8T(3) Q8T(4) Q8T(5) Q8T(6) Q8T(7)
#undef Q8T
            } else {  /* t_2p, t_2p+1: panel p, columns n, n + 1 */
#define Q8T(i, a, b) if (P > i) { __m256 v = q8_values(qk + i * stride); \
                                  a = _mm256_fmadd_ps(v, x0, a); b = _mm256_fmadd_ps(v, x1, b); }
                Q8T(0, t0, t1) Q8T(1, t2, t3) Q8T(2, t4, t5) Q8T(3, t6, t7)
#undef Q8T
            }
        }
        __m256 parts[8] = {t0, t1, t2, t3, t4, t5, t6, t7};
        for (int i = 0; i < P * C; i++)
            acc[i] = _mm256_fmadd_ps(parts[i], _mm256_loadu_ps(s + ((i / C) * nb + b) * Q8_PANEL), acc[i]);
    }
    for (int p = 0; p < P; p++) {
        long o = (t + p) * Q8_PANEL;
        q8_store(acc + p * C, o, O - o < Q8_PANEL ? (int)(O - o) : Q8_PANEL, n, C, bias, out, ldo, accumulate, transposed);
    }
}

/* 6 rows of int8 values (as floats, in wf) times W (8 or 16) columns of f(x) from x (row stride
   ldx), as gemm.c's panel(): a lane per column, each row's value broadcast. Row i's values are at
   wf[i][k * 8] (8 floats apart: rows of the [K, 8] panels q8_wide fills), its scales at
   sc[i][b * 8]. The sums are q8_narrow's, (row, column) by (row, column), so the same bits. */
static inline __attribute__((always_inline)) void q8_six(const float *const wf[6], const float *const sc[6], long K,
        const float *x, long ldx, long o, int rows, long n, int cols, const float *bias, float *out, long ldo,
        int accumulate, int transposed, const int W) {
    __m256 acc[6][2];
    for (int i = 0; i < 6; i++)
        acc[i][0] = acc[i][1] = _mm256_setzero_ps();
    const float *w0 = wf[0], *w1 = wf[1], *w2 = wf[2], *w3 = wf[3], *w4 = wf[4], *w5 = wf[5];
    for (long b = 0, at = 0; b < K / Q8_BLOCK; b++) {
        __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00,
               c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
        for (int k = 0; k < Q8_BLOCK; k++, at += Q8_PANEL, x += ldx) {
            __m256 x0 = _mm256_loadu_ps(x), x1 = W == 16 ? _mm256_loadu_ps(x + 8) : x0, v;
#define Q8ROW(i) v = _mm256_broadcast_ss(w##i + at); c##i##0 = _mm256_fmadd_ps(v, x0, c##i##0); \
                 if (W == 16) c##i##1 = _mm256_fmadd_ps(v, x1, c##i##1);
            Q8ROW(0) Q8ROW(1) Q8ROW(2) Q8ROW(3) Q8ROW(4) Q8ROW(5)
#undef Q8ROW
        }
        __m256 parts[6][2] = {{c00, c01}, {c10, c11}, {c20, c21}, {c30, c31}, {c40, c41}, {c50, c51}};
        for (int i = 0; i < 6; i++) {
            __m256 d = _mm256_broadcast_ss(sc[i] + b * Q8_PANEL);
            acc[i][0] = _mm256_fmadd_ps(parts[i][0], d, acc[i][0]);
            if (W == 16)
                acc[i][1] = _mm256_fmadd_ps(parts[i][1], d, acc[i][1]);
        }
    }
    float out6[6][16];
    for (int i = 0; i < 6; i++) {
        _mm256_storeu_ps(out6[i], acc[i][0]);
        _mm256_storeu_ps(out6[i] + 8, acc[i][1]);
    }
    store(out6[0], 16, o, rows, n, cols, bias, out, ldo, accumulate, transposed);
}

/* three panels from panel t (24 rows), their int8 values turned into floats once into wf [3, K, 8],
   times columns c..end of f(x) (its block of width w: 8, or a multiple of 16), 6 rows at a time */
static void q8_wide(const int8_t *Q, const float *S, long K, long O, long panels, long t, float *wf, const float *block,
                    long w, long c, long end, const float *bias, float *out, long ldo, int accumulate, int transposed) {
    long nb = K / Q8_BLOCK;
    for (long p = 0; p < 3 && t + p < panels; p++) {
        const int8_t *q = Q + (t + p) * K * Q8_PANEL;
        float *dst = wf + p * K * Q8_PANEL;
        for (long k = 0; k < K; k++)
            _mm256_store_ps(dst + k * Q8_PANEL, q8_values(q + k * Q8_PANEL));
    }
    for (long r0 = 0; r0 < 3 * Q8_PANEL; r0 += 6) {
        long o = t * Q8_PANEL + r0;
        if (o >= O)
            break;
        int rows = O - o < 6 ? (int)(O - o) : 6;
        const float *rowp[6], *scp[6];
        for (int i = 0; i < 6; i++) {
            long r = r0 + i < 3 * Q8_PANEL && t + (r0 + i) / Q8_PANEL < panels ? r0 + i : r0;  /* past the end: any real row */
            rowp[i] = wf + r / Q8_PANEL * K * Q8_PANEL + r % Q8_PANEL;
            scp[i] = S + (t + r / Q8_PANEL) * nb * Q8_PANEL + r % Q8_PANEL;
        }
        for (long n = c; n < end; n += w == 8 ? 8 : 16) {  /* f(x) is padded with zero columns to its width */
            int cols = end - n < (w == 8 ? 8 : 16) ? (int)(end - n) : (w == 8 ? 8 : 16);
            if (w == 8)
                q8_six(rowp, scp, K, block + (n - c), w, o, rows, n, cols, bias, out, ldo, accumulate, transposed, 8);
            else
                q8_six(rowp, scp, K, block + (n - c), w, o, rows, n, cols, bias, out, ldo, accumulate, transposed, 16);
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
            /* each thread a contiguous, even share of the panels (a small weight has only a few
               runs of 8: split by runs, one thread would get a run more), in runs of 8 */
            int threads = omp_get_num_threads(), id = omp_get_thread_num();
            long lo = panels * id / threads, hi = panels * (id + 1) / threads;
            for (long t = lo; t < hi; t += 2 * Q8_PANELS) {
                long run = hi - t < 2 * Q8_PANELS ? hi - t : 2 * Q8_PANELS;
                for (long n = 0; n < N; n += 2) {  /* the run's values are in cache after the first pair */
                    int pair = N - n >= 2;
                    for (long u = t; u < t + run;) {
                        long left = t + run - u;
                        if (!pair && left >= 8)
                            q8_narrow(Q, S, K, O, u, block, w, n, n, bias, out, ldo, accumulate, transposed, 8, 1), u += 8;
                        else if (!pair && left >= 4)
                            q8_narrow(Q, S, K, O, u, block, w, n, n, bias, out, ldo, accumulate, transposed, 4, 1), u += 4;
                        else if (pair && left >= 4)
                            q8_narrow(Q, S, K, O, u, block, w, n, n, bias, out, ldo, accumulate, transposed, 4, 2), u += 4;
                        else if (pair)
                            q8_narrow(Q, S, K, O, u, block, w, n, n, bias, out, ldo, accumulate, transposed, 1, 2), u += 1;
                        else
                            q8_narrow(Q, S, K, O, u, block, w, n, n, bias, out, ldo, accumulate, transposed, 1, 1), u += 1;
                    }
                }
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
