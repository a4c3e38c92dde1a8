"""MrSw's masked max over regions as one C++ loop: the compiled kernel of MrSw, TGDT's MrSw term and ALADIN's
MrSw teacher (``TrainConfig.compile_scores``; :mod:`itr_lib.scorekernel`).

The eager block fills the dropped regions of its (words, images x regions) score matrix with -inf in place and then
takes ``max`` over the 49 regions of every (word, image) pair: two passes over the largest tensor of the step, and
a max-with-index reduction over a short inner axis that PyTorch runs element by element (~100 ms of MrSw's ~0.7 s
training step on UCM, one thread). :func:`masked_max` reads the matrix once and returns the same maxima (float32)
and the same indices: the first region holding the maximum (ties), -inf and index 0 for an image without a valid
region, a NaN propagated like ``max``'s -- bit for bit (``tests/test_maxkernel.py``), so it changes no score and no
gradient and needs no accuracy check.

It is built on first use with ``torch.utils.cpp_extension.load_inline`` (a C++ compiler, ninja -- a dependency --
and Python's headers; ~30 s once per machine, cached under torch's extensions folder, ``$TORCH_EXTENSIONS_DIR``);
``make setup`` builds it (``python -m itr_lib.maxkernel``). :func:`unavailable` says why it cannot be built here;
``compile_scores='auto'`` then stays eager with that reason recorded, ``'on'`` is an error naming the fix.
"""
from __future__ import annotations

import logging
import os
import shutil
import sys
import sysconfig
import time

import torch

log = logging.getLogger(__name__)

NAME = "itr_mrsw_masked_max"
SOURCE = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <cmath>
#include <limits>

// best[w, i], arg[w, i] = max / first argmax over j of (vm[i, j] ? s[w, i, j] : -inf); a NaN wins (as torch.max)
template <typename T>
static void run(const T* s, const bool* vm, float* best, int64_t* arg, int64_t rows, int64_t ci, int64_t r) {
  const float ninf = -std::numeric_limits<float>::infinity();
  at::parallel_for(0, rows, 8, [&](int64_t b, int64_t e) {
    for (int64_t w = b; w < e; ++w) {
      const T* row = s + w * ci * r;
      float* bo = best + w * ci;
      int64_t* ao = arg + w * ci;
      for (int64_t i = 0; i < ci; ++i) {
        const T* x = row + i * r;
        const bool* m = vm + i * r;
        float bv = m[0] ? static_cast<float>(x[0]) : ninf;
        int64_t bj = 0;
        if (!std::isnan(bv)) {
          for (int64_t j = 1; j < r; ++j) {
            const float v = m[j] ? static_cast<float>(x[j]) : ninf;
            if (std::isnan(v)) { bv = v; bj = j; break; }
            if (v > bv) { bv = v; bj = j; }
          }
        }
        bo[i] = bv;
        ao[i] = bj;
      }
    }
  });
}

std::vector<torch::Tensor> masked_max(torch::Tensor s, torch::Tensor vm) {
  TORCH_CHECK(s.dim() == 3 && vm.dim() == 2 && s.size(1) == vm.size(0) && s.size(2) == vm.size(1),
              "masked_max: s (rows, ci, r) and vm (ci, r) expected");
  TORCH_CHECK(vm.scalar_type() == torch::kBool, "masked_max: vm must be bool");
  s = s.contiguous();
  vm = vm.contiguous();
  auto best = torch::empty({s.size(0), s.size(1)}, s.options().dtype(torch::kFloat32));
  auto arg = torch::empty({s.size(0), s.size(1)}, s.options().dtype(torch::kInt64));
  if (s.size(2) == 0 || s.numel() == 0) {
    TORCH_CHECK(s.size(2) > 0 || s.size(0) * s.size(1) == 0, "masked_max: no regions");
    return {best, arg};
  }
  if (s.scalar_type() == torch::kBFloat16) {
    run<c10::BFloat16>(s.data_ptr<c10::BFloat16>(), vm.data_ptr<bool>(), best.data_ptr<float>(),
                       arg.data_ptr<int64_t>(), s.size(0), s.size(1), s.size(2));
  } else {
    TORCH_CHECK(s.scalar_type() == torch::kFloat32, "masked_max: s must be bfloat16 or float32");
    run<float>(s.data_ptr<float>(), vm.data_ptr<bool>(), best.data_ptr<float>(), arg.data_ptr<int64_t>(),
               s.size(0), s.size(1), s.size(2));
  }
  return {best, arg};
}
"""

_module = None


def cxx_compiler() -> str | None:
    """The C++ compiler TorchInductor and this kernel's build use ($CXX, else c++ / g++ / clang++ on PATH), or None."""
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _ninja_on_path() -> bool:
    """Whether ninja runs; the PyPI wheel's binary is put on PATH when the venv's bin folder is not there."""
    if shutil.which("ninja"):
        return True
    try:
        import ninja  # the dependency's binary (pyproject: ninja)
        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
    except ImportError:
        return False
    return shutil.which("ninja") is not None


def unavailable() -> str | None:
    """Why the kernel cannot be built here (None: it can, or it is built)."""
    if _module is not None:
        return None
    if cxx_compiler() is None:
        return "no C++ compiler ($CXX, c++, g++, clang++) for the MrSw max kernel"
    if not _ninja_on_path():
        return "no ninja for the MrSw max kernel (pip install ninja)"
    if not os.path.isfile(os.path.join(sysconfig.get_paths()["include"], "Python.h")):
        return "no Python headers (Python.h) for the MrSw max kernel (apt-get install python3-dev)"
    return None


def load():
    """The built extension (built on first use, then loaded from torch's extensions cache)."""
    global _module
    if _module is None:
        reason = unavailable()
        if reason:
            raise RuntimeError(reason)
        from torch.utils.cpp_extension import load_inline
        t0 = time.perf_counter()
        _module = load_inline(NAME, cpp_sources=SOURCE, functions=["masked_max"], extra_cflags=["-O3"],
                              verbose=False)
        log.info("MrSw max kernel ready (%.1f s)", time.perf_counter() - t0)
    return _module


def masked_max(s: torch.Tensor, vm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(best, arg)``: for s (rows, ci, r) bf16 / float32 and vm (ci, r) bool, the max over r of s with the invalid
    regions at -inf, as float32, and its first index (:func:`eager_masked_max`'s values bit for bit)."""
    return tuple(load().masked_max(s, vm))


def eager_masked_max(s: torch.Tensor, vm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The eager reference (what the block ran before the kernel): fill the invalid regions of ``s`` with -inf IN
    PLACE, ``max`` over the last axis, the maxima cast to float32."""
    if not bool(vm.all()):
        s.masked_fill_(~vm[None], float("-inf"))
    best, arg = s.max(-1)
    return best.float(), arg


def main() -> int:
    """Build (or load) the kernel and check it against the eager reference: ``python -m itr_lib.maxkernel``."""
    reason = unavailable()
    if reason:
        print(f"MrSw max kernel not built: {reason}; compile_scores='auto' runs MrSw's max eager (the same values)")
        return 0
    t0 = time.perf_counter()
    load()
    g = torch.Generator().manual_seed(0)
    s = torch.randn(300, 16, 49, generator=g).bfloat16()
    vm = torch.rand(16, 49, generator=g) > 0.2
    vm[3] = False
    want = eager_masked_max(s.clone(), vm)
    got = masked_max(s, vm)
    same = torch.equal(want[0], got[0]) and torch.equal(want[1], got[1])
    print(f"MrSw max kernel: built/loaded in {time.perf_counter() - t0:.1f} s; equals the eager max: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
