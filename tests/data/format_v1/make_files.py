"""Files written by cnnkit 0.1.0 (format v1), kept so that later releases prove they still load."""
import json, numpy as np, cnnkit as ck
ck.manual_seed(123)
out = "tests/data/format_v1/"
models = {
 "all_layers": ck.Sequential([ck.Conv2d(1, 4, 3, padding=1), ck.BatchNorm2d(4), ck.ReLU(),
    ck.Conv2d(4, 4, (3, 1), stride=(1, 2), padding=(1, 0), dilation=1, groups=2, bias=False),
    ck.BatchNorm2d(4, affine=False), ck.LeakyReLU(0.2), ck.MaxPool2d(2), ck.Sigmoid(),
    ck.BatchNorm2d(4, track_running_stats=False), ck.AvgPool2d(2, ceil_mode=True, count_include_pad=False),
    ck.Tanh(), ck.Flatten(), ck.Dropout(0.25), ck.Linear(8, 8, bias=False), ck.ReLU(), ck.Linear(8, 3)]),
}
x = np.random.default_rng(0).random((5, 1, 8, 8)).astype(np.float32)
for name, m in models.items():
    # one training step so the running statistics are not their initial values
    t = ck.Trainer(m, optimizer=ck.optim.SGD(lr=0.1, momentum=0.9), device="cpu", seed=3)
    t.fit(x, np.array([0, 1, 2, 0, 1]), epochs=2, batch_size=5, verbose=0)
    ck.save(m, out + name + ".cnnkit")
    ck.save(t, out + name + "_trainer.cnnkit")
    np.save(out + name + "_input.npy", x)
    np.save(out + name + "_output.npy", m.forward(x))
