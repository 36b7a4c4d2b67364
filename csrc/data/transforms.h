// Batch image transforms (augmentation) on NCHW uint8 or float32 images, output float32, defined
// as torchvision's tensor transforms are; every random draw is a pure function of (seed, epoch,
// sample index, transform), so a run is the same at any thread count and when resumed.
#pragma once

#include <cstdint>
#include <vector>

#include "core/tensor.h"

namespace cnnkit {
namespace data {

enum class PadMode { Constant, Edge, Reflect, Symmetric };
enum class Interp { Nearest, Bilinear };

// One transform of a pipeline; which fields matter depends on `kind`.
struct TransformOp {
    enum Kind { Crop, Flip, ResizedCrop, Affine, Jitter, Normalize, Resize } kind = Flip;
    // Crop / ResizedCrop / Resize: the output size (Resize: h < 0 means "smaller edge = w")
    int64_t h = 0, w = 0;
    // Crop: padding left, top, right, bottom; pad_if_needed; fill; mode
    int64_t pad[4] = {0, 0, 0, 0};
    bool pad_if_needed = false;
    float fill = 0.f;
    PadMode mode = PadMode::Constant;
    // Flip: probability
    double p = 0.5;
    // ResizedCrop: scale and ratio ranges; ResizedCrop / Affine / Resize: interpolation
    double scale[2] = {0.08, 1.0}, ratio[2] = {3.0 / 4.0, 4.0 / 3.0};
    Interp interp = Interp::Bilinear;
    // Affine: degrees range, translate fractions (or none), scale range (or none), shear ranges
    // (x then y; or none), per-channel fill (one value for all channels), center (or none),
    // `rotation`: RandomRotation (torchvision's rotate turns by -angle)
    double degrees[2] = {0, 0}, translate[2] = {0, 0}, ascale[2] = {1, 1}, shear[4] = {0, 0, 0, 0};
    bool has_translate = false, has_scale = false, has_center = false, rotation = false;
    int shear_n = 0;  // 0, 2 (x only) or 4 (x and y)
    double center[2] = {0, 0};
    std::vector<float> fills;
    // Jitter: brightness and contrast factor ranges (has_* false: that adjustment is off)
    double bright[2] = {1, 1}, contrast[2] = {1, 1};
    bool has_bright = false, has_contrast = false;
    // Normalize: per-channel mean and std (one value: every channel)
    std::vector<float> mean, std;
};

// A sequence of transforms applied as one call per batch.
class Pipeline {
  public:
    // Appends an op after checking its arguments (ValueError naming what is wrong).
    void add(const TransformOp& op);
    void append(const Pipeline& o) { ops_.insert(ops_.end(), o.ops_.begin(), o.ops_.end()); }
    bool empty() const { return ops_.empty(); }
    int64_t size() const { return static_cast<int64_t>(ops_.size()); }
    // The per-sample output shape (C, H', W') for input samples `in` (C, H, W); ValueError
    // when an op does not fit (a crop larger than the padded image, reflect padding as large
    // as the image, a channel count Normalize or ColorJitter cannot take).
    Shape out_shape(const Shape& in) const;
    // x holds samples of shape `in` (uint8 read as float(u) * kU8Scale, or float32); sample b
    // of the output is the pipeline applied to x[rows[b]], its random draws keyed by
    // (seed, epoch, keys[b]); out is (B, out_shape(in)). OpenMP over samples when `parallel`.
    void run(float* out, const void* x, bool x_u8, const Shape& in, const int64_t* rows,
             const int64_t* keys, int64_t B, uint64_t seed, int64_t epoch, bool parallel) const;
    // The random parameters each op drew for each key (what a reference implementation needs):
    // params[op] is (B, k) row-major. Crop: top, left (in the padded image). Flip: flipped.
    // ResizedCrop: top, left, height, width. Affine: angle, tx, ty, scale, shear_x, shear_y
    // (as passed to torchvision's affine matrix). Jitter: contrast_first, brightness,
    // contrast factors. Normalize and Resize: none.
    std::vector<std::vector<double>> params(const Shape& in, const int64_t* keys, int64_t B,
                                            uint64_t seed, int64_t epoch) const;
    static int64_t num_params(TransformOp::Kind k);

  private:
    std::vector<TransformOp> ops_;
};

}  // namespace data
}  // namespace cnnkit
