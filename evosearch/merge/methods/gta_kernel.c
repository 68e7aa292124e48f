/* The generalised task-arithmetic family in one pass over memory (float32), for evosearch.merge.methods.fused.

   out[j] = base[j] + lam * combine_i(w_i * scale_i * keep_i(j) * (model_i[j] - base[j]))

   Every function works on the element range [start, end), so the caller splits a tensor into chunks and runs
   them on several threads; nothing here depends on where a chunk starts or how many there are. The float
   operations are torch's, one by one and in the same order (compiled without FMA contraction and without
   fast-math), so the result is bit-identical to the torch path of fused.py.

   keep_i(j), by kind[i]:
     0  every element
     1  a window of magnitude ranks, ranks counted from the largest |d| with lower indices first among equal
        magnitudes: below(hi) && !below(lo), below(b) = |d| > thr_b || (|d| == thr_b && j < cut_b)
     2  a counter-based draw: hash(key_i, j) < threshold_i (keep probability threshold_i / 2^32)
     3  an explicit byte mask
*/
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define BLOCK 256 /* elements per step: a step's scratch rows stay in L1 */

typedef struct {
    int32_t kind;
    float weight;
    float scale;          /* the rescale factor (1 when none) */
    int32_t has_scale;    /* torch multiplies by the factor only when rescaling: x * 1 would still be exact */
    float thr_hi, thr_lo;
    int64_t cut_hi, cut_lo;
    uint32_t key0, key1;
    uint64_t threshold;
    const uint8_t *mask;
} keep_spec;

static inline uint32_t mix32(uint32_t x) {
    x ^= x >> 16;
    x *= 0x7feb352dU;
    x ^= x >> 15;
    x *= 0x846ca68bU;
    x ^= x >> 16;
    return x;
}

uint32_t counter_hash(uint32_t key0, uint32_t key1, int64_t j) {
    uint64_t u = (uint64_t)j;
    return mix32(mix32((uint32_t)u ^ key0) ^ (uint32_t)(u >> 32) ^ key1);
}

static inline int below(float a, float thr, int64_t cut, int64_t j) {
    return a > thr || (a == thr && j < cut);
}

static inline int keeps(const keep_spec *s, float d, int64_t j) {
    switch (s->kind) {
    case 1: {
        float a = fabsf(d);
        return below(a, s->thr_hi, s->cut_hi, j) && !below(a, s->thr_lo, s->cut_lo, j);
    }
    case 2:
        return (uint64_t)counter_hash(s->key0, s->key1, j) < s->threshold;
    case 3:
        return s->mask[j] != 0;
    default:
        return 1;
    }
}

/* Per-chunk histogram of the top 16 bits of |model - base| (the sign bit is 0: 32768 bins). */
void magnitude_histogram(const float *base, const float *model, int64_t start, int64_t end, int64_t *hist) {
    memset(hist, 0, sizeof(int64_t) * 32768);
    for (int64_t j = start; j < end; j++) {
        float a = fabsf(model[j] - base[j]);
        uint32_t bits;
        memcpy(&bits, &a, 4);
        hist[bits >> 16]++;
    }
}

/* The magnitudes of bin `bin` and their indices, in index order; returns how many. */
int64_t magnitude_gather(const float *base, const float *model, int64_t start, int64_t end, int32_t bin,
                         float *values, int64_t *indices) {
    int64_t n = 0;
    for (int64_t j = start; j < end; j++) {
        float a = fabsf(model[j] - base[j]);
        uint32_t bits;
        memcpy(&bits, &a, 4);
        if ((int32_t)(bits >> 16) == bin) {
            values[n] = a;
            indices[n] = j;
            n++;
        }
    }
    return n;
}

/* One pass for the rank bounds of n task vectors at once: for model i, above[i] = elements with |d| > hi[i];
   the elements with lo[i] <= |d| <= hi[i] go to values[i] / indices[i] (index order) while they fit in
   capacity, and within[i] counts them all (more than capacity: the caller selects another way). */
void window_select(const float *base, const float *const *models, int32_t n, const float *lo, const float *hi,
                   int64_t start, int64_t end, int64_t capacity, float *const *values, int64_t *const *indices,
                   int64_t *above, int64_t *within) {
    uint8_t hit[BLOCK];
    for (int32_t i = 0; i < n; i++)
        above[i] = within[i] = 0;
    for (int64_t j0 = start; j0 < end; j0 += BLOCK) {
        int64_t len = end - j0 < BLOCK ? end - j0 : BLOCK;
        for (int32_t i = 0; i < n; i++) {
            const float *m = models[i];
            float l = lo[i], h = hi[i];
            int32_t count = 0;
            memset(hit, 0, sizeof hit);
            for (int64_t t = 0; t < len; t++) {  /* vectorises; the few hits are picked out of `hit` after */
                float a = fabsf(m[j0 + t] - base[j0 + t]);
                count += a > h;
                hit[t] = (a >= l) & (a <= h);
            }
            above[i] += count;
            for (int64_t w = 0; w < BLOCK; w += 8) {
                uint64_t word;
                memcpy(&word, hit + w, 8);
                if (!word)
                    continue;
                for (int64_t t = w; t < w + 8; t++) {
                    if (!hit[t])
                        continue;
                    if (within[i] < capacity) {
                        values[i][within[i]] = fabsf(m[j0 + t] - base[j0 + t]);
                        indices[i][within[i]] = j0 + t;
                    }
                    within[i]++;
                }
            }
        }
    }
}

/* DELLA's draws for rows [row_start, row_end) of a (rows x cols) task vector: each element's magnitude rank
   in its row (0 = smallest; equal magnitudes by index, as a stable sort orders them) sets its keep
   probability low + step * rank, compared with its counter hash as a 2^32 threshold, in double as the
   torch backend computes it. The ranks come from a stable LSD radix sort of the magnitudes' bit patterns
   (non-negative floats order as their bits do). Returns 0, or -1 when scratch memory ran out. */
int della_mask(const float *base, const float *model, int64_t cols, int64_t row_start, int64_t row_end,
               double low, double step, uint32_t key0, uint32_t key1, uint8_t *mask) {
    uint32_t *keys = malloc(sizeof(uint32_t) * 2 * cols);
    int32_t *order = malloc(sizeof(int32_t) * 2 * cols);
    if (!keys || !order) {
        free(keys);
        free(order);
        return -1;
    }
    for (int64_t r = row_start; r < row_end; r++) {
        const float *b = base + r * cols, *m = model + r * cols;
        uint32_t *k_in = keys, *k_out = keys + cols;
        int32_t *o_in = order, *o_out = order + cols;
        for (int64_t c = 0; c < cols; c++) {
            float a = fabsf(m[c] - b[c]);
            memcpy(&k_in[c], &a, 4);
            o_in[c] = (int32_t)c;
        }
        for (int shift = 0; shift < 32; shift += 8) {
            int64_t count[257] = {0};
            for (int64_t c = 0; c < cols; c++)
                count[((k_in[c] >> shift) & 255) + 1]++;
            if (count[((k_in[0] >> shift) & 255) + 1] == cols)
                continue;  /* every key has this digit: the pass would not move anything */
            for (int d = 0; d < 256; d++)
                count[d + 1] += count[d];
            for (int64_t c = 0; c < cols; c++) {
                int64_t at = count[(k_in[c] >> shift) & 255]++;
                k_out[at] = k_in[c];
                o_out[at] = o_in[c];
            }
            uint32_t *kt = k_in; k_in = k_out; k_out = kt;
            int32_t *ot = o_in; o_in = o_out; o_out = ot;
        }
        for (int64_t rank = 0; rank < cols; rank++) {
            int64_t j = r * cols + o_in[rank];
            double p = (double)rank * step;
            p = p + low;
            p = p * 4294967296.0;
            mask[j] = (double)counter_hash(key0, key1, j) < floor(p);
        }
    }
    free(keys);
    free(order);
    return 0;
}

/* x[0..len) = keep(d) * d for one task vector over one block (then scaled and weighted, as torch does). */
static void block_terms(const float *base, const float *model, const keep_spec *s, int64_t j0, int64_t len,
                        float *x) {
    for (int64_t t = 0; t < len; t++)
        x[t] = model[j0 + t] - base[j0 + t];
    switch (s->kind) {
    case 1: {
        float hi = s->thr_hi, lo = s->thr_lo;
        /* j < cut as t < cut - j0, clamped to the block: 32-bit lanes, so the loop vectorises at full width */
        int32_t cut_hi = (int32_t)(s->cut_hi <= j0 ? 0 : s->cut_hi - j0 >= len ? len : s->cut_hi - j0);
        int32_t cut_lo = (int32_t)(s->cut_lo <= j0 ? 0 : s->cut_lo - j0 >= len ? len : s->cut_lo - j0);
        for (int32_t t = 0; t < (int32_t)len; t++) {  /* branch-free, so it vectorises */
            float a = fabsf(x[t]);
            int upper = (a > hi) | ((a == hi) & (t < cut_hi));
            int lower = (a > lo) | ((a == lo) & (t < cut_lo));
            x[t] = x[t] * (float)(upper & !lower);  /* a ?: here stays a branch without AVX-512 masks */
        }
        break;
    }
    case 2:
        if (s->threshold < (1ULL << 32)) {
            uint32_t limit = (uint32_t)s->threshold, k0 = s->key0, k1 = s->key1;
            uint64_t first = (uint64_t)j0, last = (uint64_t)(j0 + len - 1);
            if ((first >> 32) == (last >> 32)) {  /* the index's high word is the block's: 32-bit lanes */
                uint32_t low = (uint32_t)first, high = (uint32_t)(first >> 32) ^ k1;
                for (int32_t t = 0; t < (int32_t)len; t++) {
                    uint32_t h = mix32(mix32((low + (uint32_t)t) ^ k0) ^ high);
                    x[t] = x[t] * (h < limit ? 1.0f : 0.0f);
                }
            } else {
                for (int64_t t = 0; t < len; t++)
                    x[t] = x[t] * (counter_hash(k0, k1, j0 + t) < limit ? 1.0f : 0.0f);
            }
        } else {
            for (int64_t t = 0; t < len; t++)
                x[t] = x[t] * 1.0f;
        }
        break;
    case 3:
        for (int64_t t = 0; t < len; t++)
            x[t] = x[t] * (s->mask[j0 + t] ? 1.0f : 0.0f);
        break;
    default:
        break;
    }
    if (s->kind && s->has_scale)
        for (int64_t t = 0; t < len; t++)
            x[t] = x[t] * s->scale;
    float w = s->weight;
    for (int64_t t = 0; t < len; t++)
        x[t] = x[t] * w;
}

/* sums[0] = sum |d|, sums[1] = sum |d| over the kept elements (the L1 rescale's two norms), in double,
   eight running sums in a fixed order (the result does not depend on the compiler's vector width). */
void kept_l1(const float *base, const float *model, const keep_spec *spec, int64_t start, int64_t end,
             double *sums) {
    float d[BLOCK], kept[BLOCK];
    double all[8] = {0}, some[8] = {0};
    keep_spec bare = *spec;
    bare.weight = 1.0f;
    bare.has_scale = 0;
    for (int64_t j0 = start; j0 < end; j0 += BLOCK) {
        int64_t len = end - j0 < BLOCK ? end - j0 : BLOCK;
        for (int64_t t = 0; t < len; t++)
            d[t] = model[j0 + t] - base[j0 + t];
        block_terms(base, model, &bare, j0, len, kept);
        for (int64_t t = len; t < BLOCK; t++)
            d[t] = kept[t] = 0;
        for (int64_t t = 0; t < BLOCK; t += 8)
            for (int u = 0; u < 8; u++) {
                all[u] += fabs((double)d[t + u]);
                some[u] += fabs((double)kept[t + u]);
            }
    }
    sums[0] = sums[1] = 0;
    for (int u = 0; u < 8; u++) {
        sums[0] += all[u];
        sums[1] += some[u];
    }
}

static inline float sign_of(float v) { return (float)((v > 0) - (v < 0)); }

void combine(const float *base, const float *const *models, const keep_spec *specs, int32_t n,
             int32_t sign_consensus, int32_t normalize, float divisor, int32_t apply_lam, float lam,
             int64_t start, int64_t end, float *out) {
    float x[64][BLOCK], mixed[BLOCK], div[BLOCK], majority[BLOCK];
    for (int64_t j0 = start; j0 < end; j0 += BLOCK) {
        int64_t len = end - j0 < BLOCK ? end - j0 : BLOCK;
        for (int32_t i = 0; i < n; i++)
            block_terms(base, models[i], &specs[i], j0, len, x[i]);
        for (int64_t t = 0; t < len; t++)
            mixed[t] = x[0][t];
        for (int32_t i = 1; i < n; i++)
            for (int64_t t = 0; t < len; t++)
                mixed[t] = mixed[t] + x[i][t];
        if (sign_consensus) {  /* the sum's sign is the majority; the sum is taken again over the agreeing */
            for (int64_t t = 0; t < len; t++)
                majority[t] = mixed[t] >= 0 ? 1.0f : -1.0f;
            for (int32_t i = 0; i < n; i++) {
                float w = specs[i].weight;
                for (int64_t t = 0; t < len; t++) {
                    float agree = sign_of(x[i][t]) == majority[t] ? 1.0f : 0.0f;
                    float term = x[i][t] * agree, share = agree * w;
                    mixed[t] = i ? mixed[t] + term : term;
                    div[t] = i ? div[t] + share : share;
                }
            }
            for (int64_t t = 0; t < len; t++)
                div[t] = div[t] == 0 ? 1.0f : div[t];
        } else {
            for (int64_t t = 0; t < len; t++)
                div[t] = divisor;
        }
        if (normalize)
            for (int64_t t = 0; t < len; t++)
                mixed[t] = mixed[t] / div[t];
        if (apply_lam)
            for (int64_t t = 0; t < len; t++)
                mixed[t] = mixed[t] * lam;
        for (int64_t t = 0; t < len; t++)
            out[j0 + t] = mixed[t] + base[j0 + t];
    }
}
