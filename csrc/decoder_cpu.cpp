// CPU implementations of the decoder's fused ops (rms_norm, add_rms_norm, rope_kv_write),
// registered in csrc/bindings.cpp.
//
// On a GPU each of these is one Triton kernel (phide/triton_kernels/). On a CPU a decode step is
// host-bound: every op called from Python costs an argument parse, a dispatch and an allocation,
// several µs, so an RMSNorm written as seven torch calls costs more than its arithmetic. These
// are one pass over the row each, rounding exactly where the torch twins
// (phide/ops/reference/rms_norm.py, rope.py) round, so they are bit-identical to them: every
// elementwise step is the twin's (float arithmetic, one rounding to the tensor dtype per torch
// op, no FMA contraction: setup.py builds with -ffp-contract=off), and the one reduction, the
// mean of squares, is ATen's own `mean` over the squared row, as in the twin.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/TensorIndexing.h>

#include <cmath>

#include "ops.h"

namespace phide {
namespace {

void check_cpu(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), op, ": CPU kernel called with ", name, " on ", t.device());
}

template <typename T>
inline T round_to(float v) {
  return static_cast<T>(v);  // c10::BFloat16 / c10::Half round to nearest even, as torch's casts
}

// rows [R, H] (x, and the residual when given) -> out [R, H] (out_t), summed [R, H] (scalar_t).
template <typename scalar_t, typename w_t, typename out_t>
void rms_rows(const scalar_t* x, const scalar_t* res, const w_t* w, out_t* out, scalar_t* summed,
              int64_t R, int64_t H, double eps) {
  // The twin: summed = residual + x (rounded to the dtype); h = float(summed);
  // h * rsqrt(mean(h * h) + eps), rounded to the dtype; weight * that, in the promoted dtype.
  at::Tensor squares = at::empty({R, H}, at::kFloat);
  float* sq = squares.data_ptr<float>();
  at::Tensor h_buf;
  float* h = nullptr;
  if (res != nullptr) {
    h_buf = at::empty({R, H}, at::kFloat);
    h = h_buf.data_ptr<float>();
  }
  at::parallel_for(0, R, 16, [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) {
      for (int64_t j = 0; j < H; ++j) {
        const int64_t i = r * H + j;
        float v;
        if (res != nullptr) {
          const scalar_t s = round_to<scalar_t>(static_cast<float>(res[i]) + static_cast<float>(x[i]));
          summed[i] = s;
          v = static_cast<float>(s);
          h[i] = v;
        } else {
          v = static_cast<float>(x[i]);
        }
        sq[i] = v * v;  // pow(h, 2): ATen squares by one multiply
      }
    }
  });
  // The reduction is ATen's, the twin's `mean(-1)`: the same summation order.
  at::Tensor mean = squares.mean({-1});
  const float* m = mean.data_ptr<float>();
  const float eps_f = static_cast<float>(eps);  // the twin adds eps as a float32 scalar
  at::parallel_for(0, R, 16, [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) {
      const float inv = 1.0f / std::sqrt(m[r] + eps_f);  // ATen's rsqrt: 1 / sqrt, both rounded
      for (int64_t j = 0; j < H; ++j) {
        const int64_t i = r * H + j;
        const float v = res != nullptr ? h[i] : static_cast<float>(x[i]);
        const scalar_t normed = round_to<scalar_t>(v * inv);
        out[i] = round_to<out_t>(static_cast<float>(w[j]) * static_cast<float>(normed));
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> rms_norm_impl(const at::Tensor& x_in, const at::Tensor* residual_in,
                                                 const at::Tensor& weight_in, double eps, const char* op) {
  check_cpu(x_in, op, "x");
  const int64_t H = x_in.size(-1);
  TORCH_CHECK(weight_in.dim() == 1 && weight_in.size(0) == H, op, ": weight must be [H] with H = x.size(-1)");
  const at::Tensor x = x_in.contiguous();
  const at::Tensor weight = weight_in.contiguous();
  at::Tensor residual;
  if (residual_in != nullptr) {
    TORCH_CHECK(residual_in->sizes() == x_in.sizes() && residual_in->scalar_type() == x_in.scalar_type(), op,
                ": residual must match x's shape and dtype");
    residual = residual_in->contiguous();
  }
  const auto out_type = at::promote_types(weight.scalar_type(), x.scalar_type());
  at::Tensor out = at::empty(x.sizes(), x.options().dtype(out_type));
  at::Tensor summed = residual_in != nullptr ? at::empty_like(x) : at::Tensor();
  const int64_t R = H == 0 ? 0 : x.numel() / H;
  if (R == 0) {
    return {out, summed};
  }
  TORCH_CHECK(out_type == x.scalar_type() || out_type == at::kFloat, op,
              ": weight and x dtypes must promote to x's dtype or float32");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "phide_rms_norm", [&] {
    using x_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, weight.scalar_type(), "phide_rms_norm_w", [&] {
      using w_t = scalar_t;
      const x_t* res = residual_in != nullptr ? residual.data_ptr<x_t>() : nullptr;
      x_t* sum_ptr = residual_in != nullptr ? summed.data_ptr<x_t>() : nullptr;
      if (out_type == x.scalar_type()) {
        rms_rows<x_t, w_t, x_t>(x.data_ptr<x_t>(), res, weight.data_ptr<w_t>(), out.data_ptr<x_t>(), sum_ptr, R, H,
                                eps);
      } else {
        rms_rows<x_t, w_t, float>(x.data_ptr<x_t>(), res, weight.data_ptr<w_t>(), out.data_ptr<float>(), sum_ptr,
                                  R, H, eps);
      }
    });
  });
  return {out, summed};
}

// One (token, head) of rotate-half RoPE, as the twin's `x * cos + rotate_half(x) * sin` rounds:
// each product to the dtype, then their sum.
template <typename scalar_t>
inline void rotate_head(const scalar_t* src, const scalar_t* c, const scalar_t* s, float* out_lo_hi,
                        int64_t half) {
  for (int64_t j = 0; j < half; ++j) {
    const float lo = static_cast<float>(src[j]);
    const float hi = static_cast<float>(src[half + j]);
    const float a = static_cast<float>(round_to<scalar_t>(lo * static_cast<float>(c[j])));
    const float b = static_cast<float>(round_to<scalar_t>(-hi * static_cast<float>(s[j])));
    const float e = static_cast<float>(round_to<scalar_t>(hi * static_cast<float>(c[half + j])));
    const float f = static_cast<float>(round_to<scalar_t>(lo * static_cast<float>(s[half + j])));
    out_lo_hi[j] = static_cast<float>(round_to<scalar_t>(a + b));
    out_lo_hi[half + j] = static_cast<float>(round_to<scalar_t>(e + f));
  }
}

}  // namespace

at::Tensor rms_norm_cpu(const at::Tensor& x, const at::Tensor& weight, double eps) {
  return std::get<0>(rms_norm_impl(x, nullptr, weight, eps, "phide::rms_norm"));
}

std::tuple<at::Tensor, at::Tensor> add_rms_norm_cpu(const at::Tensor& x, const at::Tensor& residual,
                                                    const at::Tensor& weight, double eps) {
  return rms_norm_impl(x, &residual, weight, eps, "phide::add_rms_norm");
}

at::Tensor rope_kv_write_cpu(const at::Tensor& qkv_in, const at::Tensor& cos_in, const at::Tensor& sin_in,
                             at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& slots_in,
                             int64_t n_heads, int64_t n_kv_heads) {
  const char* op = "phide::rope_kv_write";
  check_cpu(qkv_in, op, "qkv");
  TORCH_CHECK(qkv_in.dim() == 3, op, ": qkv must be [B, T, (Hq + 2 Hkv) D]");
  const int64_t B = qkv_in.size(0), T = qkv_in.size(1), D = cos_in.size(-1);
  TORCH_CHECK(D % 2 == 0 && qkv_in.size(2) == (n_heads + 2 * n_kv_heads) * D, op,
              ": qkv width is not (Hq + 2 Hkv) * D for an even D");
  TORCH_CHECK(k_cache.dim() == 4 && v_cache.dim() == 4 && k_cache.size(0) == B && k_cache.size(1) == n_kv_heads &&
                  k_cache.size(3) == D && v_cache.sizes() == k_cache.sizes(),
              op, ": k_cache and v_cache must be [B, Hkv, S, D]");
  TORCH_CHECK(cos_in.scalar_type() == qkv_in.scalar_type() && sin_in.scalar_type() == qkv_in.scalar_type(), op,
              ": cos and sin must have qkv's dtype");
  const at::Tensor qkv = qkv_in.contiguous();
  const at::Tensor cos = cos_in.expand({B, T, D}).contiguous();
  const at::Tensor sin = sin_in.expand({B, T, D}).contiguous();
  const at::Tensor slots = slots_in.to(at::kLong).reshape({B, T}).contiguous();
  const int64_t S = k_cache.size(2);
  const int64_t* slot = slots.data_ptr<int64_t>();
  for (int64_t i = 0; i < B * T; ++i) {
    TORCH_CHECK_INDEX(slot[i] >= 0 && slot[i] < S, op, ": slot ", slot[i], " outside the cache's ", S, " rows");
  }
  at::Tensor q = at::empty({B, n_heads, T, D}, qkv.options());
  const int64_t width = qkv.size(2), half = D / 2, heads = n_heads + 2 * n_kv_heads;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, qkv.scalar_type(), "phide_rope_kv_write", [&] {
    using x_t = scalar_t;
    const x_t* src = qkv.data_ptr<x_t>();
    const x_t* c = cos.data_ptr<x_t>();
    const x_t* s = sin.data_ptr<x_t>();
    x_t* q_out = q.data_ptr<x_t>();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, k_cache.scalar_type(), "phide_rope_kv_cache", [&] {
      using c_t = scalar_t;
      c_t* kc = k_cache.data_ptr<c_t>();
      c_t* vc = v_cache.data_ptr<c_t>();
      const auto ks = k_cache.strides();
      const auto vs = v_cache.strides();
      at::parallel_for(0, B * T * heads, 64, [&](int64_t lo, int64_t hi) {
        std::vector<float> rot(D);
        for (int64_t item = lo; item < hi; ++item) {
          const int64_t tok = item / heads, head = item % heads;
          const int64_t b = tok / T, t = tok % T;
          const x_t* x = src + tok * width + head * D;
          if (head < n_heads + n_kv_heads) {
            rotate_head<x_t>(x, c + tok * D, s + tok * D, rot.data(), half);
            if (head < n_heads) {
              x_t* dst = q_out + ((b * n_heads + head) * T + t) * D;
              for (int64_t j = 0; j < D; ++j) dst[j] = round_to<x_t>(rot[j]);
            } else {
              c_t* dst = kc + b * ks[0] + (head - n_heads) * ks[1] + slot[tok] * ks[2];
              for (int64_t j = 0; j < D; ++j) dst[j * ks[3]] = round_to<c_t>(rot[j]);
            }
          } else {
            c_t* dst = vc + b * vs[0] + (head - n_heads - n_kv_heads) * vs[1] + slot[tok] * vs[2];
            for (int64_t j = 0; j < D; ++j) dst[j * vs[3]] = round_to<c_t>(static_cast<float>(x[j]));
          }
        }
      });
    });
  });
  return q;
}

}  // namespace phide
