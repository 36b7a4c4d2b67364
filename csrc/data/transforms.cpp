// Batch image transforms, each as torchvision defines it for tensors (its get_params draws and
// its functional kernels: pad, crop, resized_crop, affine/rotate through grid_sample,
// adjust_brightness/adjust_contrast, normalize, resize without antialias), one sample per
// OpenMP iteration, the draws from Philox keyed by (seed, epoch, op, sample index).
#include "data/transforms.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/resample.h"
#include "core/rng.h"
#include "data/batch.h"

namespace cnnkit {
namespace data {

namespace {

// ---- random draws -------------------------------------------------------------------------

// The draws of one op for one sample: words of Philox blocks (seed, stream0 + block, key).
struct Draws {
    uint64_t seed, stream0, key;
    uint64_t block = 0;
    int pos = 4;
    Philox4 cur{};
    Draws(uint64_t s, int64_t epoch, int64_t op, int64_t k)
        : seed(s),
          stream0((static_cast<uint64_t>(epoch) << 20) ^ (static_cast<uint64_t>(op) << 12)),
          key(static_cast<uint64_t>(k)) {}
    uint32_t u32() {
        if (pos == 4) {
            cur = philox4x32(seed, stream0 + block++, key);
            pos = 0;
        }
        return cur.v[pos++];
    }
    // uniform in [0, 1) with 53 bits
    double uniform() {
        const uint64_t a = u32() >> 5, b = u32() >> 6;
        return (static_cast<double>(a) * 67108864.0 + static_cast<double>(b)) *
               (1.0 / 9007199254740992.0);
    }
    double uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }
    // integer in [lo, hi)
    int64_t randint(int64_t lo, int64_t hi) {
        const int64_t r = lo + static_cast<int64_t>(uniform() * static_cast<double>(hi - lo));
        return r < hi ? r : hi - 1;
    }
};

// Python's round() (half to even), as torchvision's int(round(x)).
int64_t py_round(double x) { return static_cast<int64_t>(std::nearbyint(x)); }

struct Dims {
    int64_t c, h, w;
};

// The padded image of a crop: stage 1 (padding) and stage 2 (pad_if_needed) sizes.
struct CropGeom {
    int64_t h1, w1, eh, ew, h2, w2;
};
CropGeom crop_geom(const TransformOp& op, const Dims& d) {
    CropGeom g;
    g.h1 = d.h + op.pad[1] + op.pad[3];
    g.w1 = d.w + op.pad[0] + op.pad[2];
    g.ew = op.pad_if_needed && g.w1 < op.w ? op.w - g.w1 : 0;
    g.eh = op.pad_if_needed && g.h1 < op.h ? op.h - g.h1 : 0;
    g.h2 = g.h1 + 2 * g.eh;
    g.w2 = g.w1 + 2 * g.ew;
    return g;
}

// Index in an axis of length n of padded index p (`before` entries in front); -1: the fill.
int64_t pad_index(int64_t p, int64_t before, int64_t n, PadMode m) {
    const int64_t q = p - before;
    if (q >= 0 && q < n) return q;
    switch (m) {
        case PadMode::Constant: return -1;
        case PadMode::Edge: return q < 0 ? 0 : n - 1;
        case PadMode::Reflect: return q < 0 ? -q : 2 * (n - 1) - q;
        case PadMode::Symmetric: return q < 0 ? -q - 1 : 2 * n - 1 - q;
    }
    return -1;
}

const char* mode_name(PadMode m) {
    switch (m) {
        case PadMode::Constant: return "constant";
        case PadMode::Edge: return "edge";
        case PadMode::Reflect: return "reflect";
        case PadMode::Symmetric: return "symmetric";
    }
    return "?";
}

void check_pad(int64_t pad, int64_t n, PadMode m, const char* axis) {
    if (m == PadMode::Reflect)
        CNN_CHECK_ARG(pad < n, "RandomCrop: reflect padding of ", pad, " needs an image ", axis,
                      " of at least ", pad + 1, ", got ", n);
    if (m == PadMode::Symmetric)
        CNN_CHECK_ARG(pad <= n, "RandomCrop: symmetric padding of ", pad, " needs an image ",
                      axis, " of at least ", pad, ", got ", n);
}

Dims resize_dims(const TransformOp& op, const Dims& d) {
    if (op.h >= 0) return {d.c, op.h, op.w};
    // torchvision's _compute_resized_output_size for an int size: the smaller edge
    const bool wide = d.w > d.h;
    const int64_t shortd = wide ? d.h : d.w, longd = wide ? d.w : d.h;
    const int64_t nl = static_cast<int64_t>(static_cast<double>(op.w) * longd / shortd);
    return wide ? Dims{d.c, op.w, nl} : Dims{d.c, nl, op.w};
}

Dims op_out(const TransformOp& op, const Dims& d) {
    switch (op.kind) {
        case TransformOp::Crop: {
            check_pad(std::max(op.pad[1], op.pad[3]), d.h, op.mode, "height");
            check_pad(std::max(op.pad[0], op.pad[2]), d.w, op.mode, "width");
            const CropGeom g = crop_geom(op, d);
            check_pad(g.eh, g.h1, op.mode, "height");
            check_pad(g.ew, g.w1, op.mode, "width");
            CNN_CHECK_ARG(g.h2 >= op.h && g.w2 >= op.w, "RandomCrop: required crop size (",
                          op.h, ", ", op.w, ") is larger than the padded image size (", g.h2,
                          ", ", g.w2, "); pass pad_if_needed=True or a smaller size");
            return {d.c, op.h, op.w};
        }
        case TransformOp::ResizedCrop: return {d.c, op.h, op.w};
        case TransformOp::Resize: {
            const Dims o = resize_dims(op, d);
            CNN_CHECK_ARG(o.h >= 1 && o.w >= 1, "Resize: an image of ", d.h, "x", d.w,
                          " resized to ", o.h, "x", o.w, " is empty");
            return o;
        }
        case TransformOp::Jitter:
            CNN_CHECK_ARG(d.c == 1 || d.c == 3, "ColorJitter: images must have 1 or 3 channels, "
                          "got ", d.c);
            return d;
        case TransformOp::Normalize: {
            const int64_t k = static_cast<int64_t>(op.mean.size());
            CNN_CHECK_ARG(k == 1 || k == d.c, "Normalize: ", k, " mean/std values for images "
                          "with ", d.c, " channels");
            return d;
        }
        case TransformOp::Affine: {
            const int64_t k = static_cast<int64_t>(op.fills.size());
            CNN_CHECK_ARG(k == 1 || k == d.c, op.rotation ? "RandomRotation" : "RandomAffine",
                          ": ", k, " fill values for images with ", d.c, " channels");
            return d;
        }
        case TransformOp::Flip: return d;
    }
    return d;
}

// ---- parameters (torchvision's get_params) ---------------------------------------------------

void draw(const TransformOp& op, const Dims& d, Draws& r, double* p) {
    switch (op.kind) {
        case TransformOp::Crop: {
            const CropGeom g = crop_geom(op, d);
            p[0] = static_cast<double>(r.randint(0, g.h2 - op.h + 1));
            p[1] = static_cast<double>(r.randint(0, g.w2 - op.w + 1));
            return;
        }
        case TransformOp::Flip: p[0] = r.uniform() < op.p ? 1.0 : 0.0; return;
        case TransformOp::ResizedCrop: {
            const double area = static_cast<double>(d.h) * static_cast<double>(d.w);
            const double lr0 = std::log(op.ratio[0]), lr1 = std::log(op.ratio[1]);
            for (int t = 0; t < 10; ++t) {
                const double target = area * r.uniform(op.scale[0], op.scale[1]);
                const double ar = std::exp(r.uniform(lr0, lr1));
                const int64_t w = py_round(std::sqrt(target * ar));
                const int64_t h = py_round(std::sqrt(target / ar));
                if (0 < w && w <= d.w && 0 < h && h <= d.h) {
                    p[0] = static_cast<double>(r.randint(0, d.h - h + 1));
                    p[1] = static_cast<double>(r.randint(0, d.w - w + 1));
                    p[2] = static_cast<double>(h);
                    p[3] = static_cast<double>(w);
                    return;
                }
            }
            // fallback: the central crop
            const double in_ratio = static_cast<double>(d.w) / static_cast<double>(d.h);
            const double rmin = std::min(op.ratio[0], op.ratio[1]);
            const double rmax = std::max(op.ratio[0], op.ratio[1]);
            int64_t w, h;
            if (in_ratio < rmin) {
                w = d.w;
                h = py_round(static_cast<double>(w) / rmin);
            } else if (in_ratio > rmax) {
                h = d.h;
                w = py_round(static_cast<double>(h) * rmax);
            } else {
                w = d.w;
                h = d.h;
            }
            p[0] = static_cast<double>((d.h - h) / 2);
            p[1] = static_cast<double>((d.w - w) / 2);
            p[2] = static_cast<double>(h);
            p[3] = static_cast<double>(w);
            return;
        }
        case TransformOp::Affine: {
            const double angle = r.uniform(op.degrees[0], op.degrees[1]);
            p[0] = op.rotation ? -angle : angle;
            p[1] = p[2] = 0.0;
            if (op.has_translate) {
                const double mx = op.translate[0] * static_cast<double>(d.w);
                const double my = op.translate[1] * static_cast<double>(d.h);
                p[1] = static_cast<double>(py_round(r.uniform(-mx, mx)));
                p[2] = static_cast<double>(py_round(r.uniform(-my, my)));
            }
            p[3] = op.has_scale ? r.uniform(op.ascale[0], op.ascale[1]) : 1.0;
            p[4] = op.shear_n >= 2 ? r.uniform(op.shear[0], op.shear[1]) : 0.0;
            p[5] = op.shear_n == 4 ? r.uniform(op.shear[2], op.shear[3]) : 0.0;
            return;
        }
        case TransformOp::Jitter: {
            // torchvision applies the enabled adjustments in the order of randperm(4)
            p[0] = (op.has_bright && op.has_contrast && (r.u32() & 1u)) ? 1.0 : 0.0;
            p[1] = op.has_bright ? r.uniform(op.bright[0], op.bright[1]) : 1.0;
            p[2] = op.has_contrast ? r.uniform(op.contrast[0], op.contrast[1]) : 1.0;
            return;
        }
        case TransformOp::Normalize:
        case TransformOp::Resize: return;
    }
}

// ---- kernels: src is (c, d.h, d.w), dst is (c, o.h, o.w) ------------------------------------

void crop_kernel(float* dst, const float* src, const TransformOp& op, const Dims& d,
                 const double* p, std::vector<int64_t>& ry, std::vector<int64_t>& rx) {
    const CropGeom g = crop_geom(op, d);
    const int64_t top = static_cast<int64_t>(p[0]), left = static_cast<int64_t>(p[1]);
    ry.resize(static_cast<size_t>(op.h));
    rx.resize(static_cast<size_t>(op.w));
    for (int64_t y = 0; y < op.h; ++y) {
        const int64_t q = pad_index(top + y, g.eh, g.h1, op.mode);
        ry[static_cast<size_t>(y)] = q < 0 ? -1 : pad_index(q, op.pad[1], d.h, op.mode);
    }
    for (int64_t x = 0; x < op.w; ++x) {
        const int64_t q = pad_index(left + x, g.ew, g.w1, op.mode);
        rx[static_cast<size_t>(x)] = q < 0 ? -1 : pad_index(q, op.pad[0], d.w, op.mode);
    }
    for (int64_t c = 0; c < d.c; ++c) {
        const float* s = src + c * d.h * d.w;
        float* o = dst + c * op.h * op.w;
        for (int64_t y = 0; y < op.h; ++y) {
            const int64_t sy = ry[static_cast<size_t>(y)];
            float* orow = o + y * op.w;
            if (sy < 0) {
                std::fill(orow, orow + op.w, op.fill);
                continue;
            }
            const float* srow = s + sy * d.w;
            for (int64_t x = 0; x < op.w; ++x) {
                const int64_t sx = rx[static_cast<size_t>(x)];
                orow[x] = sx < 0 ? op.fill : srow[sx];
            }
        }
    }
}

// The region (top, left, h, w) of src resized to (o.h, o.w) as torch's interpolate
// (align_corners=False, no antialias): bilinear taps or nearest = floor(p * in/out).
void resample_kernel(float* dst, const float* src, const Dims& d, int64_t top, int64_t left,
                     int64_t h, int64_t w, const Dims& o, Interp interp) {
    const float sy = static_cast<float>(h) / static_cast<float>(o.h);
    const float sx = static_cast<float>(w) / static_cast<float>(o.w);
    for (int64_t c = 0; c < d.c; ++c) {
        const float* s = src + c * d.h * d.w;
        float* out = dst + c * o.h * o.w;
        for (int64_t y = 0; y < o.h; ++y) {
            if (interp == Interp::Nearest) {
                const float* row = s + (top + nearest_src(y, sy, h)) * d.w + left;
                for (int64_t x = 0; x < o.w; ++x) out[y * o.w + x] = row[nearest_src(x, sx, w)];
                continue;
            }
            const LinearTap ty = linear_tap(y, sy, false, h, o.h);
            const float* r0 = s + (top + ty.i0) * d.w + left;
            const float* r1 = s + (top + ty.i1) * d.w + left;
            for (int64_t x = 0; x < o.w; ++x) {
                const LinearTap tx = linear_tap(x, sx, false, w, o.w);
                out[y * o.w + x] = ty.l0 * (tx.l0 * r0[tx.i0] + tx.l1 * r0[tx.i1]) +
                                   ty.l1 * (tx.l0 * r1[tx.i0] + tx.l1 * r1[tx.i1]);
            }
        }
    }
}

// torchvision's _get_inverse_affine_matrix (output pixel -> input pixel, centred coordinates)
void inverse_affine(double* m, double cx, double cy, double angle, double tx, double ty,
                    double scale, double shx, double shy) {
    const double rot = angle * M_PI / 180.0, sx = shx * M_PI / 180.0, sy = shy * M_PI / 180.0;
    const double a = std::cos(rot - sy) / std::cos(sy);
    const double b = -std::cos(rot - sy) * std::tan(sx) / std::cos(sy) - std::sin(rot);
    const double c = std::sin(rot - sy) / std::cos(sy);
    const double dd = -std::sin(rot - sy) * std::tan(sx) / std::cos(sy) + std::cos(rot);
    m[0] = dd / scale;
    m[1] = -b / scale;
    m[2] = 0.0;
    m[3] = -c / scale;
    m[4] = a / scale;
    m[5] = 0.0;
    m[2] += m[0] * (-cx - tx) + m[1] * (-cy - ty);
    m[5] += m[3] * (-cx - tx) + m[4] * (-cy - ty);
    m[2] += cx;
    m[5] += cy;
}

// F_t.affine: _gen_affine_grid (float32, as torch computes it) and grid_sample
// (align_corners=False, zeros padding) with the fill blended through the sampled mask.
void affine_kernel(float* dst, const float* src, const TransformOp& op, const Dims& d,
                   const double* p) {
    double cx = 0.0, cy = 0.0;
    if (op.has_center) {
        cx = op.center[0] - static_cast<double>(d.w) * 0.5;
        cy = op.center[1] - static_cast<double>(d.h) * 0.5;
    }
    double m[6];
    inverse_affine(m, cx, cy, p[0], p[1], p[2], p[3], p[4], p[5]);
    const float hw = static_cast<float>(0.5 * static_cast<double>(d.w));
    const float hh = static_cast<float>(0.5 * static_cast<double>(d.h));
    const float t0 = static_cast<float>(m[0]) / hw, t1 = static_cast<float>(m[1]) / hw,
                t2 = static_cast<float>(m[2]) / hw;
    const float t3 = static_cast<float>(m[3]) / hh, t4 = static_cast<float>(m[4]) / hh,
                t5 = static_cast<float>(m[5]) / hh;
    const float W = static_cast<float>(d.w), H = static_cast<float>(d.h);
    const int64_t plane = d.h * d.w;
    const bool one_fill = op.fills.size() == 1;
    for (int64_t y = 0; y < d.h; ++y) {
        const float yc = static_cast<float>(y) - H * 0.5f + 0.5f;
        for (int64_t x = 0; x < d.w; ++x) {
            const float xc = static_cast<float>(x) - W * 0.5f + 0.5f;
            const float gx = xc * t0 + yc * t1 + t2;
            const float gy = xc * t3 + yc * t4 + t5;
            const float ix = ((gx + 1.f) * W - 1.f) / 2.f;
            const float iy = ((gy + 1.f) * H - 1.f) / 2.f;
            if (op.interp == Interp::Nearest) {
                const int64_t nx = static_cast<int64_t>(std::nearbyint(ix));
                const int64_t ny = static_cast<int64_t>(std::nearbyint(iy));
                const bool in = nx >= 0 && nx < d.w && ny >= 0 && ny < d.h;
                for (int64_t c = 0; c < d.c; ++c)
                    dst[c * plane + y * d.w + x] =
                        in ? src[c * plane + ny * d.w + nx] : op.fills[one_fill ? 0 : c];
                continue;
            }
            const float fx = std::floor(ix), fy = std::floor(iy);
            const int64_t x0 = static_cast<int64_t>(fx), y0 = static_cast<int64_t>(fy);
            const float wx1 = ix - fx, wx0 = (fx + 1.f) - ix;
            const float wy1 = iy - fy, wy0 = (fy + 1.f) - iy;
            const int64_t xs[2] = {x0, x0 + 1}, ys[2] = {y0, y0 + 1};
            const float wxs[2] = {wx0, wx1}, wys[2] = {wy0, wy1};
            float mask = 0.f;
            int64_t off[4];
            float wt[4];
            int k = 0;
            for (int j = 0; j < 2; ++j)
                for (int i = 0; i < 2; ++i) {
                    const bool in = xs[i] >= 0 && xs[i] < d.w && ys[j] >= 0 && ys[j] < d.h;
                    off[k] = in ? ys[j] * d.w + xs[i] : -1;
                    wt[k] = wxs[i] * wys[j];
                    if (in) mask += wt[k];
                    ++k;
                }
            for (int64_t c = 0; c < d.c; ++c) {
                const float* s = src + c * plane;
                float v = 0.f;
                for (int q = 0; q < 4; ++q)
                    if (off[q] >= 0) v += wt[q] * s[off[q]];
                const float f = op.fills[one_fill ? 0 : c];
                dst[c * plane + y * d.w + x] = v * mask + (1.f - mask) * f;
            }
        }
    }
}

float clamp01(float v) { return v < 0.f ? 0.f : (v > 1.f ? 1.f : v); }

// adjust_brightness then adjust_contrast, or the other way round (p[0]); in place
void jitter_kernel(float* x, const TransformOp& op, const Dims& d, const double* p) {
    const int64_t plane = d.h * d.w, n = d.c * plane;
    auto brightness = [&] {
        const float f = static_cast<float>(p[1]);
        for (int64_t i = 0; i < n; ++i) x[i] = clamp01(f * x[i]);
    };
    auto contrast = [&] {
        const float f = static_cast<float>(p[2]);
        double sum = 0.0;
        if (d.c == 3) {
            for (int64_t i = 0; i < plane; ++i)
                sum += static_cast<double>(0.2989f * x[i] + 0.587f * x[plane + i] +
                                           0.114f * x[2 * plane + i]);
        } else {
            for (int64_t i = 0; i < n; ++i) sum += static_cast<double>(x[i]);
        }
        const float mean = static_cast<float>(sum / static_cast<double>(plane));
        const float g = (1.f - f) * mean;
        for (int64_t i = 0; i < n; ++i) x[i] = clamp01(f * x[i] + g);
    };
    if (p[0] != 0.0) {
        if (op.has_contrast) contrast();
        if (op.has_bright) brightness();
    } else {
        if (op.has_bright) brightness();
        if (op.has_contrast) contrast();
    }
}

void apply_op(float* dst, float* src, const TransformOp& op, const Dims& d, const Dims& o,
              const double* p, std::vector<int64_t>& ry, std::vector<int64_t>& rx) {
    const int64_t n = d.c * d.h * d.w;
    switch (op.kind) {
        case TransformOp::Crop: crop_kernel(dst, src, op, d, p, ry, rx); return;
        case TransformOp::Flip:
            if (p[0] == 0.0) {
                std::memcpy(dst, src, sizeof(float) * static_cast<size_t>(n));
                return;
            }
            for (int64_t r = 0; r < d.c * d.h; ++r)
                for (int64_t x = 0; x < d.w; ++x) dst[r * d.w + x] = src[r * d.w + d.w - 1 - x];
            return;
        case TransformOp::ResizedCrop:
            resample_kernel(dst, src, d, static_cast<int64_t>(p[0]), static_cast<int64_t>(p[1]),
                            static_cast<int64_t>(p[2]), static_cast<int64_t>(p[3]), o,
                            op.interp);
            return;
        case TransformOp::Resize: resample_kernel(dst, src, d, 0, 0, d.h, d.w, o, op.interp); return;
        case TransformOp::Affine: affine_kernel(dst, src, op, d, p); return;
        case TransformOp::Jitter:
            std::memcpy(dst, src, sizeof(float) * static_cast<size_t>(n));
            jitter_kernel(dst, op, d, p);
            return;
        case TransformOp::Normalize: {
            const int64_t plane = d.h * d.w;
            const bool one = op.mean.size() == 1;
            for (int64_t c = 0; c < d.c; ++c) {
                const float m = op.mean[one ? 0 : c], s = op.std[one ? 0 : c];
                for (int64_t i = 0; i < plane; ++i) dst[c * plane + i] = (src[c * plane + i] - m) / s;
            }
            return;
        }
    }
}

std::vector<Dims> chain(const std::vector<TransformOp>& ops, const Shape& in) {
    CNN_CHECK_ARG(in.size() == 3, "transforms: images must be (N, C, H, W), got samples of "
                  "shape ", shape_str(in));
    CNN_CHECK_ARG(in[0] >= 1 && in[1] >= 1 && in[2] >= 1, "transforms: empty images ",
                  shape_str(in));
    std::vector<Dims> dims{{in[0], in[1], in[2]}};
    for (const TransformOp& op : ops) dims.push_back(op_out(op, dims.back()));
    return dims;
}

}  // namespace

// ---- Pipeline -----------------------------------------------------------------------------

int64_t Pipeline::num_params(TransformOp::Kind k) {
    switch (k) {
        case TransformOp::Crop: return 2;
        case TransformOp::Flip: return 1;
        case TransformOp::ResizedCrop: return 4;
        case TransformOp::Affine: return 6;
        case TransformOp::Jitter: return 3;
        default: return 0;
    }
}

void Pipeline::add(const TransformOp& op) {
    switch (op.kind) {
        case TransformOp::Crop:
            CNN_CHECK_ARG(op.h >= 1 && op.w >= 1, "RandomCrop: size must be positive, got (",
                          op.h, ", ", op.w, ")");
            for (int64_t v : op.pad)
                CNN_CHECK_ARG(v >= 0 && v <= (int64_t(1) << 20), "RandomCrop: padding must be "
                              "in [0, 2^20], got ", v);
            CNN_CHECK_ARG(op.mode != PadMode::Constant || std::isfinite(op.fill),
                          "RandomCrop: fill must be finite");
            break;
        case TransformOp::Flip:
            CNN_CHECK_ARG(op.p >= 0.0 && op.p <= 1.0, "RandomHorizontalFlip: p must be in "
                          "[0, 1], got ", op.p);
            break;
        case TransformOp::ResizedCrop:
            CNN_CHECK_ARG(op.h >= 1 && op.w >= 1 && op.h <= (1 << 16) && op.w <= (1 << 16),
                          "RandomResizedCrop: size must be in [1, 65536], got (", op.h, ", ",
                          op.w, ")");
            CNN_CHECK_ARG(op.scale[0] > 0 && op.scale[0] <= op.scale[1] &&
                              std::isfinite(op.scale[1]),
                          "RandomResizedCrop: scale must be (min, max) with 0 < min <= max");
            CNN_CHECK_ARG(op.ratio[0] > 0 && op.ratio[0] <= op.ratio[1] &&
                              std::isfinite(op.ratio[1]),
                          "RandomResizedCrop: ratio must be (min, max) with 0 < min <= max");
            break;
        case TransformOp::Resize:
            CNN_CHECK_ARG(op.w >= 1 && op.w <= (1 << 16) && (op.h < 0 || (op.h >= 1 &&
                                                                      op.h <= (1 << 16))),
                          "Resize: size must be in [1, 65536]");
            break;
        case TransformOp::Affine: {
            const char* name = op.rotation ? "RandomRotation" : "RandomAffine";
            CNN_CHECK_ARG(std::isfinite(op.degrees[0]) && std::isfinite(op.degrees[1]) &&
                              op.degrees[0] <= op.degrees[1],
                          name, ": degrees must be finite (min, max) with min <= max");
            CNN_CHECK_ARG(!op.has_translate || (op.translate[0] >= 0 && op.translate[0] <= 1 &&
                                                op.translate[1] >= 0 && op.translate[1] <= 1),
                          name, ": translate values must be in [0, 1]");
            CNN_CHECK_ARG(!op.has_scale || (op.ascale[0] > 0 && op.ascale[0] <= op.ascale[1] &&
                                            std::isfinite(op.ascale[1])),
                          name, ": scale must be (min, max) with 0 < min <= max");
            for (int i = 0; i < op.shear_n; ++i)
                CNN_CHECK_ARG(std::isfinite(op.shear[i]) && std::fabs(op.shear[i]) < 90.0, name,
                              ": shear must be in (-90, 90) degrees");
            CNN_CHECK_ARG(!op.fills.empty(), name, ": fill is empty");
            for (float f : op.fills) CNN_CHECK_ARG(std::isfinite(f), name, ": fill must be finite");
            break;
        }
        case TransformOp::Jitter:
            CNN_CHECK_ARG(op.bright[0] >= 0 && op.bright[0] <= op.bright[1] &&
                              op.contrast[0] >= 0 && op.contrast[0] <= op.contrast[1] &&
                              std::isfinite(op.bright[1]) && std::isfinite(op.contrast[1]),
                          "ColorJitter: factor ranges must be (min, max) with 0 <= min <= max");
            break;
        case TransformOp::Normalize:
            CNN_CHECK_ARG(!op.mean.empty() && op.mean.size() == op.std.size(),
                          "Normalize: mean and std must have the same length");
            for (size_t i = 0; i < op.std.size(); ++i) {
                CNN_CHECK_ARG(std::isfinite(op.mean[i]) && std::isfinite(op.std[i]),
                              "Normalize: mean and std must be finite");
                CNN_CHECK_ARG(op.std[i] != 0.f, "Normalize: std evaluated to zero, leading to "
                              "division by zero");
            }
            break;
    }
    ops_.push_back(op);
}

Shape Pipeline::out_shape(const Shape& in) const {
    const Dims o = chain(ops_, in).back();
    checked_numel({o.c, o.h, o.w}, "transforms: output image");
    return {o.c, o.h, o.w};
}

std::vector<std::vector<double>> Pipeline::params(const Shape& in, const int64_t* keys,
                                                  int64_t B, uint64_t seed,
                                                  int64_t epoch) const {
    CNN_CHECK_ARG(epoch >= 0, "transforms: epoch must be >= 0, got ", epoch);
    const std::vector<Dims> dims = chain(ops_, in);
    std::vector<std::vector<double>> out(ops_.size());
    for (size_t o = 0; o < ops_.size(); ++o) {
        const int64_t k = num_params(ops_[o].kind);
        out[o].assign(static_cast<size_t>(B * k), 0.0);
        for (int64_t b = 0; b < B; ++b) {
            Draws r(seed, epoch, static_cast<int64_t>(o), keys[b]);
            double p[8] = {0};
            draw(ops_[o], dims[o], r, p);
            for (int64_t i = 0; i < k; ++i) out[o][static_cast<size_t>(b * k + i)] = p[i];
        }
    }
    return out;
}

void Pipeline::run(float* out, const void* x, bool x_u8, const Shape& in, const int64_t* rows,
                   const int64_t* keys, int64_t B, uint64_t seed, int64_t epoch,
                   bool parallel) const {
    CNN_CHECK_ARG(epoch >= 0, "transforms: epoch must be >= 0, got ", epoch);
    const std::vector<Dims> dims = chain(ops_, in);
    const int64_t row = in[0] * in[1] * in[2];
    const Dims& last = dims.back();
    const int64_t orow = last.c * last.h * last.w;
    int64_t most = 0;
    for (const Dims& d : dims) most = std::max(most, d.c * d.h * d.w);
    const size_t nops = ops_.size();
#pragma omp parallel if (parallel && B > 1)
    {
        std::vector<float> a(static_cast<size_t>(most)), t(static_cast<size_t>(most));
        std::vector<int64_t> ry, rx;
#pragma omp for schedule(static)
        for (int64_t b = 0; b < B; ++b) {
            float* dst_final = out + b * orow;
            float* cur = nops == 0 ? dst_final : a.data();
            if (x_u8) {
                const uint8_t* s = static_cast<const uint8_t*>(x) + rows[b] * row;
                for (int64_t i = 0; i < row; ++i) cur[i] = static_cast<float>(s[i]) * kU8Scale;
            } else {
                std::memcpy(cur, static_cast<const float*>(x) + rows[b] * row,
                            sizeof(float) * static_cast<size_t>(row));
            }
            float* nxt = t.data();
            for (size_t o = 0; o < nops; ++o) {
                Draws r(seed, epoch, static_cast<int64_t>(o), keys[b]);
                double p[8] = {0};
                draw(ops_[o], dims[o], r, p);
                float* dst = o + 1 == nops ? dst_final : nxt;
                apply_op(dst, cur, ops_[o], dims[o], dims[o + 1], p, ry, rx);
                nxt = cur;
                cur = dst;
            }
        }
    }
}

}  // namespace data
}  // namespace cnnkit
