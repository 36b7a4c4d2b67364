// The CPU kernel-set selector (kernel_set.h): one process-wide choice read by every kernel
// family at the start of each call.
#include "cpu/kernel_set.h"

#include <atomic>

#include "core/common.h"
#include "core/runtime.h"

namespace cnnkit {
namespace cpu {

// Each ISA file says whether it was compiled for its ISA (CMake sets the flags on x86-64 only).
namespace gemm_avx2 { bool compiled(); }
namespace conv_avx2 { bool compiled(); }
namespace eltwise_avx2 { bool compiled(); }
namespace gemm_avx512 { bool compiled(); }
namespace conv_avx512 { bool compiled(); }

namespace {

constexpr int kAuto = -1;
std::atomic<int> g_requested{kAuto};

KernelSet best_supported() {
    if (kernel_set_supported(KernelSet::AVX512)) return KernelSet::AVX512;
    if (kernel_set_supported(KernelSet::AVX2)) return KernelSet::AVX2;
    return KernelSet::Generic;
}

}  // namespace

bool kernel_set_supported(KernelSet s) {
    switch (s) {
        case KernelSet::Generic: return true;
        case KernelSet::AVX2:
            return cpu_has_avx2_fma() && gemm_avx2::compiled() && conv_avx2::compiled() &&
                   eltwise_avx2::compiled();
        case KernelSet::AVX512:
            // The AVX-512 set runs the AVX2 pooling and ReLU bodies: AVX-512 twins of them
            // measured 0.82-1.08x the AVX2 ones (docs/performance.md).
            return cpu_has_avx512() && kernel_set_supported(KernelSet::AVX2) &&
                   gemm_avx512::compiled() && conv_avx512::compiled();
    }
    return false;
}

KernelSet kernel_set() {
    const int r = g_requested.load(std::memory_order_relaxed);
    if (r == kAuto) {
        static const KernelSet best = best_supported();
        return best;
    }
    return static_cast<KernelSet>(r);
}

const char* kernel_set_name(KernelSet s) {
    switch (s) {
        case KernelSet::Generic: return "generic";
        case KernelSet::AVX2: return "avx2";
        case KernelSet::AVX512: return "avx512";
    }
    return "?";
}

std::vector<std::string> available_kernel_sets() {
    std::vector<std::string> v;
    for (KernelSet s : {KernelSet::AVX512, KernelSet::AVX2, KernelSet::Generic})
        if (kernel_set_supported(s)) v.push_back(kernel_set_name(s));
    return v;
}

void set_kernel_set(const std::string& name) {
    if (name == "auto") {
        g_requested = kAuto;
        return;
    }
    for (KernelSet s : {KernelSet::AVX512, KernelSet::AVX2, KernelSet::Generic}) {
        if (name != kernel_set_name(s)) continue;
        if (!kernel_set_supported(s)) {
            const char* need = s == KernelSet::AVX512 ? "AVX-512 F/BW/VL/DQ" : "AVX2 and FMA";
            std::string feats = cpu_features();
            throw ValueError(str_cat("set_cpu_kernels: '", name, "' needs ", need,
                                     " (in the CPU and in this build); this CPU has: ",
                                     feats.empty() ? "none of them" : feats));
        }
        g_requested = static_cast<int>(s);
        return;
    }
    throw ValueError(str_cat("set_cpu_kernels: unknown kernel set '", name,
                             "' (expected 'auto', 'avx512', 'avx2' or 'generic')"));
}

std::string requested_kernel_set() {
    const int r = g_requested.load();
    return r == kAuto ? "auto" : kernel_set_name(static_cast<KernelSet>(r));
}

}  // namespace cpu
}  // namespace cnnkit
