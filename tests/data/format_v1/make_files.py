"""Writes the files in this folder with the cnnkit release of the day (0.1.0, file format v1).

Kept so that later releases prove they still load what users saved: tests/test_compat.py loads
them and checks the outputs. Not run by the tests; rerun only to add a new format's files.
"""

import numpy as np

import cnnkit as ck

ck.manual_seed(123)
out = "tests/data/format_v1/"
model = ck.Sequential([
    ck.Conv2d(1, 4, 3, padding=1), ck.BatchNorm2d(4), ck.ReLU(),
    ck.Conv2d(4, 4, (3, 1), stride=(1, 2), padding=(1, 0), dilation=1, groups=2, bias=False),
    ck.BatchNorm2d(4, affine=False), ck.LeakyReLU(0.2), ck.MaxPool2d(2), ck.Sigmoid(),
    ck.BatchNorm2d(4, track_running_stats=False),
    ck.AvgPool2d(2, ceil_mode=True, count_include_pad=False), ck.Tanh(), ck.Flatten(),
    ck.Dropout(0.25), ck.Linear(8, 8, bias=False), ck.ReLU(), ck.Linear(8, 3),
])  # fmt: skip
x = np.random.default_rng(0).random((5, 1, 8, 8)).astype(np.float32)
# two training epochs, so the running statistics are not their initial values
t = ck.Trainer(model, optimizer=ck.optim.SGD(lr=0.1, momentum=0.9), device="cpu", seed=3)
t.fit(x, np.array([0, 1, 2, 0, 1]), epochs=2, batch_size=5, verbose=0)
ck.save(model, out + "all_layers.cnnkit")
ck.save(t, out + "all_layers_trainer.cnnkit")
np.save(out + "all_layers_input.npy", x)
np.save(out + "all_layers_output.npy", model.forward(x))
