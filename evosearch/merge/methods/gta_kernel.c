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
#include <string.h>

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

/* sums[0] += sum |d|, sums[1] += sum |d| over the kept elements (the L1 rescale's two norms), in double. */
void kept_l1(const float *base, const float *model, const keep_spec *spec, int64_t start, int64_t end,
             double *sums) {
    double all = 0, kept = 0;
    for (int64_t j = start; j < end; j++) {
        float d = model[j] - base[j];
        double a = fabs((double)d);
        all += a;
        if (keeps(spec, d, j))
            kept += a;
    }
    sums[0] = all;
    sums[1] = kept;
}

/* Bytes 1 where the draw keeps an element with its own probability probability[j] (as a 2^32 threshold). */
void draw_mask(uint32_t key0, uint32_t key1, const int64_t *threshold, int64_t start, int64_t end, uint8_t *mask) {
    for (int64_t j = start; j < end; j++)
        mask[j] = (int64_t)counter_hash(key0, key1, j) < threshold[j];
}

void combine(const float *base, const float *const *models, const keep_spec *specs, int32_t n,
             int32_t sign_consensus, int32_t normalize, float divisor, int32_t apply_lam, float lam,
             int64_t start, int64_t end, float *out) {
    float x[64];
    for (int64_t j = start; j < end; j++) {
        float b = base[j];
        for (int32_t i = 0; i < n; i++) {
            float d = models[i][j] - b;
            const keep_spec *s = &specs[i];
            if (s->kind) {
                d = d * (keeps(s, d, j) ? 1.0f : 0.0f);
                if (s->has_scale)
                    d = d * s->scale;
            }
            x[i] = d * s->weight;
        }
        float mixed, div = divisor;
        if (sign_consensus) {
            float sum = x[0];
            for (int32_t i = 1; i < n; i++)
                sum = sum + x[i];
            float majority = sum >= 0 ? 1.0f : -1.0f;
            float agree = (float)(((x[0] > 0) - (x[0] < 0)) == (int)majority);
            mixed = x[0] * agree;
            div = agree * specs[0].weight;
            for (int32_t i = 1; i < n; i++) {
                agree = (float)(((x[i] > 0) - (x[i] < 0)) == (int)majority);
                mixed = mixed + x[i] * agree;
                div = div + agree * specs[i].weight;
            }
            if (div == 0)
                div = 1;
        } else {
            mixed = x[0];
            for (int32_t i = 1; i < n; i++)
                mixed = mixed + x[i];
        }
        if (normalize)
            mixed = mixed / div;
        if (apply_lam)
            mixed = mixed * lam;
        out[j] = mixed + b;
    }
}
