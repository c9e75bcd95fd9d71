// The element-wise work the fused matching kernel cannot avoid on every (head, query, key) score after the
// matmul, written as tightly as we know how, for benchmarks/kernel.py --bound. Rows stay in L1 and the exp is
// a polynomial looser than ATen's, so the times are lower bounds.
// Plain GCC vector extensions: g++ -O3 -march=native turns them into the host's widest SIMD.
#include <cstdint>
#include <cstring>

typedef float vf __attribute__((vector_size(64)));
typedef int32_t vi __attribute__((vector_size(64)));
constexpr int LANES = 16;

static inline vf splat(float v) { return vf{} + v; }
static inline vf load(const float* p) { vf v; std::memcpy(&v, p, sizeof v); return v; }
static inline void store(float* p, vf v) { std::memcpy(p, &v, sizeof v); }

// exp(x) = 2^n 2^f, n = round(x log2 e), f in [-0.5, 0.5]; 2^f by a polynomial of degree 6 (relative error
// about 1e-6, with x clamped above the float range's bottom) or, cheaper, the same series cut at degree 4
// (about 4e-5, still inside the parity tests' rtol of 1e-4, unclamped: logits must stay above -87).
template <bool CHEAP>
static inline vf fast_exp(vf x) {
  vf t = x * 1.44269504088896341f;
  if (!CHEAP) t = t < -126.f ? splat(-126.f) : t;
  vf n = (t + 12582912.f) - 12582912.f;  // round to nearest: 1.5 * 2^23 pushes the fraction out
  vf f = t - n;
  vf p;
  if (CHEAP) {
    p = splat(9.618437357674640e-3f);
  } else {
    p = splat(1.535336188319500e-4f);
    p = p * f + 1.339887440266574e-3f;
    p = p * f + 9.618437357674640e-3f;
  }
  p = p * f + 5.550332471162809e-2f;
  p = p * f + 2.402264791363012e-1f;
  p = p * f + 6.931472028550421e-1f;
  p = p * f + 1.0f;
  vi bits = (__builtin_convertvector(n, vi) + 127) << 23;
  vf two_to_n;
  std::memcpy(&two_to_n, &bits, sizeof two_to_n);
  return p * two_to_n;
}

static inline float lane_sum(vf v) { float s = 0.f; for (int l = 0; l < LANES; l++) s += v[l]; return s; }

// Per row (one frame's logits of one head and query point): max, exp(s - max) stored, sum, then the two
// head-sum accumulations of the fused kernel (per-frame cost and joint probability). tokens % 16 == 0.
// cheapest = 1 skips the max pass (shifting by 0, as a kernel could with a safe bound on the logits known
// beforehand and a fallback where a sum underflows) and takes the degree-4 exp: the least this work can cost.
template <bool CHEAPEST>
static float softmax_accumulate_rows(float* scores, float* cost, float* joint, int rows, int tokens, long repeats) {
  float checksum = 0.f;
  for (long r = 0; r < repeats; r++) {
    for (int row = 0; row < rows; row++) {
      float* s = scores + (long)row * tokens;
      float row_max = 0.f;
      if (!CHEAPEST) {
        vf m = splat(-1e30f);
        for (int i = 0; i < tokens; i += LANES) { vf v = load(s + i); m = v > m ? v : m; }
        row_max = m[0];
        for (int l = 1; l < LANES; l++) row_max = m[l] > row_max ? m[l] : row_max;
      }
      vf sum = {};
      for (int i = 0; i < tokens; i += LANES) { vf e = fast_exp<CHEAPEST>(load(s + i) - row_max); sum += e; store(s + i, e); }
      float inverse = 1.f / lane_sum(sum);
      vf cost_coef = splat(inverse / 30.f), joint_coef = splat(inverse * 0.5f);
      float* c = cost + (long)row * tokens;
      float* j = joint + (long)row * tokens;
      for (int i = 0; i < tokens; i += LANES) {
        vf e = load(s + i);
        store(c + i, load(c + i) + e * cost_coef);
        store(j + i, load(j + i) + e * joint_coef);
      }
      checksum += c[row];
    }
  }
  return checksum;
}

extern "C" float softmax_accumulate(float* scores, float* cost, float* joint, int rows, int tokens, long repeats,
                                    int cheapest) {
  return cheapest ? softmax_accumulate_rows<true>(scores, cost, joint, rows, tokens, repeats)
                  : softmax_accumulate_rows<false>(scores, cost, joint, rows, tokens, repeats);
}

// The least any exact softmax does per score: one exp and one add (no max, nothing stored).
extern "C" float exp_sum(const float* scores, int rows, int tokens, long repeats) {
  float checksum = 0.f;
  for (long r = 0; r < repeats; r++) {
    for (int row = 0; row < rows; row++) {
      const float* s = scores + (long)row * tokens;
      vf sum = {};
      for (int i = 0; i < tokens; i += LANES) sum += fast_exp<false>(load(s + i));
      checksum += lane_sum(sum);
    }
  }
  return checksum;
}
