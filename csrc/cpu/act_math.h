// The formulas of the smooth and clipped activations (ELU, SiLU, GELU, ReLU6, Hardswish), written
// once for cpu/activation.cpp and cuda/activation.cu (plain inline without nvcc). PyTorch's
// definitions, including its one-sided choices at the kinks.
#pragma once

#include <cmath>

#include "core/common.h"
#include "cpu/kernels.h"

namespace cnnkit {

constexpr float kSqrt1_2 = 0.70710678118654752f;      // 1/sqrt(2)
constexpr float kInvSqrt2Pi = 0.39894228040143268f;   // 1/sqrt(2*pi)
constexpr float kSqrt2OverPi = 0.79788456080286536f;  // sqrt(2/pi)
constexpr float kGeluCubic = 0.044715f;

CNN_HD float act_value(cpu::Act act, float v, float alpha) {
    switch (act) {
        case cpu::Act::ELU: return v > 0.f ? v : alpha * expm1f(v);
        case cpu::Act::SiLU: return v / (1.f + expf(-v));
        case cpu::Act::GELU: return 0.5f * v * (1.f + erff(v * kSqrt1_2));
        case cpu::Act::GELUTanh:
            return 0.5f * v * (1.f + tanhf(kSqrt2OverPi * (v + kGeluCubic * v * v * v)));
        case cpu::Act::ReLU6: return v <= 0.f ? 0.f : (v >= 6.f ? 6.f : v);
        case cpu::Act::Hardswish:
            return v <= -3.f ? 0.f : (v >= 3.f ? v : v * (v + 3.f) / 6.f);
        default: return v;
    }
}

// dy * f'(v), from the input v.
CNN_HD float act_grad(cpu::Act act, float d, float v, float alpha) {
    switch (act) {
        case cpu::Act::ELU: return v > 0.f ? d : d * alpha * expf(v);
        case cpu::Act::SiLU: {
            const float s = 1.f / (1.f + expf(-v));
            return d * s * (1.f + v * (1.f - s));
        }
        case cpu::Act::GELU:
            return d * (0.5f * (1.f + erff(v * kSqrt1_2)) + v * kInvSqrt2Pi * expf(-0.5f * v * v));
        case cpu::Act::GELUTanh: {
            const float inner = kSqrt2OverPi * (v + kGeluCubic * v * v * v);
            const float t = tanhf(inner);
            const float dinner = kSqrt2OverPi * (1.f + 3.f * kGeluCubic * v * v);
            return d * (0.5f * (1.f + t) + 0.5f * v * (1.f - t * t) * dinner);
        }
        case cpu::Act::ReLU6: return v > 0.f && v < 6.f ? d : 0.f;
        case cpu::Act::Hardswish:  // torch: 0 below -3, x/3 + 1/2 up to 3 (inclusive), then 1
            return v < -3.f ? 0.f : (v <= 3.f ? d * (v / 3.f + 0.5f) : d);
        default: return d;
    }
}

}  // namespace cnnkit
