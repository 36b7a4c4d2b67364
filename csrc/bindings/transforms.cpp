// Bindings of the batch transforms (data/transforms.h): cnnkit.transforms builds one Pipeline
// per Compose and runs it on whole batches with the GIL released.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <string>
#include <vector>

#include "data/transforms.h"

namespace py = pybind11;
using namespace cnnkit;

namespace {

data::PadMode parse_mode(const std::string& s) {
    if (s == "constant") return data::PadMode::Constant;
    if (s == "edge") return data::PadMode::Edge;
    if (s == "reflect") return data::PadMode::Reflect;
    if (s == "symmetric") return data::PadMode::Symmetric;
    throw ValueError(str_cat("padding_mode must be 'constant', 'edge', 'reflect' or "
                             "'symmetric', got '", s, "'"));
}

data::Interp parse_interp(const std::string& s, const char* what) {
    if (s == "bilinear") return data::Interp::Bilinear;
    if (s == "nearest") return data::Interp::Nearest;
    throw ValueError(str_cat(what, ": interpolation must be 'bilinear' or 'nearest', got '", s,
                             "'"));
}

using I64Array = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;

// x as (N, C, H, W) uint8 or float32, C-contiguous (other dtypes are the caller's to convert)
py::array images(py::object x) {
    py::array a = py::array::ensure(x);
    CNN_CHECK_ARG(a && (a.dtype().is(py::dtype::of<uint8_t>()) ||
                        a.dtype().is(py::dtype::of<float>())),
                  "transforms: images must be a uint8 or float32 array");
    CNN_CHECK_ARG(a.ndim() == 4, "transforms: images must be (N, C, H, W), got ", a.ndim(),
                  " dimensions");
    if (!(a.flags() & py::array::c_style))
        a = py::array::ensure(a, py::array::c_style);
    return a;
}

std::vector<int64_t> keys_of(py::object index, int64_t n) {
    I64Array k = I64Array::ensure(index);
    CNN_CHECK_ARG(k && k.ndim() == 1 && k.shape(0) == n, "transforms: index must be (N,) "
                  "integers, one per image (", n, ")");
    std::vector<int64_t> v(k.data(), k.data() + n);
    for (int64_t i : v) CNN_CHECK_ARG(i >= 0, "transforms: index values must be >= 0");
    return v;
}

Shape sample_of(const py::array& a) { return {a.shape(1), a.shape(2), a.shape(3)}; }

}  // namespace

void bind_transforms(py::module_& m) {
    using data::TransformOp;
    py::class_<data::Pipeline>(m, "Pipeline",
                               "A sequence of batch image transforms (cnnkit.transforms) run "
                               "natively as one call per batch.")
        .def(py::init<>())
        .def("__len__", &data::Pipeline::size)
        .def(
            "add_crop",
            [](data::Pipeline& p, int64_t h, int64_t w, std::vector<int64_t> pad,
               bool pad_if_needed, float fill, const std::string& mode) {
                TransformOp op;
                op.kind = TransformOp::Crop;
                op.h = h;
                op.w = w;
                CNN_CHECK_ARG(pad.size() == 4, "RandomCrop: padding must be 4 values");
                for (int i = 0; i < 4; ++i) op.pad[i] = pad[static_cast<size_t>(i)];
                op.pad_if_needed = pad_if_needed;
                op.fill = fill;
                op.mode = parse_mode(mode);
                p.add(op);
            },
            py::arg("h"), py::arg("w"), py::arg("padding"), py::arg("pad_if_needed"),
            py::arg("fill"), py::arg("padding_mode"))
        .def(
            "add_flip",
            [](data::Pipeline& p, double prob) {
                TransformOp op;
                op.kind = TransformOp::Flip;
                op.p = prob;
                p.add(op);
            },
            py::arg("p"))
        .def(
            "add_resized_crop",
            [](data::Pipeline& p, int64_t h, int64_t w, std::pair<double, double> scale,
               std::pair<double, double> ratio, const std::string& interp) {
                TransformOp op;
                op.kind = TransformOp::ResizedCrop;
                op.h = h;
                op.w = w;
                op.scale[0] = scale.first;
                op.scale[1] = scale.second;
                op.ratio[0] = ratio.first;
                op.ratio[1] = ratio.second;
                op.interp = parse_interp(interp, "RandomResizedCrop");
                p.add(op);
            },
            py::arg("h"), py::arg("w"), py::arg("scale"), py::arg("ratio"),
            py::arg("interpolation"))
        .def(
            "add_resize",
            [](data::Pipeline& p, int64_t h, int64_t w, const std::string& interp) {
                TransformOp op;
                op.kind = TransformOp::Resize;
                op.h = h;
                op.w = w;
                op.interp = parse_interp(interp, "Resize");
                p.add(op);
            },
            py::arg("h"), py::arg("w"), py::arg("interpolation"),
            "h < 0: the smaller edge becomes w (torchvision's Resize(int)).")
        .def(
            "add_affine",
            [](data::Pipeline& p, std::pair<double, double> degrees, py::object translate,
               py::object scale, std::vector<double> shear, const std::string& interp,
               std::vector<float> fill, py::object center, bool rotation) {
                TransformOp op;
                op.kind = TransformOp::Affine;
                op.rotation = rotation;
                const char* name = rotation ? "RandomRotation" : "RandomAffine";
                op.degrees[0] = degrees.first;
                op.degrees[1] = degrees.second;
                if (!translate.is_none()) {
                    auto t = translate.cast<std::pair<double, double>>();
                    op.has_translate = true;
                    op.translate[0] = t.first;
                    op.translate[1] = t.second;
                }
                if (!scale.is_none()) {
                    auto s = scale.cast<std::pair<double, double>>();
                    op.has_scale = true;
                    op.ascale[0] = s.first;
                    op.ascale[1] = s.second;
                }
                CNN_CHECK_ARG(shear.empty() || shear.size() == 2 || shear.size() == 4, name,
                              ": shear must be 0, 2 or 4 values");
                op.shear_n = static_cast<int>(shear.size());
                for (size_t i = 0; i < shear.size(); ++i) op.shear[i] = shear[i];
                op.interp = parse_interp(interp, name);
                op.fills = std::move(fill);
                if (!center.is_none()) {
                    auto c = center.cast<std::pair<double, double>>();
                    op.has_center = true;
                    op.center[0] = c.first;
                    op.center[1] = c.second;
                }
                p.add(op);
            },
            py::arg("degrees"), py::arg("translate"), py::arg("scale"), py::arg("shear"),
            py::arg("interpolation"), py::arg("fill"), py::arg("center"), py::arg("rotation"))
        .def(
            "add_jitter",
            [](data::Pipeline& p, py::object brightness, py::object contrast) {
                TransformOp op;
                op.kind = TransformOp::Jitter;
                if (!brightness.is_none()) {
                    auto b = brightness.cast<std::pair<double, double>>();
                    op.has_bright = true;
                    op.bright[0] = b.first;
                    op.bright[1] = b.second;
                }
                if (!contrast.is_none()) {
                    auto c = contrast.cast<std::pair<double, double>>();
                    op.has_contrast = true;
                    op.contrast[0] = c.first;
                    op.contrast[1] = c.second;
                }
                p.add(op);
            },
            py::arg("brightness"), py::arg("contrast"))
        .def(
            "add_normalize",
            [](data::Pipeline& p, std::vector<float> mean, std::vector<float> std) {
                TransformOp op;
                op.kind = TransformOp::Normalize;
                op.mean = std::move(mean);
                op.std = std::move(std);
                p.add(op);
            },
            py::arg("mean"), py::arg("std"))
        .def(
            "extend",
            [](data::Pipeline& p, const data::Pipeline& other) { p.append(other); },
            py::arg("other"))
        .def(
            "out_shape",
            [](const data::Pipeline& p, std::vector<int64_t> sample) {
                const Shape s = p.out_shape(Shape(sample.begin(), sample.end()));
                return std::vector<int64_t>(s.begin(), s.end());
            },
            py::arg("sample"), "Per-sample output shape (C, H, W) for input samples (C, H, W).")
        .def(
            "apply",
            [](const data::Pipeline& p, py::object x, py::object index, uint64_t seed,
               int64_t epoch) {
                py::array a = images(x);
                const int64_t n = a.shape(0);
                CNN_CHECK_ARG(n >= 1, "transforms: the batch is empty");
                std::vector<int64_t> keys = keys_of(index, n);
                const Shape in = sample_of(a);
                const Shape o = p.out_shape(in);
                py::array_t<float> out({static_cast<py::ssize_t>(n), o[0], o[1], o[2]});
                std::vector<int64_t> rows(static_cast<size_t>(n));
                for (int64_t i = 0; i < n; ++i) rows[static_cast<size_t>(i)] = i;
                const bool u8 = a.dtype().is(py::dtype::of<uint8_t>());
                const void* src = a.data();
                float* dst = out.mutable_data();
                {
                    py::gil_scoped_release nogil;
                    p.run(dst, src, u8, in, rows.data(), keys.data(), n, seed, epoch, true);
                }
                return out;
            },
            py::arg("x"), py::arg("index"), py::arg("seed"), py::arg("epoch"),
            "The pipeline applied to each image of x (N, C, H, W) uint8 (scaled to [0, 1]) or "
            "float32, image i's draws keyed by (seed, epoch, index[i]); float32 output.")
        .def(
            "params",
            [](const data::Pipeline& p, std::vector<int64_t> sample, py::object index,
               uint64_t seed, int64_t epoch) {
                I64Array k = I64Array::ensure(index);
                CNN_CHECK_ARG(k && k.ndim() == 1, "transforms: index must be (N,) integers");
                const int64_t n = k.shape(0);
                std::vector<int64_t> keys = keys_of(index, n);
                auto prm = p.params(Shape(sample.begin(), sample.end()), keys.data(), n, seed,
                                    epoch);
                py::list outl;
                for (size_t o = 0; o < prm.size(); ++o) {
                    const int64_t c = n > 0 ? static_cast<int64_t>(prm[o].size()) / n : 0;
                    py::array_t<double> a({static_cast<py::ssize_t>(n),
                                           static_cast<py::ssize_t>(c)});
                    if (!prm[o].empty())
                        std::memcpy(a.mutable_data(), prm[o].data(),
                                    sizeof(double) * prm[o].size());
                    outl.append(a);
                }
                return outl;
            },
            py::arg("sample"), py::arg("index"), py::arg("seed"), py::arg("epoch"),
            "The random parameters each transform draws for each index: one (N, k) float64 "
            "array per transform (see data/transforms.h).");
}
