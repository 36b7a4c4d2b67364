// Which set of CPU kernels the GEMM, convolution, pooling and element-wise code uses: the
// portable loops, AVX2/FMA, or AVX-512 (F/BW/VL/DQ). Chosen once from the CPU's features
// ("auto"), or forced to any set the CPU and the build support (tests compare the sets; the
// CNNKIT_CPU_KERNELS environment variable sets it when the Python module is imported).
#pragma once

#include <string>
#include <vector>

namespace cnnkit {
namespace cpu {

enum class KernelSet { Generic = 0, AVX2 = 1, AVX512 = 2 };

// The set the kernels use now (the requested one, or the best supported under "auto").
KernelSet kernel_set();
// "generic", "avx2" or "avx512".
const char* kernel_set_name(KernelSet s);
// Whether this CPU and this build can run set s.
bool kernel_set_supported(KernelSet s);
// Names of the supported sets, best first (always ends with "generic").
std::vector<std::string> available_kernel_sets();

// "auto" (the best supported set), "avx512", "avx2" or "generic"; a set the CPU or the build
// lacks, or an unknown name, throws ValueError and leaves the selection as it was.
void set_kernel_set(const std::string& name);
// "auto" or the forced set's name.
std::string requested_kernel_set();

// Shorthands for the kernel families.
inline bool use_avx512() { return kernel_set() == KernelSet::AVX512; }
inline bool use_avx2_or_better() { return kernel_set() != KernelSet::Generic; }

}  // namespace cpu
}  // namespace cnnkit
