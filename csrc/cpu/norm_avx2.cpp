// BatchNorm's per-channel loops (norm_impl.h) built with -mavx2 -ffp-contract=off: the bits of
// the baseline build in norm.cpp, which calls in here after the kernel-set check.
#include <cstdint>

namespace cnnkit {
namespace cpu {
namespace norm_avx2 {

namespace impl {
#include "cpu/norm_impl.h"
}  // namespace impl

bool compiled() {
#ifdef __AVX2__
    return true;
#else
    return false;
#endif
}

double channel_sum(const float* x0, int64_t N, int64_t C, int64_t HW) {
    return impl::channel_sum(x0, N, C, HW);
}

double channel_sq(const float* x0, double m, int64_t N, int64_t C, int64_t HW) {
    return impl::channel_sq(x0, m, N, C, HW);
}

void channel_grad_sums(const float* x0, const float* dy0, float mean, float invstd, int64_t N,
                       int64_t C, int64_t HW, double* sdy, double* sdyx) {
    impl::channel_grad_sums(x0, dy0, mean, invstd, N, C, HW, sdy, sdyx);
}

void dx_plane(float* dxc, const float* dyc, const float* xc, int64_t HW, float k, float mean,
              float invstd, float mdy, float mdyx) {
    impl::dx_plane(dxc, dyc, xc, HW, k, mean, invstd, mdy, mdyx);
}

}  // namespace norm_avx2
}  // namespace cpu
}  // namespace cnnkit
