#!/usr/bin/env bash
# The GPU check, in one go, for a machine with an NVIDIA GPU (written for one H200) and no
# network: GPU summary, build + install for sm_90, the CUDA tests, a CPU smoke test, the
# benchmark table (bench/gpu_bench.py: ours vs PyTorch), then compute-sanitizer memcheck and
# racecheck on a short workload where compute-sanitizer exists. Every stage runs under a
# timeout inside one 470-second budget (the script ends in under 8 minutes), and a summary table
# is printed at the end whatever failed. The benchmark runs before the sanitizers so that a slow
# sanitizer can never cost the table.
#
#   bench/gpu_check.sh                      # logs, junit XML, gpu_bench.{json,md} in $OUT
#   OUT=/tmp/gpu bench/gpu_check.sh         # (default: build/gpu_check)
#   CNNKIT_GPU_CHECK_SKIP_BUILD=1 bench/gpu_check.sh   # reuse the installed cnnkit
#
# Needs: python with numpy, pytest, scikit-build-core, pybind11, cmake, ninja, nvcc, and a CUDA
# build of torch for the benchmark (tqdm is stubbed when missing; nothing is downloaded).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
OUT="${OUT:-$ROOT/build/gpu_check}"
mkdir -p "$OUT"
export OUT
T0=$(date +%s)
DEADLINE=$((T0 + 470))
SUMMARY=()

note_of() {  # the interesting last line of a stage log
    local log="$1"
    grep -E "[0-9]+ (passed|failed|error|skipped)|ERROR SUMMARY|RACECHECK SUMMARY|Successfully installed|Error|error:" "$log" 2>/dev/null \
        | tail -1 | cut -c1-90
}

# run_stage NAME CAP_SECONDS COMMAND... : runs under min(CAP, time left), logs to $OUT/NAME.log
run_stage() {
    local name="$1" cap="$2"
    shift 2
    local now left t start rc status log
    now=$(date +%s)
    left=$((DEADLINE - now))
    log="$OUT/$name.log"
    if ((left < 20)); then
        SUMMARY+=("$name|SKIPPED (out of time)|0|")
        return
    fi
    t=$((cap < left ? cap : left))
    echo
    echo "==== $name (timeout ${t}s; $((now - T0))s elapsed)"
    start=$(date +%s)
    timeout --kill-after=10 "$t" "$@" 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    case $rc in
        0) status="OK" ;;
        124 | 137) status="TIMEOUT after ${t}s" ;;
        *) status="FAILED (exit $rc)" ;;
    esac
    SUMMARY+=("$name|$status|$(($(date +%s) - start))|$(note_of "$log")")
}

skip_stage() { SUMMARY+=("$1|SKIPPED ($2)|0|"); }

print_summary() {
    echo
    echo "================================ gpu_check summary ================================"
    printf "%-11s %-38s %5s  %s\n" "stage" "result" "secs" "note"
    for row in "${SUMMARY[@]}"; do
        IFS='|' read -r n s secs note <<< "$row"
        printf "%-11s %-38s %5s  %s\n" "$n" "$s" "$secs" "$note"
    done
    echo "total: $(($(date +%s) - T0)) s; logs and results in $OUT"
    if [[ -f "$OUT/gpu_bench.md" ]]; then
        echo
        cat "$OUT/gpu_bench.md"
    fi
    printf "%s\n" "${SUMMARY[@]}" > "$OUT/summary.txt"
}
trap print_summary EXIT

# ---- environment ------------------------------------------------------------------------------
gpu_info() {
    nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv || return 1
    nvidia-smi -L
    nvcc --version | tail -2
    python --version
    python -c "import numpy; print('numpy', numpy.__version__)"
    python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'available', torch.cuda.is_available())" 2>&1 | tail -1
    command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2> /dev/null || true
}
run_stage gpu 30 bash -c "$(declare -f gpu_info); gpu_info"

# tqdm is a dependency of cnnkit's Trainer; with no network, stand in a no-op one if missing
if ! python -c "import tqdm" 2> /dev/null; then
    mkdir -p "$OUT/pyshim/tqdm"
    cat > "$OUT/pyshim/tqdm/__init__.py" << 'EOF'
"""No-op stand-in for tqdm (bench/gpu_check.sh: the machine has no tqdm and no network)."""


class tqdm:  # noqa: N801
    def __init__(self, iterable=None, *args, **kwargs):
        self.iterable, self.n = iterable, kwargs.get("initial", 0)

    def __iter__(self):
        return iter(self.iterable or ())

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n=1):
        self.n += n

    @classmethod
    def write(cls, s, *args, **kwargs):
        print(s)

    def __getattr__(self, name):
        return lambda *args, **kwargs: None
EOF
    echo "from tqdm import tqdm  # noqa: F401" > "$OUT/pyshim/tqdm/std.py"
    export PYTHONPATH="$OUT/pyshim${PYTHONPATH:+:$PYTHONPATH}"
    echo "note: tqdm not installed; using the no-op stand-in in $OUT/pyshim"
fi

# ---- build and install ------------------------------------------------------------------------
if [[ -n "${CNNKIT_GPU_CHECK_SKIP_BUILD:-}" ]]; then
    skip_stage build "CNNKIT_GPU_CHECK_SKIP_BUILD"
else
    run_stage build 240 python -m pip install --no-build-isolation --no-deps --no-index -v . \
        -Ccmake.define.CNNKIT_CUDA_ARCHITECTURES=90
fi
# import from outside the source tree, so the installed package is the one tested
run_stage import 40 bash -c "cd /tmp && python -c \"
import cnnkit
print('cnnkit', cnnkit.__version__, 'built_with_cuda', cnnkit.built_with_cuda(),
      'cuda_available', cnnkit.cuda_available())
assert cnnkit.built_with_cuda(), 'cnnkit was built without CUDA'
assert cnnkit.cuda_available(), 'cnnkit sees no CUDA device'
print('device:', cnnkit._core.cuda_device_name(0))
\""

# ---- tests ------------------------------------------------------------------------------------
run_stage cuda-tests 200 python -m pytest -p no:cacheprovider -q -rfE \
    --junitxml="$OUT/test_cuda.xml" tests/test_cuda.py tests/test_nccl.py tests/test_grad_reducer.py \
    "tests/test_trainer.py::test_fit_on_cuda_matches_cpu"
run_stage cpu-smoke 60 python -m pytest -p no:cacheprovider -q -x tests/test_kernels.py \
    tests/test_model.py tests/test_optim.py

# ---- benchmark table --------------------------------------------------------------------------
run_stage bench 180 python bench/gpu_bench.py --out "$OUT"

# ---- compute-sanitizer ------------------------------------------------------------------------
SAN="$(command -v compute-sanitizer || true)"
[[ -z "$SAN" && -x /usr/local/cuda/bin/compute-sanitizer ]] && SAN=/usr/local/cuda/bin/compute-sanitizer
if [[ -z "$SAN" ]]; then
    skip_stage memcheck "no compute-sanitizer"
    skip_stage racecheck "no compute-sanitizer"
else
    # exact-size, uncached device buffers so memcheck sees every buffer's real bounds;
    # synchronous launches so a fault is reported at the kernel that made it
    run_stage memcheck 150 env CNNKIT_CUDA_NO_CACHE=1 CNNKIT_CUDA_LAUNCH_BLOCKING=1 \
        "$SAN" --tool memcheck --error-exitcode 3 --print-limit 20 \
        python bench/gpu_bench.py --smoke
    # shared-memory hazards in the tiled GEMM (all three tile shapes, all transposes) and the
    # block reductions
    run_stage racecheck 90 "$SAN" --tool racecheck --error-exitcode 3 --print-limit 20 \
        python -c "
import numpy as np
import cnnkit as ck
from cnnkit import _core
from cnnkit._core import _testing
rng = np.random.default_rng(0)
for M, N, K in [(9, 130, 40), (70, 65, 33), (1450, 1460, 9), (6, 25, 600)]:
    for ta in (False, True):
        for tb in (False, True):
            a = rng.standard_normal((K, M) if ta else (M, K)).astype(np.float32)
            b = rng.standard_normal((N, K) if tb else (K, N)).astype(np.float32)
            _testing.cuda_sgemm(a, b, ta, tb)
_core.softmax_cross_entropy(rng.standard_normal((40, 300)).astype(np.float32),
                            rng.integers(0, 300, 40), device='cuda')
_core.mse_loss(np.ones(5000, np.float32), np.zeros(5000, np.float32), device='cuda')
m = ck.Sequential([ck.Conv2d(2, 4, 3, groups=2), ck.BatchNorm2d(4), ck.Flatten(),
                   ck.Linear(4 * 6 * 6, 3)]).to('cuda')
m.forward(rng.standard_normal((5, 2, 8, 8)).astype(np.float32), training=True)
m.backward(np.ones((5, 3), np.float32))
_core.cuda_synchronize()
print('racecheck workload done')
"
fi
