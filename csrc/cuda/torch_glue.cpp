// CUDA implementations of the gptoss ops: input checks, output allocation and the launch of the
// kernels in csrc/cuda/*.cu on the current stream of the inputs' device. Compiled only by a CUDA
// build of torch (the .cu files themselves include no torch header, see kernel_args.h).
//
// Every host function: check shapes, dtypes and devices (errors name the tensor, as on CPU); make
// the inputs the kernels read contiguous where they need it (small tensors such as scale, sinks and
// positions are also converted to float32 / int64 here); switch to the inputs' device; allocate
// outputs and workspaces with torch (the caching allocator, stream-ordered); fill the op's args
// struct and launch on the current stream. Launch errors become a RuntimeError; errors inside a
// kernel (bad positions or expert ids) surface asynchronously like torch's own device asserts.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <c10/util/accumulate.h>

#include <vector>

#include "../check.h"
#include "../mxfp4.h"
#include "kernel_args.h"

namespace gptoss {
namespace {

#define GPTOSS_CHECK_CUDA(x) TORCH_CHECK((x).is_cuda(), #x " must be a CUDA tensor, got ", (x).device())

DType float_dtype(const at::Tensor& t, const char* name) {
  if (t.scalar_type() == at::kFloat) return DType::kFloat32;
  TORCH_CHECK(t.scalar_type() == at::kBFloat16, name, " must be float32 or bfloat16, got ", t.scalar_type());
  return DType::kBFloat16;
}

void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA kernel launch failed: ", cudaGetErrorString(err));
}

cudaStream_t current_stream() { return at::cuda::getCurrentCUDAStream().stream(); }

// The leading dims of x [..., T, H, Dh] as one index with one stride, if their strides allow it.
bool collapse_leading(const at::Tensor& x, int64_t& count, int64_t& stride) {
  count = 1;
  stride = 0;
  for (int64_t d = x.dim() - 4; d >= 0; --d) {  // innermost leading dim first
    if (x.size(d) == 1) continue;
    if (count == 1) {
      stride = x.stride(d);
    } else if (x.stride(d) != stride * count) {
      return false;
    }
    count *= x.size(d);
  }
  return true;
}

void rotate_in_place(const at::Tensor& x, const at::Tensor& table, const at::Tensor& positions) {
  int64_t batch = 0, stride_batch = 0;
  if (x.stride(-1) != 1 || !collapse_leading(x, batch, stride_batch)) {
    at::Tensor tmp = x.contiguous();  // layouts the kernel cannot address: rotate a copy
    rotate_in_place(tmp, table, positions);
    x.copy_(tmp);
    return;
  }
  RopeArgs args{};
  args.x = x.data_ptr();
  args.dtype = float_dtype(x, "rope_ input");
  args.batch = batch;
  args.tokens = x.size(-3);
  args.heads = x.size(-2);
  args.head_dim = x.size(-1);
  args.stride_batch = stride_batch;
  args.stride_token = x.stride(-3);
  args.stride_head = x.stride(-2);
  args.cos_sin = table.data_ptr<float>();
  args.table_rows = table.size(0);
  args.positions = positions.data_ptr<int64_t>();
  check_launch(launch_rope(args, current_stream()), "rope_");
}

}  // namespace

// x [..., dim] as contiguous rows; out in x's dtype.
at::Tensor rms_norm_cuda(const at::Tensor& x, const at::Tensor& scale, double eps) {
  TORCH_CHECK(x.dim() >= 1, "x must have at least one dim");
  GPTOSS_CHECK_DIM(scale, 1);
  TORCH_CHECK(scale.size(0) == x.size(-1), "scale has ", scale.size(0), " entries but x rows have ", x.size(-1));
  GPTOSS_CHECK_CUDA(x);
  GPTOSS_CHECK_SAME_DEVICE(x, scale);
  const DType dtype = float_dtype(x, "x");
  const c10::cuda::OptionalCUDAGuard guard(x.device());
  const at::Tensor xc = x.contiguous();
  const at::Tensor sc = scale.to(at::kFloat).contiguous();
  at::Tensor out = at::empty_like(xc);
  RmsNormArgs args{};
  args.x = xc.data_ptr();
  args.scale = sc.data_ptr<float>();
  args.out = out.data_ptr();
  args.dtype = dtype;
  args.dim = x.size(-1);
  args.rows = args.dim ? xc.numel() / args.dim : 0;
  args.eps = static_cast<float>(eps);
  check_launch(launch_rms_norm(args, current_stream()), "rms_norm");
  return out;
}

// q [..., T, H, Dh] and k [..., T, K, Dh] rotated in place, each in its own launch; strided views
// (the model's q/k are views of the projections' output) are rotated where they are.
void rope_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& cos_sin, const at::Tensor& positions) {
  TORCH_CHECK(q.dim() >= 3 && k.dim() >= 3, "q and k must be [..., T, heads, head_dim], got ", q.sizes(), " and ",
              k.sizes());
  GPTOSS_CHECK_DIM(cos_sin, 2);
  GPTOSS_CHECK_DIM(positions, 1);
  const int64_t T = positions.size(0), Dh = cos_sin.size(1);
  TORCH_CHECK(q.size(-3) == T && k.size(-3) == T, "q and k must have ", T, " tokens (positions), got ", q.sizes(),
              " and ", k.sizes());
  TORCH_CHECK(q.size(-1) == Dh && k.size(-1) == Dh, "q and k must have head_dim ", Dh, " (cos_sin rows), got ",
              q.sizes(), " and ", k.sizes());
  TORCH_CHECK(Dh % 2 == 0, "head_dim must be even, got ", Dh);
  TORCH_CHECK(!positions.is_floating_point(), "positions must be integers, got ", positions.scalar_type());
  GPTOSS_CHECK_CUDA(q);
  GPTOSS_CHECK_SAME_DEVICE(q, k);
  GPTOSS_CHECK_SAME_DEVICE(q, cos_sin);
  GPTOSS_CHECK_SAME_DEVICE(q, positions);
  float_dtype(q, "q");
  float_dtype(k, "k");
  const c10::cuda::OptionalCUDAGuard guard(q.device());
  const at::Tensor table = cos_sin.to(at::kFloat).contiguous();
  const at::Tensor pos = positions.to(at::kLong).contiguous();
  rotate_in_place(q, table, pos);
  rotate_in_place(k, table, pos);
}

// Launches the attention of q [B, T, H, Dh] against k, v [B, K, S, Dh] (shapes checked by the caller),
// writing out [B, T, H, Dh] float32 (contiguous, possibly rows of a larger output).
void attend_into(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& sinks,
                 double sm_scale, int64_t sliding_window, const at::Tensor& q_pos, const at::Tensor& k_pos,
                 at::Tensor& out) {
  const int64_t B = q.size(0), T = q.size(1), H = q.size(2), Dh = q.size(3), K = k.size(1), S = k.size(2);
  // Any strides are fine except along head_dim: the full-attention cache passes k[:, :, :S] of a
  // longer buffer, which the kernels read in place.
  const at::Tensor qc = q.stride(3) == 1 ? q : q.contiguous();
  const at::Tensor kc = k.stride(3) == 1 ? k : k.contiguous();
  const at::Tensor vc = v.stride(3) == 1 ? v : v.contiguous();
  const at::Tensor sk = sinks.to(at::kFloat).contiguous();
  const at::Tensor qp = q_pos.to(at::kLong).contiguous(), kp = k_pos.to(at::kLong).contiguous();
  SdpaSinksArgs args{};
  args.q = qc.data_ptr();
  args.k = kc.data_ptr();
  args.v = vc.data_ptr();
  args.q_dtype = float_dtype(q, "q");
  args.kv_dtype = float_dtype(k, "k");
  args.sinks = sk.data_ptr<float>();
  args.q_pos = qp.data_ptr<int64_t>();
  args.k_pos = kp.data_ptr<int64_t>();
  args.out = out.data_ptr<float>();
  args.batch = B;
  args.tokens = T;
  args.heads = H;
  args.kv_heads = K;
  args.keys = S;
  args.head_dim = Dh;
  args.q_stride_batch = qc.stride(0);
  args.q_stride_token = qc.stride(1);
  args.q_stride_head = qc.stride(2);
  args.k_stride_batch = kc.stride(0);
  args.k_stride_head = kc.stride(1);
  args.k_stride_key = kc.stride(2);
  args.v_stride_batch = vc.stride(0);
  args.v_stride_head = vc.stride(1);
  args.v_stride_key = vc.stride(2);
  args.sm_scale = static_cast<float>(sm_scale);
  args.sliding_window = sliding_window;
  // Decode: how many key slices per row (enough blocks for the device); their partial results go to a
  // float32 workspace merged by a second kernel.
  sdpa_sinks_plan(args, at::cuda::getCurrentDeviceProperties()->multiProcessorCount);
  at::Tensor workspace;
  if (const size_t floats = sdpa_sinks_workspace_floats(args)) {
    workspace = at::empty({static_cast<int64_t>(floats)}, out.options());
    args.workspace = workspace.data_ptr<float>();
  }
  check_launch(launch_sdpa_sinks(args, current_stream()), "sdpa_sinks");
}

at::Tensor sdpa_sinks_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& sinks,
                           double sm_scale, int64_t sliding_window, const at::Tensor& q_pos,
                           const at::Tensor& k_pos) {
  GPTOSS_CHECK_DIM(q, 4);
  GPTOSS_CHECK_DIM(k, 4);
  TORCH_CHECK(v.sizes() == k.sizes(), "v must have k's shape ", k.sizes(), ", got ", v.sizes());
  const int64_t B = q.size(0), T = q.size(1), H = q.size(2), Dh = q.size(3), K = k.size(1), S = k.size(2);
  TORCH_CHECK(k.size(0) == B && k.size(3) == Dh, "k must be [", B, ", K, S, ", Dh, "] for q ", q.sizes(), ", got ",
              k.sizes());
  TORCH_CHECK(K > 0 && H % K == 0, "the ", H, " query heads must be a multiple of the ", K, " kv heads");
  TORCH_CHECK(sinks.numel() == H, "sinks must have ", H, " entries (query heads), got ", sinks.numel());
  TORCH_CHECK(q_pos.dim() == 1 && q_pos.size(0) == T, "q_pos must be [", T, "], got ", q_pos.sizes());
  TORCH_CHECK(k_pos.dim() == 1 && k_pos.size(0) == S, "k_pos must be [", S, "], got ", k_pos.sizes());
  TORCH_CHECK(k.scalar_type() == v.scalar_type(), "k and v must have one dtype, got ", k.scalar_type(), " and ",
              v.scalar_type());
  GPTOSS_CHECK_CUDA(q);
  GPTOSS_CHECK_SAME_DEVICE(q, k);
  GPTOSS_CHECK_SAME_DEVICE(q, v);
  GPTOSS_CHECK_SAME_DEVICE(q, sinks);
  GPTOSS_CHECK_SAME_DEVICE(q, q_pos);
  GPTOSS_CHECK_SAME_DEVICE(q, k_pos);
  const c10::cuda::OptionalCUDAGuard guard(q.device());
  at::Tensor out = at::empty({B, T, H, Dh}, q.options().dtype(at::kFloat));
  attend_into(q, k, v, sinks, sm_scale, sliding_window, q_pos, k_pos, out);
  return out;
}

// sdpa_sinks for several sequences (see csrc/registration.cpp): one launch per sequence, each writing
// its rows of the shared output, queued on one stream without host synchronisation. (A single launch
// over all sequences, as the CPU kernel does, is not written yet.)
at::Tensor sdpa_sinks_varlen_cuda(const at::Tensor& q, at::TensorList k, at::TensorList v, const at::Tensor& sinks,
                                  double sm_scale, int64_t sliding_window, const at::Tensor& q_pos,
                                  at::TensorList k_pos, at::IntArrayRef q_lengths) {
  GPTOSS_CHECK_DIM(q, 3);
  const int64_t T = q.size(0), H = q.size(1), Dh = q.size(2), n = static_cast<int64_t>(q_lengths.size());
  TORCH_CHECK(static_cast<int64_t>(k.size()) == n && static_cast<int64_t>(v.size()) == n &&
                  static_cast<int64_t>(k_pos.size()) == n,
              "k, v and k_pos must have one entry per sequence (", n, " q_lengths), got ", k.size(), ", ", v.size(),
              " and ", k_pos.size());
  int64_t total = 0;
  for (const int64_t length : q_lengths) {
    TORCH_CHECK(length >= 0, "q_lengths has a negative entry: ", length);
    total += length;
  }
  TORCH_CHECK(total == T, "q_lengths sum to ", total, " but q has ", T, " tokens");
  TORCH_CHECK(q_pos.dim() == 1 && q_pos.size(0) == T, "q_pos must be [", T, "], got ", q_pos.sizes());
  TORCH_CHECK(sinks.numel() == H, "sinks must have ", H, " entries (query heads), got ", sinks.numel());
  GPTOSS_CHECK_CUDA(q);
  GPTOSS_CHECK_SAME_DEVICE(q, sinks);
  GPTOSS_CHECK_SAME_DEVICE(q, q_pos);
  const c10::cuda::OptionalCUDAGuard guard(q.device());
  at::Tensor out = at::empty({T, H, Dh}, q.options().dtype(at::kFloat));
  int64_t start = 0;
  for (int64_t i = 0; i < n; ++i) {
    const at::Tensor &ki = k[i], &vi = v[i], &pi = k_pos[i];
    TORCH_CHECK(ki.dim() == 3 && ki.size(2) == Dh, "k[", i, "] must be [K, S, ", Dh, "], got ", ki.sizes());
    TORCH_CHECK(ki.size(0) > 0 && H % ki.size(0) == 0, "the ", H, " query heads must be a multiple of the ",
                ki.size(0), " kv heads of k[", i, "]");
    TORCH_CHECK(vi.sizes() == ki.sizes(), "v[", i, "] must have k[", i, "]'s shape ", ki.sizes(), ", got ",
                vi.sizes());
    TORCH_CHECK(ki.scalar_type() == vi.scalar_type(), "k[", i, "] and v[", i, "] must have one dtype");
    TORCH_CHECK(pi.dim() == 1 && pi.size(0) == ki.size(1), "k_pos[", i, "] must be [", ki.size(1), "], got ",
                pi.sizes());
    GPTOSS_CHECK_SAME_DEVICE(q, ki);
    GPTOSS_CHECK_SAME_DEVICE(q, vi);
    GPTOSS_CHECK_SAME_DEVICE(q, pi);
    const int64_t length = q_lengths[i];
    if (length > 0) {
      at::Tensor rows = out.narrow(0, start, length).unsqueeze(0);  // [1, length, H, Dh], contiguous
      attend_into(q.narrow(0, start, length).unsqueeze(0), ki.unsqueeze(0), vi.unsqueeze(0), sinks, sm_scale,
                  sliding_window, q_pos.narrow(0, start, length), pi, rows);
    }
    start += length;
  }
  return out;
}

at::Tensor mxfp4_dequantize_cuda(const at::Tensor& blocks, const at::Tensor& scales, at::ScalarType dtype) {
  const std::vector<int64_t> out_shape = mxfp4_dequantize_out_shape(blocks, scales, dtype);
  GPTOSS_CHECK_CUDA(blocks);
  const c10::cuda::OptionalCUDAGuard guard(blocks.device());
  const at::Tensor bc = blocks.contiguous(), sc = scales.contiguous();
  at::Tensor out = at::empty(out_shape, blocks.options().dtype(dtype));
  Mxfp4DequantizeArgs args{};
  args.blocks = bc.data_ptr<uint8_t>();
  args.scales = sc.data_ptr<uint8_t>();
  args.out = out.data_ptr();
  args.dtype = dtype == at::kFloat ? DType::kFloat32 : DType::kBFloat16;
  args.n_blocks = sc.numel();
  check_launch(launch_mxfp4_dequantize(args, current_stream()), "mxfp4_dequantize");
  return out;
}

// Expert weights stay packed (uint8 blocks and scales); expert ids go to int32 and routing weights to
// float32 (both [N, A], small). The byte workspace holds the routing tables and the per-pair
// activations and outputs of up to 1024 tokens (the launcher processes longer inputs in chunks).
at::Tensor moe_mxfp4_cuda(const at::Tensor& x, const at::Tensor& expert_ids, const at::Tensor& expert_weights,
                          const at::Tensor& w1_blocks, const at::Tensor& w1_scales, const at::Tensor& b1,
                          const at::Tensor& w2_blocks, const at::Tensor& w2_scales, const at::Tensor& b2,
                          double swiglu_alpha, double swiglu_limit) {
  GPTOSS_CHECK_DIM(x, 2);
  GPTOSS_CHECK_DIM(expert_ids, 2);
  GPTOSS_CHECK_DIM(w1_blocks, 4);
  GPTOSS_CHECK_DIM(w2_blocks, 4);
  GPTOSS_CHECK_DTYPE(w1_blocks, at::kByte);
  GPTOSS_CHECK_DTYPE(w1_scales, at::kByte);
  GPTOSS_CHECK_DTYPE(w2_blocks, at::kByte);
  GPTOSS_CHECK_DTYPE(w2_scales, at::kByte);
  const int64_t N = x.size(0), D = x.size(1), A = expert_ids.size(1), E = w1_blocks.size(0);
  const int64_t I = w1_blocks.size(1) / 2;
  TORCH_CHECK(expert_ids.size(0) == N, "expert_ids must have ", N, " rows (tokens), got ", expert_ids.sizes());
  TORCH_CHECK(!expert_ids.is_floating_point(), "expert_ids must be integers, got ", expert_ids.scalar_type());
  TORCH_CHECK(expert_weights.sizes() == expert_ids.sizes(), "expert_weights must have shape ", expert_ids.sizes(),
              ", got ", expert_weights.sizes());
  TORCH_CHECK(w1_blocks.size(1) % 2 == 0 && w1_blocks.size(2) * kMxfp4Block == D &&
                  w1_blocks.size(3) == kMxfp4BlockBytes,
              "w1_blocks must be [E, 2I, ", D / kMxfp4Block, ", 16] for hidden size ", D, ", got ", w1_blocks.sizes());
  TORCH_CHECK(w1_scales.sizes() == w1_blocks.sizes().slice(0, 3), "w1_scales must have shape ",
              w1_blocks.sizes().slice(0, 3), ", got ", w1_scales.sizes());
  TORCH_CHECK(b1.dim() == 2 && b1.size(0) == E && b1.size(1) == 2 * I, "b1 must be [", E, ", ", 2 * I, "], got ",
              b1.sizes());
  TORCH_CHECK(w2_blocks.size(0) == E && w2_blocks.size(1) == D && w2_blocks.size(2) * kMxfp4Block == I &&
                  w2_blocks.size(3) == kMxfp4BlockBytes,
              "w2_blocks must be [", E, ", ", D, ", ", I / kMxfp4Block, ", 16], got ", w2_blocks.sizes());
  TORCH_CHECK(w2_scales.sizes() == w2_blocks.sizes().slice(0, 3), "w2_scales must have shape ",
              w2_blocks.sizes().slice(0, 3), ", got ", w2_scales.sizes());
  TORCH_CHECK(b2.dim() == 2 && b2.size(0) == E && b2.size(1) == D, "b2 must be [", E, ", ", D, "], got ",
              b2.sizes());
  GPTOSS_CHECK_CUDA(x);
  for (const at::Tensor* t : {&expert_ids, &expert_weights, &w1_blocks, &w1_scales, &b1, &w2_blocks, &w2_scales, &b2})
    TORCH_CHECK(t->device() == x.device(), "all moe_mxfp4 inputs must be on x's device ", x.device(), ", got ",
                t->device());
  const c10::cuda::OptionalCUDAGuard guard(x.device());
  const at::Tensor xc = x.contiguous();
  const at::Tensor ids = expert_ids.to(at::kInt).contiguous();
  const at::Tensor weights = expert_weights.to(at::kFloat).contiguous();
  const at::Tensor w1b = w1_blocks.contiguous(), w1s = w1_scales.contiguous(), w2b = w2_blocks.contiguous(),
                   w2s = w2_scales.contiguous();
  const at::Tensor b1f = b1.to(at::kFloat).contiguous(), b2f = b2.to(at::kFloat).contiguous();
  at::Tensor out = at::empty({N, D}, x.options().dtype(at::kFloat));
  MoeMxfp4Args args{};
  args.x = xc.data_ptr();
  args.dtype = float_dtype(x, "x");
  args.expert_ids = ids.data_ptr<int32_t>();
  args.expert_weights = weights.data_ptr<float>();
  args.w1_blocks = w1b.data_ptr<uint8_t>();
  args.w1_scales = w1s.data_ptr<uint8_t>();
  args.b1 = b1f.data_ptr<float>();
  args.w2_blocks = w2b.data_ptr<uint8_t>();
  args.w2_scales = w2s.data_ptr<uint8_t>();
  args.b2 = b2f.data_ptr<float>();
  args.out = out.data_ptr<float>();
  args.tokens = N;
  args.experts_per_token = A;
  args.experts = E;
  args.hidden = D;
  args.intermediate = I;
  args.swiglu_alpha = static_cast<float>(swiglu_alpha);
  args.swiglu_limit = static_cast<float>(swiglu_limit);
  const at::Tensor workspace =
      at::empty({static_cast<int64_t>(moe_mxfp4_workspace_bytes(args))}, x.options().dtype(at::kByte));
  args.workspace = workspace.data_ptr();
  check_launch(launch_moe_mxfp4(args, current_stream()), "moe_mxfp4");
  return out;
}

// x [..., in] is cast to W's dtype first (as the reference does) and flattened to rows.
at::Tensor linear_cuda(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  GPTOSS_CHECK_DIM(weight, 2);
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) == weight.size(1), "x must be [..., ", weight.size(1), "] for weight ",
              weight.sizes(), ", got ", x.sizes());
  const int64_t in = weight.size(1), out_features = weight.size(0);
  GPTOSS_CHECK_CUDA(x);
  GPTOSS_CHECK_SAME_DEVICE(x, weight);
  const DType dtype = float_dtype(weight, "weight");
  at::Tensor b;
  if (bias.has_value()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == out_features, "bias must be [", out_features, "], got ",
                bias->sizes());
    GPTOSS_CHECK_SAME_DEVICE(x, (*bias));
    b = bias->to(at::kFloat).contiguous();
  }
  const c10::cuda::OptionalCUDAGuard guard(x.device());
  const int64_t rows = c10::multiply_integers(x.sizes().slice(0, x.dim() - 1));
  const at::Tensor xc = x.to(weight.scalar_type()).reshape({rows, in}).contiguous();  // x in W's dtype
  const at::Tensor wc = weight.contiguous();
  at::Tensor out = at::empty({rows, out_features}, x.options().dtype(at::kFloat));
  LinearArgs args{};
  args.x = xc.data_ptr();
  args.weight = wc.data_ptr();
  args.dtype = dtype;
  args.bias = b.defined() ? b.data_ptr<float>() : nullptr;
  args.out = out.data_ptr<float>();
  args.rows = rows;
  args.in_features = in;
  args.out_features = out_features;
  check_launch(launch_linear(args, current_stream()), "linear");
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end() - 1);
  shape.push_back(out_features);
  return out.view(shape);
}

at::Tensor linear_q8_cuda(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scales,
                          const std::optional<at::Tensor>& bias) {
  const at::Tensor b = check_linear_q8(x, qweight, scales, bias);
  GPTOSS_CHECK_CUDA(x);
  const c10::cuda::OptionalCUDAGuard guard(x.device());
  const int64_t in = qweight.size(1), out_features = qweight.size(0);
  const int64_t rows = c10::multiply_integers(x.sizes().slice(0, x.dim() - 1));
  const at::Tensor xc = x.to(at::kFloat).reshape({rows, in}).contiguous();
  const at::Tensor qc = qweight.contiguous(), dc = scales.contiguous();
  at::Tensor out = at::empty({rows, out_features}, x.options().dtype(at::kFloat));
  LinearQ8Args args{};
  args.x = xc.data_ptr<float>();
  args.qweight = qc.data_ptr<int8_t>();
  args.scales = dc.data_ptr();
  args.bias = b.defined() ? b.data_ptr<float>() : nullptr;
  args.out = out.data_ptr<float>();
  args.rows = rows;
  args.in_features = in;
  args.out_features = out_features;
  check_launch(launch_linear_q8(args, current_stream()), "linear_q8");
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end() - 1);
  shape.push_back(out_features);
  return out.view(shape);
}

}  // namespace gptoss

TORCH_LIBRARY_IMPL(gptoss, CUDA, m) {
  m.impl("linear", &gptoss::linear_cuda);
  m.impl("linear_q8", &gptoss::linear_q8_cuda);
  m.impl("rms_norm", &gptoss::rms_norm_cuda);
  m.impl("rope_", &gptoss::rope_cuda);
  m.impl("sdpa_sinks", &gptoss::sdpa_sinks_cuda);
  m.impl("sdpa_sinks_varlen", &gptoss::sdpa_sinks_varlen_cuda);
  m.impl("mxfp4_dequantize", &gptoss::mxfp4_dequantize_cuda);
  m.impl("moe_mxfp4", &gptoss::moe_mxfp4_cuda);
}
