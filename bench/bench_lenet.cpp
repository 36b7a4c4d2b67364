// Native network benchmark without Python: the fused training step (forward, cross-entropy,
// backward, SGD-momentum update) and inference. LeNet-5 (1x28x28) at batch 64 and 256 by
// default; `--net cifar` runs the CIFAR-style CNN of bench/compare_torch.py (3x32x32) at batch
// 128. Prints one line per configuration: median ms per step and images/s.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "core/rng.h"
#include "core/runtime.h"
#include "nn/net.h"

using namespace cnnkit;
using namespace cnnkit::nn;

namespace {

// Seeded weights, cross-entropy and SGD with momentum (the step compare_torch.py times).
std::shared_ptr<Net> training_net(const std::vector<LayerPtr>& layers, uint64_t seed) {
    for (size_t i = 0; i < layers.size(); ++i) layers[i]->reset_parameters(seed + i);
    auto net = std::make_shared<Net>(layers);
    net->set_loss(LossKind::CrossEntropy);
    OptimizerConfig oc;
    oc.kind = "sgd";
    oc.lr = 0.01f;
    oc.momentum = 0.9f;
    net->set_optimizer(std::make_shared<Optimizer>(oc));
    return net;
}

std::shared_ptr<Net> lenet5() {
    std::vector<LayerPtr> layers = {
        make_conv2d(1, 6, 5, 5, 1, 1, 2, 2, 1, 1, 1, true), make_activation("ReLU", 0),
        make_maxpool2d(2, 2, 2, 2, 0, 0, false),
        make_conv2d(6, 16, 5, 5, 1, 1, 0, 0, 1, 1, 1, true), make_activation("ReLU", 0),
        make_maxpool2d(2, 2, 2, 2, 0, 0, false), make_flatten(),
        make_linear(400, 120, true), make_activation("ReLU", 0),
        make_linear(120, 84, true), make_activation("ReLU", 0), make_linear(84, 10, true)};
    return training_net(layers, 1000);
}

// conv32-conv32-pool-conv64-conv64-pool-fc512-fc10 on 3x32x32, 3x3 convolutions with pad 1.
std::shared_ptr<Net> cifar_cnn() {
    std::vector<LayerPtr> layers = {
        make_conv2d(3, 32, 3, 3, 1, 1, 1, 1, 1, 1, 1, true), make_activation("ReLU", 0),
        make_conv2d(32, 32, 3, 3, 1, 1, 1, 1, 1, 1, 1, true), make_activation("ReLU", 0),
        make_maxpool2d(2, 2, 2, 2, 0, 0, false),
        make_conv2d(32, 64, 3, 3, 1, 1, 1, 1, 1, 1, 1, true), make_activation("ReLU", 0),
        make_conv2d(64, 64, 3, 3, 1, 1, 1, 1, 1, 1, 1, true), make_activation("ReLU", 0),
        make_maxpool2d(2, 2, 2, 2, 0, 0, false), make_flatten(),
        make_linear(64 * 8 * 8, 512, true), make_activation("ReLU", 0),
        make_linear(512, 10, true)};
    return training_net(layers, 2000);
}

template <typename F>
double median_ms(F&& f, int repeats) {
    for (int i = 0; i < 3; ++i) f();  // warm-up: arenas, page faults, thread pool
    std::vector<double> t;
    for (int i = 0; i < repeats; ++i) {
        auto t0 = std::chrono::steady_clock::now();
        f();
        t.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    }
    std::sort(t.begin(), t.end());
    return t[t.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
    int repeats = 50;
    std::string which = "lenet5";
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        if (a == "--threads" && i + 1 < argc) set_num_threads(std::atoi(argv[++i]));
        else if (a == "--repeats" && i + 1 < argc) repeats = std::max(1, std::atoi(argv[++i]));
        else if (a == "--net" && i + 1 < argc) which = argv[++i];
        else {
            std::printf("usage: bench_lenet [--threads N] [--repeats R] [--net lenet5|cifar]\n");
            return a == "--help" ? 0 : 2;
        }
    }
    if (which != "lenet5" && which != "cifar") {
        std::printf("unknown --net %s (lenet5 or cifar)\n", which.c_str());
        return 2;
    }
    const bool cifar = which == "cifar";
    std::printf("net=%s threads=%d\n%-10s %6s %10s %10s\n", which.c_str(), get_num_threads(),
                "pass", "batch", "ms", "img/s");
    for (int64_t batch : cifar ? std::vector<int64_t>{128} : std::vector<int64_t>{64, 256}) {
        auto net = cifar ? cifar_cnn() : lenet5();
        Tensor x(cifar ? Shape{batch, 3, 32, 32} : Shape{batch, 1, 28, 28});
        for (int64_t i = 0; i < x.numel(); ++i) x.data()[i] = philox_uniform(7, 0, i);
        std::vector<int64_t> labels(batch);
        for (int64_t i = 0; i < batch; ++i) labels[i] = i % 10;
        double first = net->train_step(x, labels.data(), nullptr).loss;
        double ms = median_ms([&] { net->train_step(x, labels.data(), nullptr); }, repeats);
        double last = net->train_step(x, labels.data(), nullptr).loss;
        if (!(last < first)) {
            std::printf("CHECK FAILED: loss did not decrease (%g -> %g)\n", first, last);
            return 1;
        }
        std::printf("%-10s %6lld %10.3f %10.0f\n", "train", (long long)batch, ms, batch / ms * 1e3);
        double ims = median_ms([&] { net->forward(x, false); }, repeats);
        std::printf("%-10s %6lld %10.3f %10.0f\n", "inference", (long long)batch, ims, batch / ims * 1e3);
    }
    return 0;
}
