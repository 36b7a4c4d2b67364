// Counter-based RNG (Philox4x32-10, Salmon et al. 2011): a value is a pure function of
// (seed, stream, index), so initialisation, dropout masks and shuffles are reproducible and
// independent of thread count and device. Usable from CPU and CUDA code.
#pragma once

#include <cstdint>

#include "core/common.h"

namespace cnnkit {

struct Philox4 {
    uint32_t v[4];
};

CNN_HD void philox_mulhilo(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
    uint64_t p = static_cast<uint64_t>(a) * b;
    hi = static_cast<uint32_t>(p >> 32);
    lo = static_cast<uint32_t>(p);
}

// Four 32-bit random words for counter (index, stream) under key seed.
CNN_HD Philox4 philox4x32(uint64_t seed, uint64_t stream, uint64_t index) {
    uint32_t c0 = static_cast<uint32_t>(index), c1 = static_cast<uint32_t>(index >> 32);
    uint32_t c2 = static_cast<uint32_t>(stream), c3 = static_cast<uint32_t>(stream >> 32);
    uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
    for (int r = 0; r < 10; ++r) {
        uint32_t hi0, lo0, hi1, lo1;
        philox_mulhilo(0xD2511F53u, c0, hi0, lo0);
        philox_mulhilo(0xCD9E8D57u, c2, hi1, lo1);
        uint32_t n0 = hi1 ^ c1 ^ k0, n1 = lo1, n2 = hi0 ^ c3 ^ k1, n3 = lo0;
        c0 = n0; c1 = n1; c2 = n2; c3 = n3;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    Philox4 out;
    out.v[0] = c0; out.v[1] = c1; out.v[2] = c2; out.v[3] = c3;
    return out;
}

// Uniform float in [0, 1) from 24 random bits.
CNN_HD float u32_to_unit(uint32_t x) { return static_cast<float>(x >> 8) * (1.0f / 16777216.0f); }

// The i-th uniform [0,1) value of stream `stream`: element i uses word i%4 of block i/4.
CNN_HD float philox_uniform(uint64_t seed, uint64_t stream, uint64_t i) {
    Philox4 r = philox4x32(seed, stream, i >> 2);
    return u32_to_unit(r.v[i & 3]);
}

}  // namespace cnnkit
