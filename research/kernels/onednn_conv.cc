// 2D convolution (forward, input gradient, filter gradient) through oneDNN, as XLA FFI custom
// calls for JAX on CPU (research/kernels/onednn.py builds and registers this file).
//
// Layouts are JAX's: input / output NHWC, kernel HWIO (float32). oneDNN picks the kernel's
// internal (blocked) layout; the kernel and its gradient are reordered to / from HWIO here.
// Primitives are cached per thread (XLA may run two devices' calls on two threads at once), keyed
// by every shape and attribute.

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

namespace {

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

dnnl::stream& Stream() {
  thread_local dnnl::stream stream(Engine());
  return stream;
}

struct Geometry {
  memory::dims src, wei, dst, strides, dilates, pad_l, pad_r;
  std::string Key(char op) const {
    std::string key(1, op);
    for (const auto* v : {&src, &wei, &dst, &strides, &dilates, &pad_l, &pad_r}) {
      for (auto d : *v) key += std::to_string(d) + ",";
      key += ";";
    }
    return key;
  }
};

// One cached primitive with the reorders and the scratch memory its kernel layout needs.
struct Entry {
  dnnl::primitive prim;
  memory::desc src_md, wei_md, dst_md, wei_user_md;
  bool reorder_wei = false;
  dnnl::reorder wei_reorder;
  std::vector<float> wei_scratch;
};

ffi::Error Check(ffi::Span<const int64_t> a, size_t n, const char* name) {
  if (a.size() != n) return ffi::Error::InvalidArgument(std::string(name) + ": expected 2 values");
  return ffi::Error::Success();
}

// NHWC / HWIO / NHWC shapes (JAX) -> oneDNN's logical NCHW / OIHW dims.
Geometry MakeGeometry(ffi::Span<const int64_t> x, ffi::Span<const int64_t> w, ffi::Span<const int64_t> y,
                      ffi::Span<const int64_t> strides, ffi::Span<const int64_t> pad_lo,
                      ffi::Span<const int64_t> pad_hi, ffi::Span<const int64_t> dilation) {
  Geometry g;
  g.src = {x[0], x[3], x[1], x[2]};
  g.wei = {w[3], w[2], w[0], w[1]};
  g.dst = {y[0], y[3], y[1], y[2]};
  g.strides = {strides[0], strides[1]};
  g.dilates = {dilation[0] - 1, dilation[1] - 1};
  g.pad_l = {pad_lo[0], pad_lo[1]};
  g.pad_r = {pad_hi[0], pad_hi[1]};
  return g;
}

dnnl::convolution_forward::primitive_desc ForwardPd(const Geometry& g) {
  memory::desc src(g.src, dt::f32, tag::nhwc), dst(g.dst, dt::f32, tag::nhwc);
  memory::desc wei(g.wei, dt::f32, tag::any);
  return dnnl::convolution_forward::primitive_desc(
      Engine(), dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, src, wei, dst,
      g.strides, g.dilates, g.pad_l, g.pad_r);
}

// At most this many primitives per thread (a training run uses a few dozen shapes).
constexpr size_t kMaxCached = 512;

std::unordered_map<std::string, Entry>& Cache() {
  thread_local std::unordered_map<std::string, Entry> cache;
  return cache;
}

// op 'f': dst = conv(src, wei); 'd': diff_src from (diff_dst, wei); 'w': diff_wei from (src, diff_dst).
Entry& GetEntry(char op, const Geometry& g) {
  auto& cache = Cache();
  std::string key = g.Key(op);
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  if (cache.size() >= kMaxCached) cache.clear();
  Entry e;
  memory::desc wei_user(g.wei, dt::f32, tag::hwio);
  e.wei_user_md = wei_user;
  auto fwd = ForwardPd(g);
  if (op == 'f') {
    e.prim = dnnl::convolution_forward(fwd);
    e.src_md = fwd.src_desc();
    e.wei_md = fwd.weights_desc();
    e.dst_md = fwd.dst_desc();
  } else if (op == 'd') {
    memory::desc dsrc(g.src, dt::f32, tag::nhwc), ddst(g.dst, dt::f32, tag::nhwc);
    memory::desc wei(g.wei, dt::f32, tag::any);
    auto pd = dnnl::convolution_backward_data::primitive_desc(
        Engine(), dnnl::algorithm::convolution_direct, dsrc, wei, ddst, g.strides, g.dilates, g.pad_l,
        g.pad_r, fwd);
    e.prim = dnnl::convolution_backward_data(pd);
    e.src_md = pd.diff_src_desc();
    e.wei_md = pd.weights_desc();
    e.dst_md = pd.diff_dst_desc();
  } else {
    memory::desc src(g.src, dt::f32, tag::nhwc), ddst(g.dst, dt::f32, tag::nhwc);
    memory::desc dwei(g.wei, dt::f32, tag::any);
    auto pd = dnnl::convolution_backward_weights::primitive_desc(
        Engine(), dnnl::algorithm::convolution_direct, src, dwei, ddst, g.strides, g.dilates, g.pad_l,
        g.pad_r, fwd);
    e.prim = dnnl::convolution_backward_weights(pd);
    e.src_md = pd.src_desc();
    e.wei_md = pd.diff_weights_desc();
    e.dst_md = pd.diff_dst_desc();
  }
  e.reorder_wei = e.wei_md != wei_user;
  if (e.reorder_wei) {
    e.wei_scratch.resize(e.wei_md.get_size() / sizeof(float));
    if (op == 'w')
      e.wei_reorder = dnnl::reorder(dnnl::reorder::primitive_desc(Engine(), e.wei_md, Engine(), wei_user));
    else
      e.wei_reorder = dnnl::reorder(dnnl::reorder::primitive_desc(Engine(), wei_user, Engine(), e.wei_md));
  }
  return cache.emplace(key, std::move(e)).first->second;
}

ffi::Error Run(char op, ffi::Span<const int64_t> xs, ffi::Span<const int64_t> ws, ffi::Span<const int64_t> ys,
               float* x, float* w, float* y, ffi::Span<const int64_t> strides,
               ffi::Span<const int64_t> pad_lo, ffi::Span<const int64_t> pad_hi,
               ffi::Span<const int64_t> dilation) {
  if (xs.size() != 4 || ws.size() != 4 || ys.size() != 4)
    return ffi::Error::InvalidArgument("onednn conv: expected 4-d NHWC / HWIO operands");
  for (auto [a, n] : {std::pair{strides, "strides"}, {pad_lo, "pad_lo"}, {pad_hi, "pad_hi"},
                      {dilation, "dilation"}}) {
    if (auto err = Check(a, 2, n); err.failure()) return err;
  }
  try {
    Geometry g = MakeGeometry(xs, ws, ys, strides, pad_lo, pad_hi, dilation);
    Entry& e = GetEntry(op, g);
    auto& s = Stream();
    memory src(e.src_md, Engine(), x), dst(e.dst_md, Engine(), y);
    memory wei_user(e.wei_user_md, Engine(), w);
    memory wei = e.reorder_wei ? memory(e.wei_md, Engine(), e.wei_scratch.data()) : wei_user;
    if (op == 'f') {
      if (e.reorder_wei) e.wei_reorder.execute(s, wei_user, wei);
      e.prim.execute(s, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, wei}, {DNNL_ARG_DST, dst}});
    } else if (op == 'd') {
      if (e.reorder_wei) e.wei_reorder.execute(s, wei_user, wei);
      e.prim.execute(s, {{DNNL_ARG_DIFF_SRC, src}, {DNNL_ARG_WEIGHTS, wei}, {DNNL_ARG_DIFF_DST, dst}});
    } else {
      e.prim.execute(s, {{DNNL_ARG_SRC, src}, {DNNL_ARG_DIFF_WEIGHTS, wei}, {DNNL_ARG_DIFF_DST, dst}});
      if (e.reorder_wei) e.wei_reorder.execute(s, wei, wei_user);
    }
    s.wait();
  } catch (const dnnl::error& err) {
    return ffi::Error::Internal(std::string("oneDNN: ") + err.what());
  }
  return ffi::Error::Success();
}

using F32 = ffi::Buffer<ffi::F32>;
using Ints = ffi::Span<const int64_t>;

ffi::Error ConvFwd(F32 x, F32 w, ffi::ResultBuffer<ffi::F32> y, Ints strides, Ints pad_lo, Ints pad_hi,
                   Ints dilation) {
  return Run('f', x.dimensions(), w.dimensions(), y->dimensions(), x.typed_data(), w.typed_data(),
             y->typed_data(), strides, pad_lo, pad_hi, dilation);
}

ffi::Error ConvBwdData(F32 dy, F32 w, ffi::ResultBuffer<ffi::F32> dx, Ints strides, Ints pad_lo,
                       Ints pad_hi, Ints dilation) {
  return Run('d', dx->dimensions(), w.dimensions(), dy.dimensions(), dx->typed_data(), w.typed_data(),
             dy.typed_data(), strides, pad_lo, pad_hi, dilation);
}

ffi::Error ConvBwdWeights(F32 x, F32 dy, ffi::ResultBuffer<ffi::F32> dw, Ints strides, Ints pad_lo,
                          Ints pad_hi, Ints dilation) {
  return Run('w', x.dimensions(), dw->dimensions(), dy.dimensions(), x.typed_data(), dw->typed_data(),
             dy.typed_data(), strides, pad_lo, pad_hi, dilation);
}

#define CONV_BINDING()                                                                       \
  ffi::Ffi::Bind().Arg<F32>().Arg<F32>().Ret<ffi::Buffer<ffi::F32>>().Attr<Ints>("strides").Attr<Ints>( \
      "pad_lo").Attr<Ints>("pad_hi").Attr<Ints>("dilation")

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(ResearchOnednnConvFwd, ConvFwd, CONV_BINDING());
XLA_FFI_DEFINE_HANDLER_SYMBOL(ResearchOnednnConvBwdData, ConvBwdData, CONV_BINDING());
XLA_FFI_DEFINE_HANDLER_SYMBOL(ResearchOnednnConvBwdWeights, ConvBwdWeights, CONV_BINDING());
