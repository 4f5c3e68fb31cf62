// rlgauge's fused CPU GAE / TD(lambda) kernels: the torch binding of gae_kernel.h.
//
// Shapes, dtypes, devices and the time dimension are checked here, as a second line of defence:
// harness/estimators.py makes every one of these checks first, in Python, with the same
// messages, so bad input never depends on a C++ exception crossing the extension boundary (with
// torch 2.11+cu130 and another compiler one did not: a TORCH_CHECK became a segfault), and
// harness/gae_native.py self-tests each build in a child process before using it. The kernels
// see contiguous [O, T, I] blocks (see gae_kernel.h) and run over O in parallel
// (at::parallel_for, which follows torch.get_num_threads()).
//
// Outputs of 64 KiB and more come from a small pool of reusable blocks (the idea of torch's CUDA
// caching allocator): a block returns to the pool when the last tensor using it dies, and the
// next call of the same size takes it back. Fresh multi-megabyte allocations are page-faulted
// in on every call otherwise (glibc hands them back to the OS on free): measured here, two fresh
// 2 MiB outputs cost ~1 ms against a 0.46 ms kernel at 256x2048. The pool keeps at most
// 256 MiB of free blocks; pooled tensors are ordinary except that their storage cannot grow
// (resize_ to a larger size raises).
//
// A pooled output also starts at an offset within its block (blocks carry one spare page) that
// keeps it at least 512 bytes, modulo 4 KiB, from every input and the other output. A load whose
// address matches an in-flight store's in the low 12 bits waits on it as if it depended on it
// ("4K aliasing"); the kernels store out[t] and then load the inputs at t-1, so an input lying
// 64-128 bytes after the output modulo 4 KiB made the same call up to a third slower, depending
// only on where the allocator happened to put the buffers: measured on this VM, TD(lambda) at
// 64x1000, 17.5 us at most offsets against 20.3-23.6 us within -64..+128 bytes, which was the
// per-process offset that kept the 64x1000 case out of the regression gate.

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <initializer_list>
#include <mutex>
#include <new>
#include <tuple>
#include <unordered_map>

#include "gae_kernel.h"

namespace {

using rlgauge::Inputs;

// Free output blocks by size, 64-byte aligned; see the top of the file.
class OutputPool {
 public:
  static constexpr size_t kMinBytes = size_t{1} << 16;
  static constexpr size_t kMaxFreeBytes = size_t{256} << 20;

  void* take(size_t bytes) {
    {
      std::lock_guard<std::mutex> hold(mutex_);
      auto it = free_.find(bytes);
      if (it != free_.end()) {
        void* block = it->second;
        free_.erase(it);
        free_bytes_ -= bytes;
        return block;
      }
    }
    void* block = nullptr;
    if (posix_memalign(&block, 64, bytes) != 0) throw std::bad_alloc();
    return block;
  }

  void give_back(void* block, size_t bytes) {
    {
      std::lock_guard<std::mutex> hold(mutex_);
      if (free_bytes_ + bytes <= kMaxFreeBytes) {
        free_.emplace(bytes, block);
        free_bytes_ += bytes;
        return;
      }
    }
    std::free(block);
  }

 private:
  std::mutex mutex_;
  std::unordered_multimap<size_t, void*> free_;
  size_t free_bytes_ = 0;
};

OutputPool& pool() {
  static OutputPool* instance = new OutputPool();  // never destroyed: tensors may outlive exit
  return *instance;
}

constexpr size_t kPage = 4096;
constexpr size_t kFarEnough = 512;  // bytes, modulo kPage, between an output and each input

// The 64-byte-aligned offset into a block at ``base`` (kPage spare bytes) whose distance modulo
// kPage to every pointer in ``avoid`` is largest, the first one at least kFarEnough away.
size_t unaliased_offset(uintptr_t base, std::initializer_list<const void*> avoid) {
  size_t best = 0, best_gap = 0;
  for (size_t off = 0; off < kPage; off += 64) {
    size_t gap = kPage;
    for (const void* p : avoid) {
      if (p == nullptr) continue;
      const size_t d = (base + off - reinterpret_cast<uintptr_t>(p)) % kPage;
      gap = std::min({gap, d, kPage - d});
    }
    if (gap > best_gap) {
      best = off;
      best_gap = gap;
    }
    if (best_gap >= kFarEnough) break;
  }
  return best;
}

const void* data_of(const at::Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; }

// An uninitialised contiguous tensor shaped and typed like ``like``, pooled if big enough, and
// then placed clear of the buffers in ``avoid`` modulo 4 KiB (see the top of the file).
at::Tensor new_output(const at::Tensor& like, std::initializer_list<const void*> avoid) {
  const size_t bytes = static_cast<size_t>(like.numel()) * like.element_size();
  if (bytes < OutputPool::kMinBytes) return at::empty_like(like, at::MemoryFormat::Contiguous);
  const size_t size = bytes + kPage;
  void* block = pool().take(size);
  const size_t off = unaliased_offset(reinterpret_cast<uintptr_t>(block), avoid);
  return at::from_blob(
      static_cast<char*>(block) + off, like.sizes(),
      [block, size](void*) { pool().give_back(block, size); }, like.options());
}

template <typename scalar_t, bool GAE, bool SG, bool SL>
void run(const Inputs<scalar_t>& in, int64_t O, int64_t I) {
  // at least ~32k elements per task
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 15) / std::max<int64_t>(1, in.T * I));
  at::parallel_for(0, O, grain, [&](int64_t o0, int64_t o1) {
    if (I == 1) {
      rlgauge::run_rows<scalar_t, GAE, SG, SL>(in, o0, o1);
    } else {
      rlgauge::run_inner<scalar_t, GAE, SG, SL>(in, I, o0, o1);
    }
  });
}

template <typename scalar_t, bool GAE>
void dispatch_coefficients(const Inputs<scalar_t>& in, int64_t O, int64_t I) {
  const bool sg = in.gamma != nullptr;
  const bool sl = in.lmbda != nullptr;
  if (sg && sl) {
    run<scalar_t, GAE, true, true>(in, O, I);
  } else if (sg) {
    run<scalar_t, GAE, true, false>(in, O, I);
  } else if (sl) {
    run<scalar_t, GAE, false, true>(in, O, I);
  } else {
    run<scalar_t, GAE, false, false>(in, O, I);
  }
}

// The [O, T, I] split of ``shape`` around ``time_dim`` (already normalised to >= 0).
struct Split {
  int64_t O, T, I;
};

Split split(at::IntArrayRef shape, int64_t time_dim) {
  Split s{1, shape[time_dim], 1};
  for (int64_t d = 0; d < time_dim; ++d) s.O *= shape[d];
  for (int64_t d = time_dim + 1; d < static_cast<int64_t>(shape.size()); ++d) s.I *= shape[d];
  return s;
}

int64_t normalise_time_dim(const at::Tensor& like, int64_t time_dim) {
  const int64_t nd = like.dim();
  TORCH_CHECK(nd >= 1, "rlgauge gae: inputs must have a time dimension; got a 0-d tensor");
  TORCH_CHECK(-nd <= time_dim && time_dim < nd, "rlgauge gae: time_dim=", time_dim,
              " is out of range for shape ", like.sizes());
  return time_dim < 0 ? time_dim + nd : time_dim;
}

void check_inputs(std::initializer_list<at::Tensor> values,
                  std::initializer_list<at::Tensor> flags) {
  const auto& ref = *values.begin();
  TORCH_CHECK(ref.device().is_cpu(), "rlgauge gae (native): CPU tensors only, got ",
              ref.device());
  TORCH_CHECK(ref.scalar_type() == at::kFloat || ref.scalar_type() == at::kDouble,
              "rlgauge gae (native): float32 or float64 values only, got ", ref.scalar_type());
  for (const auto& x : values) {
    TORCH_CHECK(x.sizes() == ref.sizes(),
                "All input tensors (value, reward and done states) must share a unique shape; "
                "got ", ref.sizes(), " and ", x.sizes());
    TORCH_CHECK(x.scalar_type() == ref.scalar_type() && x.device() == ref.device(),
                "rlgauge gae (native): values and rewards must share one dtype and device");
  }
  for (const auto& f : flags) {
    TORCH_CHECK(f.sizes() == ref.sizes(),
                "All input tensors (value, reward and done states) must share a unique shape; "
                "got ", ref.sizes(), " and ", f.sizes());
    TORCH_CHECK(f.scalar_type() == at::kBool, "rlgauge gae (native): done/terminated must be "
                "bool, got ", f.scalar_type());
    // the kernel reads the flags on the CPU: a CUDA flag tensor would be a device pointer
    TORCH_CHECK(f.device() == ref.device(), "rlgauge gae (native): done/terminated must be on "
                "the values' device (", ref.device(), "), got ", f.device());
  }
}

// A per-step coefficient as a contiguous tensor of the values' shape and dtype (or undefined).
at::Tensor coefficient(const c10::optional<at::Tensor>& c, const at::Tensor& like) {
  if (!c.has_value() || !c->defined()) return at::Tensor();
  TORCH_CHECK(c->device() == like.device(), "rlgauge gae (native): per-step gamma/lambda must "
              "be on the values' device (", like.device(), "), got ", c->device());
  return c->to(like.scalar_type()).expand(like.sizes()).contiguous();
}

template <typename scalar_t>
Inputs<scalar_t> make_inputs(const at::Tensor& value, const at::Tensor& next_value,
                             const at::Tensor& reward, const at::Tensor& done,
                             const at::Tensor& terminated, const at::Tensor& gamma,
                             const at::Tensor& lmbda, double gamma_scalar, double lmbda_scalar,
                             at::Tensor& out0, at::Tensor* out1, int64_t T) {
  Inputs<scalar_t> in;
  in.value = value.defined() ? value.data_ptr<scalar_t>() : nullptr;
  in.next_value = next_value.data_ptr<scalar_t>();
  in.reward = reward.data_ptr<scalar_t>();
  in.done = done.data_ptr<bool>();
  in.terminated = terminated.data_ptr<bool>();
  in.gamma = gamma.defined() ? gamma.data_ptr<scalar_t>() : nullptr;
  in.lmbda = lmbda.defined() ? lmbda.data_ptr<scalar_t>() : nullptr;
  in.gamma_scalar = static_cast<scalar_t>(gamma_scalar);
  in.lmbda_scalar = static_cast<scalar_t>(lmbda_scalar);
  in.out0 = out0.data_ptr<scalar_t>();
  in.out1 = out1 != nullptr ? out1->data_ptr<scalar_t>() : nullptr;
  in.T = T;
  return in;
}

}  // namespace

// GAE: (advantage, value_target), both shaped like ``state_value``.
std::tuple<at::Tensor, at::Tensor> gae(double gamma, double lmbda,
                                       c10::optional<at::Tensor> gamma_t,
                                       c10::optional<at::Tensor> lmbda_t, at::Tensor state_value,
                                       at::Tensor next_state_value, at::Tensor reward,
                                       at::Tensor done, at::Tensor terminated, int64_t time_dim) {
  check_inputs({state_value, next_state_value, reward}, {done, terminated});
  const int64_t td = normalise_time_dim(state_value, time_dim);
  const Split s = split(state_value.sizes(), td);
  const auto v = state_value.contiguous();
  const auto nv = next_state_value.contiguous();
  const auto r = reward.contiguous();
  const auto d = done.contiguous();
  const auto term = terminated.contiguous();
  const auto g = coefficient(gamma_t, v);
  const auto l = coefficient(lmbda_t, v);
  auto advantage = new_output(v, {data_of(v), data_of(nv), data_of(r), data_of(d),
                                  data_of(term), data_of(g), data_of(l)});
  auto target = new_output(v, {data_of(v), data_of(nv), data_of(r), data_of(d), data_of(term),
                               data_of(g), data_of(l), data_of(advantage)});
  if (v.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES(v.scalar_type(), "rlgauge_gae", [&] {
      const auto in = make_inputs<scalar_t>(v, nv, r, d, term, g, l, gamma, lmbda, advantage,
                                            &target, s.T);
      dispatch_coefficients<scalar_t, true>(in, s.O, s.I);
    });
  }
  return std::make_tuple(advantage, target);
}

// TD(lambda) return (torchrl's rolling_gamma=True), shaped like ``next_state_value``.
at::Tensor td_lambda(double gamma, double lmbda, c10::optional<at::Tensor> gamma_t,
                     c10::optional<at::Tensor> lmbda_t, at::Tensor next_state_value,
                     at::Tensor reward, at::Tensor done, at::Tensor terminated,
                     int64_t time_dim) {
  check_inputs({next_state_value, reward}, {done, terminated});
  const int64_t td = normalise_time_dim(next_state_value, time_dim);
  const Split s = split(next_state_value.sizes(), td);
  const auto nv = next_state_value.contiguous();
  const auto r = reward.contiguous();
  const auto d = done.contiguous();
  const auto term = terminated.contiguous();
  const auto g = coefficient(gamma_t, nv);
  const auto l = coefficient(lmbda_t, nv);
  auto out = new_output(nv, {data_of(nv), data_of(r), data_of(d), data_of(term), data_of(g),
                             data_of(l)});
  if (nv.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES(nv.scalar_type(), "rlgauge_td_lambda", [&] {
      const auto in = make_inputs<scalar_t>(at::Tensor(), nv, r, d, term, g, l, gamma, lmbda,
                                            out, nullptr, s.T);
      dispatch_coefficients<scalar_t, false>(in, s.O, s.I);
    });
  }
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "rlgauge's fused CPU GAE / TD(lambda) kernels (one pass over the data)";
  m.def("gae", &gae, "GAE: (advantage, value_target)", py::arg("gamma"), py::arg("lmbda"),
        py::arg("gamma_t"), py::arg("lmbda_t"), py::arg("state_value"),
        py::arg("next_state_value"), py::arg("reward"), py::arg("done"), py::arg("terminated"),
        py::arg("time_dim"));
  m.def("td_lambda", &td_lambda, "TD(lambda) return", py::arg("gamma"), py::arg("lmbda"),
        py::arg("gamma_t"), py::arg("lmbda_t"), py::arg("next_state_value"), py::arg("reward"),
        py::arg("done"), py::arg("terminated"), py::arg("time_dim"));
}
