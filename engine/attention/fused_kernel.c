/*
 * Fused decode attention over a paged KV pool, read in place (no gathered copies, no padding).
 *
 * For each sequence b, its token slots are idx[offsets[b] .. offsets[b+1]). Pass 1 reads, token
 * by token, the K row of the slot (all KV heads), converts it to float32 in registers and dots it
 * with the G query heads of each KV head (scores kept per sequence in a scratch buffer); the
 * scores are softmaxed in float32; pass 2 reads the V rows once and accumulates p * v. Rows of
 * tokens a few positions ahead are prefetched: slots are scattered over the pool, so the gather is
 * otherwise bound by memory latency.
 *
 * All arithmetic is float32. Pools may be float32 (dtype 0), bfloat16 (1) or float16 (2).
 * With AVX-512 and head dims that are multiples of 32 an intrinsics path is used; otherwise a
 * plain C path (same algorithm) that the compiler vectorises as it can.
 *
 * Built by fused_kernel.py with: cc -O3 -march=native -fopenmp-simd -shared -fPIC
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#ifndef PREFETCH_AHEAD
#define PREFETCH_AHEAD 8 /* tokens ahead whose pool rows are prefetched */
#endif

#define ALWAYS_INLINE static inline __attribute__((always_inline))

typedef struct {
    int dtype;                /* 0 float32, 1 bfloat16, 2 float16 */
    const void *k, *v;
    int64_t k_slot, k_head;   /* strides in elements */
    int64_t v_slot, v_head;
    int Hkv, G, D, Dv;
    float scale, cap;
    int64_t k_row_bytes, v_row_bytes;
} params_t;

/* ---------------------------------------------------------------------------------------------
 * Prefetch: the access stream is K rows of sequence b, V rows of b, K rows of b + 1, ...
 * `pos` counts from the first K row of b; the caller passes the slots of b and b + 1.
 * ------------------------------------------------------------------------------------------- */
ALWAYS_INLINE void prefetch_bytes(const void *base, int64_t elem_offset, int elem, int64_t bytes) {
    const char *p = (const char *)base + elem_offset * elem;
    for (int64_t i = 0; i < bytes; i += 64) __builtin_prefetch(p + i, 0, 0);
}

ALWAYS_INLINE void prefetch_stream(const params_t *P, const int64_t *idx, int64_t n,
                                   const int64_t *next_idx, int64_t next_n, int64_t pos) {
    const int elem = P->dtype == 0 ? 4 : 2;
    if (pos < n)
        prefetch_bytes(P->k, idx[pos] * P->k_slot, elem, P->k_row_bytes);
    else if (pos < 2 * n)
        prefetch_bytes(P->v, idx[pos - n] * P->v_slot, elem, P->v_row_bytes);
    else if (pos - 2 * n < next_n)
        prefetch_bytes(P->k, next_idx[pos - 2 * n] * P->k_slot, elem, P->k_row_bytes);
}

/* ---------------------------------------------------------------------------------------------
 * Generic path
 * ------------------------------------------------------------------------------------------- */
static inline float bf16_to_f32(uint16_t x) {
    uint32_t u = (uint32_t)x << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline void load_row(int dtype, const void *base, int64_t offset, int n, float *dst) {
    if (dtype == 0) {
        memcpy(dst, (const float *)base + offset, (size_t)n * sizeof(float));
    } else if (dtype == 1) {
        const uint16_t *src = (const uint16_t *)base + offset;
#pragma omp simd
        for (int i = 0; i < n; i++) dst[i] = bf16_to_f32(src[i]);
    } else {
        const _Float16 *src = (const _Float16 *)base + offset;
#pragma omp simd
        for (int i = 0; i < n; i++) dst[i] = (float)src[i];
    }
}

static void softmax_rows_generic(float *scores, int H, int64_t n, float *inv_sum) {
    for (int h = 0; h < H; h++) {
        float *sh = scores + (int64_t)h * n;
        float m = sh[0];
        for (int64_t t = 1; t < n; t++) m = sh[t] > m ? sh[t] : m;
        float sum = 0.f;
        for (int64_t t = 0; t < n; t++) {
            const float e = expf(sh[t] - m);
            sh[t] = e;
            sum += e;
        }
        inv_sum[h] = 1.f / sum;
    }
}

static void attend_generic(const params_t *P, const float *qb, const int64_t *idx, int64_t n,
                           const int64_t *next_idx, int64_t next_n,
                           float *scores, float *row, float *acc, float *ob) {
    const int Hkv = P->Hkv, G = P->G, D = P->D, Dv = P->Dv, H = Hkv * G;
    for (int64_t t = 0; t < n; t++) {
        prefetch_stream(P, idx, n, next_idx, next_n, t + PREFETCH_AHEAD);
        const int64_t slot = idx[t];
        for (int hk = 0; hk < Hkv; hk++) {
            load_row(P->dtype, P->k, slot * P->k_slot + hk * P->k_head, D, row);
            for (int g = 0; g < G; g++) {
                const int h = hk * G + g;
                const float *qh = qb + (int64_t)h * D;
                float s = 0.f;
#pragma omp simd reduction(+ : s)
                for (int d = 0; d < D; d++) s += qh[d] * row[d];
                s *= P->scale;
                if (P->cap > 0.f) s = P->cap * tanhf(s / P->cap);
                scores[(int64_t)h * n + t] = s;
            }
        }
    }
    float inv_sum[H];
    softmax_rows_generic(scores, H, n, inv_sum);
    memset(acc, 0, sizeof(float) * (size_t)H * Dv);
    for (int64_t t = 0; t < n; t++) {
        prefetch_stream(P, idx, n, next_idx, next_n, n + t + PREFETCH_AHEAD);
        const int64_t slot = idx[t];
        for (int hk = 0; hk < Hkv; hk++) {
            load_row(P->dtype, P->v, slot * P->v_slot + hk * P->v_head, Dv, row);
            for (int g = 0; g < G; g++) {
                const int h = hk * G + g;
                const float p = scores[(int64_t)h * n + t];
                float *ah = acc + (int64_t)h * Dv;
#pragma omp simd
                for (int d = 0; d < Dv; d++) ah[d] += p * row[d];
            }
        }
    }
    for (int h = 0; h < H; h++)
        for (int d = 0; d < Dv; d++) ob[(int64_t)h * Dv + d] = acc[(int64_t)h * Dv + d] * inv_sum[h];
}

/* ---------------------------------------------------------------------------------------------
 * AVX-512 path (head dims multiples of 16, at most 256)
 * ------------------------------------------------------------------------------------------- */
#if defined(__AVX512F__)
#define MAX_VEC 16 /* head_dim <= 256 (16 vectors of 16 floats) */

/* One 32-element chunk of a pool row as two float32 vectors, in "pool order": natural order
 * (elements 0-15, 16-31) for float32 and float16; for bfloat16, even elements then odd elements,
 * which costs one shift and one mask instead of a cross-lane widening. Queries and accumulators are
 * kept in the same order, so dot products and sums are unaffected. */
ALWAYS_INLINE void load32(int dtype, const void *base, int64_t off, __m512 *lo, __m512 *hi) {
    if (dtype == 0) {
        *lo = _mm512_loadu_ps((const float *)base + off);
        *hi = _mm512_loadu_ps((const float *)base + off + 16);
    } else if (dtype == 1) {
        const __m512i w = _mm512_loadu_si512((const void *)((const uint16_t *)base + off));
        *lo = _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
        *hi = _mm512_castsi512_ps(_mm512_and_si512(w, _mm512_set1_epi32((int)0xFFFF0000u)));
    } else {
        const uint16_t *p = (const uint16_t *)base + off;
        *lo = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
        *hi = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p + 16)));
    }
}

/* Position in pool order of element j of a 32-element chunk. */
static inline int pool_pos(int dtype, int j) {
    return dtype == 1 ? (j & 1) * 16 + (j >> 1) : j;
}

/* Sum of each of 8 vectors, as 8 floats (a transposing add tree: 14 shuffles+adds, not 8 x 8). */
ALWAYS_INLINE __m256 hsum8(__m512 a0, __m512 a1, __m512 a2, __m512 a3,
                           __m512 a4, __m512 a5, __m512 a6, __m512 a7) {
    /* 512 -> 256: add halves, pairing vectors so that each result holds two of them */
    const __m512 b0 = _mm512_add_ps(_mm512_shuffle_f32x4(a0, a4, 0x44), _mm512_shuffle_f32x4(a0, a4, 0xEE));
    const __m512 b1 = _mm512_add_ps(_mm512_shuffle_f32x4(a1, a5, 0x44), _mm512_shuffle_f32x4(a1, a5, 0xEE));
    const __m512 b2 = _mm512_add_ps(_mm512_shuffle_f32x4(a2, a6, 0x44), _mm512_shuffle_f32x4(a2, a6, 0xEE));
    const __m512 b3 = _mm512_add_ps(_mm512_shuffle_f32x4(a3, a7, 0x44), _mm512_shuffle_f32x4(a3, a7, 0xEE));
    /* b_i lanes: [a_i 0-3 + 8-11 | a_i 4-7 + 12-15 | a_(i+4) 0-3 + 8-11 | a_(i+4) 4-7 + 12-15] */
    const __m512 c0 = _mm512_add_ps(_mm512_unpacklo_ps(b0, b1), _mm512_unpackhi_ps(b0, b1));
    const __m512 c1 = _mm512_add_ps(_mm512_unpacklo_ps(b2, b3), _mm512_unpackhi_ps(b2, b3));
    const __m512 d = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(c0), _mm512_castps_pd(c1))),
                                   _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(c0), _mm512_castps_pd(c1))));
    /* d: per 128-bit block k, lanes [a0 a1 a2 a3] (blocks 0,1) or [a4 a5 a6 a7] (blocks 2,3) partials */
    const __m512 e = _mm512_add_ps(d, _mm512_shuffle_f32x4(d, d, 0xB1)); /* swap blocks 0<->1, 2<->3 */
    const __m512 f = _mm512_shuffle_f32x4(e, e, 0x08);                   /* blocks 0, 2 to the bottom */
    return _mm512_castps512_ps256(f);
}

/* e^x for x <= 0 (and finite): range reduction by ln 2 (Cody-Waite), degree-7 Taylor series on
 * |r| <= 0.347 (truncation error < 1e-8 relative), scaling by 2^n with scalef. */
ALWAYS_INLINE __m512 exp512(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-104.f)); /* e^-104 underflows to 0 */
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.f / 5040.f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 720.f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 120.f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 24.f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 6.f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
    return _mm512_scalef_ps(p, n);
}

static void softmax_rows_avx512(float *scores, int H, int64_t n, float *inv_sum) {
    for (int h = 0; h < H; h++) {
        float *sh = scores + (int64_t)h * n;
        __m512 vm = _mm512_set1_ps(-INFINITY);
        int64_t t = 0;
        for (; t + 16 <= n; t += 16) vm = _mm512_max_ps(vm, _mm512_loadu_ps(sh + t));
        if (t < n) {
            const __mmask16 mk = (__mmask16)((1u << (n - t)) - 1);
            vm = _mm512_mask_max_ps(vm, mk, vm, _mm512_maskz_loadu_ps(mk, sh + t));
        }
        const __m512 m = _mm512_set1_ps(_mm512_reduce_max_ps(vm));
        __m512 vs = _mm512_setzero_ps();
        for (t = 0; t + 16 <= n; t += 16) {
            const __m512 e = exp512(_mm512_sub_ps(_mm512_loadu_ps(sh + t), m));
            _mm512_storeu_ps(sh + t, e);
            vs = _mm512_add_ps(vs, e);
        }
        if (t < n) {
            const __mmask16 mk = (__mmask16)((1u << (n - t)) - 1);
            const __m512 e = exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(mk, sh + t), m));
            _mm512_mask_storeu_ps(sh + t, mk, e);
            vs = _mm512_add_ps(vs, _mm512_maskz_mov_ps(mk, e));
        }
        inv_sum[h] = 1.f / _mm512_reduce_add_ps(vs);
    }
}

ALWAYS_INLINE void attend_avx512(const params_t *P, const int dtype, const float *qb,
                                 const int64_t *idx, int64_t n,
                                 const int64_t *next_idx, int64_t next_n,
                                 float *scores, float *acc, float *qp, float *ob) {
    const int Hkv = P->Hkv, G = P->G, H = Hkv * G, D = P->D, Dv = P->Dv;
    const int nc = D / 32, ncv = Dv / 32;
    const float scale = P->scale;
    /* queries in pool order, pre-scaled */
    for (int h = 0; h < H; h++)
        for (int c = 0; c < nc; c++)
            for (int j = 0; j < 32; j++)
                qp[(int64_t)h * D + 32 * c + pool_pos(dtype, j)] = qb[(int64_t)h * D + 32 * c + j] * scale;
    for (int64_t t = 0; t < n; t++) {
        prefetch_stream(P, idx, n, next_idx, next_n, t + PREFETCH_AHEAD);
        const int64_t base = idx[t] * P->k_slot;
        if (G == 1 && Hkv == 8) {
            __m512 a[8];
            for (int hk = 0; hk < 8; hk++) {
                const float *qh = qp + (int64_t)hk * D;
                __m512 lo, hi;
                load32(dtype, P->k, base + hk * P->k_head, &lo, &hi);
                __m512 x = _mm512_mul_ps(_mm512_loadu_ps(qh), lo);
                __m512 y = _mm512_mul_ps(_mm512_loadu_ps(qh + 16), hi);
                for (int c = 1; c < nc; c++) {
                    load32(dtype, P->k, base + hk * P->k_head + 32 * c, &lo, &hi);
                    x = _mm512_fmadd_ps(_mm512_loadu_ps(qh + 32 * c), lo, x);
                    y = _mm512_fmadd_ps(_mm512_loadu_ps(qh + 32 * c + 16), hi, y);
                }
                a[hk] = _mm512_add_ps(x, y);
            }
            const __m256 s8 = hsum8(a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]);
            float tmp[8];
            _mm256_storeu_ps(tmp, s8);
            for (int h = 0; h < 8; h++) scores[(int64_t)h * n + t] = tmp[h];
            continue;
        }
        for (int hk = 0; hk < Hkv; hk++) {
            __m512 lo[MAX_VEC / 2], hi[MAX_VEC / 2];
            for (int c = 0; c < nc; c++) load32(dtype, P->k, base + hk * P->k_head + 32 * c, &lo[c], &hi[c]);
            for (int g = 0; g < G; g++) {
                const int h = hk * G + g;
                const float *qh = qp + (int64_t)h * D;
                __m512 x = _mm512_mul_ps(_mm512_loadu_ps(qh), lo[0]);
                __m512 y = _mm512_mul_ps(_mm512_loadu_ps(qh + 16), hi[0]);
                for (int c = 1; c < nc; c++) {
                    x = _mm512_fmadd_ps(_mm512_loadu_ps(qh + 32 * c), lo[c], x);
                    y = _mm512_fmadd_ps(_mm512_loadu_ps(qh + 32 * c + 16), hi[c], y);
                }
                scores[(int64_t)h * n + t] = _mm512_reduce_add_ps(_mm512_add_ps(x, y));
            }
        }
    }
    if (P->cap > 0.f)
        for (int64_t i = 0; i < (int64_t)H * n; i++) scores[i] = P->cap * tanhf(scores[i] / P->cap);
    float inv_sum[H];
    softmax_rows_avx512(scores, H, n, inv_sum);
    memset(acc, 0, sizeof(float) * (size_t)H * Dv);
    for (int64_t t = 0; t < n; t++) {
        prefetch_stream(P, idx, n, next_idx, next_n, n + t + PREFETCH_AHEAD);
        const int64_t base = idx[t] * P->v_slot;
        for (int hk = 0; hk < Hkv; hk++) {
            for (int c = 0; c < ncv; c++) {
                __m512 lo, hi;
                load32(dtype, P->v, base + hk * P->v_head + 32 * c, &lo, &hi);
                for (int g = 0; g < G; g++) {
                    const int h = hk * G + g;
                    const __m512 p = _mm512_set1_ps(scores[(int64_t)h * n + t]);
                    float *ah = acc + (int64_t)h * Dv + 32 * c;
                    _mm512_storeu_ps(ah, _mm512_fmadd_ps(p, lo, _mm512_loadu_ps(ah)));
                    _mm512_storeu_ps(ah + 16, _mm512_fmadd_ps(p, hi, _mm512_loadu_ps(ah + 16)));
                }
            }
        }
    }
    /* back from pool order, normalised */
    for (int h = 0; h < H; h++)
        for (int c = 0; c < ncv; c++)
            for (int j = 0; j < 32; j++)
                ob[(int64_t)h * Dv + 32 * c + j] = acc[(int64_t)h * Dv + 32 * c + pool_pos(dtype, j)] * inv_sum[h];
}

static void attend_avx512_f32(const params_t *P, const float *qb, const int64_t *idx, int64_t n,
                              const int64_t *ni, int64_t nn, float *s, float *a, float *qp, float *o) {
    attend_avx512(P, 0, qb, idx, n, ni, nn, s, a, qp, o);
}
static void attend_avx512_bf16(const params_t *P, const float *qb, const int64_t *idx, int64_t n,
                               const int64_t *ni, int64_t nn, float *s, float *a, float *qp, float *o) {
    attend_avx512(P, 1, qb, idx, n, ni, nn, s, a, qp, o);
}
static void attend_avx512_f16(const params_t *P, const float *qb, const int64_t *idx, int64_t n,
                              const int64_t *ni, int64_t nn, float *s, float *a, float *qp, float *o) {
    attend_avx512(P, 2, qb, idx, n, ni, nn, s, a, qp, o);
}
#endif

/* Which path this library would take for these head dims (1 = AVX-512, 0 = generic). */
int semipd_decode_attention_path(int D, int Dv) {
#if defined(__AVX512F__)
    return D % 32 == 0 && Dv % 32 == 0 && D <= 16 * MAX_VEC && Dv <= 16 * MAX_VEC;
#else
    (void)D; (void)Dv;
    return 0;
#endif
}

/*
 * q       [B, Hkv*G, D] float32, contiguous
 * k, v    pools: slot s, kv head h, element d at s*k_slot_stride + h*k_head_stride + d
 * idx     int64 token slots, sequence after sequence; offsets [B+1] int64
 * out     [B, Hkv*G, Dv] float32, contiguous
 * scratch float32, at least max_len * Hkv*G + max(D, Dv) + Hkv*G*Dv + Hkv*G*D elements
 * force_generic: 1 to skip the AVX-512 path (for testing)
 * Returns 0, or -1 on a bad argument.
 */
int semipd_decode_attention(
    int dtype, const void *k, const void *v,
    int64_t k_slot_stride, int64_t k_head_stride,
    int64_t v_slot_stride, int64_t v_head_stride,
    const float *q, const int64_t *idx, const int64_t *offsets,
    int B, int Hkv, int G, int D, int Dv,
    float scale, float logit_cap, float *scratch, float *out, int force_generic)
{
    if (B < 0 || Hkv <= 0 || G <= 0 || D <= 0 || Dv <= 0 || dtype < 0 || dtype > 2) return -1;
    const int H = Hkv * G;
    const int elem = dtype == 0 ? 4 : 2;
    params_t P = {
        dtype, k, v, k_slot_stride, k_head_stride, v_slot_stride, v_head_stride,
        Hkv, G, D, Dv, scale, logit_cap,
        ((int64_t)(Hkv - 1) * k_head_stride + D) * elem,
        ((int64_t)(Hkv - 1) * v_head_stride + Dv) * elem,
    };
    int64_t max_len = 0;
    for (int b = 0; b < B; b++) {
        const int64_t n = offsets[b + 1] - offsets[b];
        if (n > max_len) max_len = n;
    }
    float *scores = scratch;                    /* [H, n] */
    float *row = scores + max_len * H;          /* [max(D, Dv)] */
    float *acc = row + (D > Dv ? D : Dv);       /* [H, Dv] */
    float *qp = acc + (int64_t)H * Dv;          /* [H, D] queries in pool order */

    void (*fast)(const params_t *, const float *, const int64_t *, int64_t, const int64_t *,
                 int64_t, float *, float *, float *, float *) = NULL;
#if defined(__AVX512F__)
    if (!force_generic && semipd_decode_attention_path(D, Dv))
        fast = dtype == 0 ? attend_avx512_f32 : dtype == 1 ? attend_avx512_bf16 : attend_avx512_f16;
#else
    (void)force_generic;
#endif
    if (B > 0) /* the first rows of the stream; later ones are prefetched as it advances */
        for (int64_t pos = 0; pos < PREFETCH_AHEAD; pos++)
            prefetch_stream(&P, idx, offsets[1] - offsets[0], idx + offsets[B > 1 ? 1 : 0],
                            B > 1 ? offsets[2] - offsets[1] : 0, pos);
    for (int b = 0; b < B; b++) {
        const int64_t start = offsets[b];
        const int64_t n = offsets[b + 1] - start;
        const int64_t next_n = b + 1 < B ? offsets[b + 2] - offsets[b + 1] : 0;
        const int64_t *next_idx = idx + offsets[b + 1 < B ? b + 1 : b];
        const float *qb = q + (int64_t)b * H * D;
        float *ob = out + (int64_t)b * H * Dv;
        if (n <= 0) {
            memset(ob, 0, sizeof(float) * (size_t)H * Dv);
            continue;
        }
        if (fast)
            fast(&P, qb, idx + start, n, next_idx, next_n, scores, acc, qp, ob);
        else
            attend_generic(&P, qb, idx + start, n, next_idx, next_n, scores, row, acc, ob);
    }
    return 0;
}
