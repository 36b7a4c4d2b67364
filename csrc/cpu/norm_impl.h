// The per-channel loops of BatchNorm's statistics and input gradient, written once and compiled
// twice: in norm.cpp for the baseline ISA and in norm_avx2.cpp with -mavx2 (no FMA, no FP
// contraction), so both give the same bits; the AVX2 build runs the 8 double lanes as two
// 4-wide vectors instead of four 2-wide ones. Included inside a namespace, after <cstdint>.

// Sums over a channel's N planes of HW floats in double, in kLanes independent chains (lane l
// takes elements i with i % kLanes == l of each plane, the tail to the first lanes), combined
// in a fixed order: vectorizable without reassociation, and the same at any thread count
// (threads split channels, never a channel's sum). f(i) gives the term for plane offset i.
constexpr int kLanes = 8;

template <class F>
double lane_sum(int64_t N, int64_t plane_stride, int64_t HW, F f) {
    double acc[kLanes] = {0, 0, 0, 0, 0, 0, 0, 0};
    const int64_t full = HW - HW % kLanes;
    for (int64_t n = 0; n < N; ++n) {
        const int64_t base = n * plane_stride;
        for (int64_t i = 0; i < full; i += kLanes)
            for (int l = 0; l < kLanes; ++l) acc[l] += f(base + i + l);
        for (int64_t i = full; i < HW; ++i) acc[i - full] += f(base + i);
    }
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

// Two lane_sums in one pass: f(i, &a_lane, &b_lane) adds element i's terms to both; each sum
// takes its terms in lane_sum's order, so the results are lane_sum's bits.
template <class F>
void lane_sum2(int64_t N, int64_t plane_stride, int64_t HW, double* sa, double* sb, F f) {
    double a[kLanes] = {0, 0, 0, 0, 0, 0, 0, 0}, b[kLanes] = {0, 0, 0, 0, 0, 0, 0, 0};
    const int64_t full = HW - HW % kLanes;
    for (int64_t n = 0; n < N; ++n) {
        const int64_t base = n * plane_stride;
        for (int64_t i = 0; i < full; i += kLanes)
            for (int l = 0; l < kLanes; ++l) f(base + i + l, &a[l], &b[l]);
        for (int64_t i = full; i < HW; ++i) f(base + i, &a[i - full], &b[i - full]);
    }
    *sa = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
    *sb = ((b[0] + b[1]) + (b[2] + b[3])) + ((b[4] + b[5]) + (b[6] + b[7]));
}

// Channel c's sums over its N planes (x0 = x + c * HW, planes C * HW apart): of x, of
// (x - m)^2, and of dy and dy * xhat in one pass. Shared by the fused kernels and
// SyncBatchNorm's pieces, so both take the same terms in the same order.
double channel_sum(const float* x0, int64_t N, int64_t C, int64_t HW) {
    return lane_sum(N, C * HW, HW, [x0](int64_t i) { return static_cast<double>(x0[i]); });
}

double channel_sq(const float* x0, double m, int64_t N, int64_t C, int64_t HW) {
    return lane_sum(N, C * HW, HW, [x0, m](int64_t i) {
        const double d = x0[i] - m;
        return d * d;
    });
}

void channel_grad_sums(const float* x0, const float* dy0, float mean, float invstd, int64_t N,
                       int64_t C, int64_t HW, double* sdy, double* sdyx) {
    lane_sum2(N, C * HW, HW, sdy, sdyx, [x0, dy0, mean, invstd](int64_t i, double* a, double* b) {
        *a += static_cast<double>(dy0[i]);
        *b += static_cast<double>(dy0[i] * ((x0[i] - mean) * invstd));
    });
}

// dx = k * (dy - mdy - xhat * mdyx) over one plane of HW floats.
inline void dx_plane(float* dxc, const float* dyc, const float* xc, int64_t HW, float k,
                     float mean, float invstd, float mdy, float mdyx) {
    for (int64_t i = 0; i < HW; ++i) {
        float xhat = (xc[i] - mean) * invstd;
        dxc[i] = k * (dyc[i] - mdy - xhat * mdyx);
    }
}

