// Batched im2col / col2im launchers shared by im2col.cu and conv.cu (CUDA only): several images
// side by side in one column matrix, one launch for the whole chunk.
#pragma once

#include <cstdint>

#include "core/geometry.h"

namespace cnnkit {
namespace cuda {

// x holds nb images (C,H,W) at img_stride floats apart; col is (C*R*S, ldc) and image i owns
// columns [i*P*Q, (i+1)*P*Q). Out-of-image taps read as zero.
void im2col_batched(float* col, int64_t ldc, const float* x, int64_t nb, int64_t img_stride,
                    int64_t C, int64_t H, int64_t W, int64_t R, int64_t S, int64_t P, int64_t Q,
                    int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw);
// The inverse: dx image i (C,H,W) at i*img_stride, overwritten with the sum of the col entries
// that read each pixel, gathered per pixel in (r, s) order (the order cpu::col2im adds them).
void col2im_batched(float* dx, int64_t img_stride, const float* col, int64_t ldc, int64_t nb,
                    int64_t C, int64_t H, int64_t W, int64_t R, int64_t S, int64_t P, int64_t Q,
                    int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw);

}  // namespace cuda
}  // namespace cnnkit
