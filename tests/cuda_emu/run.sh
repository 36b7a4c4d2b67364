#!/usr/bin/env bash
# Development aid for machines without a GPU: compile csrc/cuda/*.cu as plain C++ against the CPU
# emulation in this folder (cuda_emu.h), build the Python module from that, and run the CUDA
# tests (tests/test_cuda.py, or the pytest arguments given) with device="cuda" meaning "the CUDA
# kernels, emulated". It checks kernel index math, bounds (ASAN=1), barrier placement and the
# host logic; it says nothing about speed or the GPU memory model. NOT a substitute for
# bench/gpu_check.sh on a real GPU.
#
#   tests/cuda_emu/run.sh                       # build + python -m pytest tests/test_cuda.py
#   ASAN=1 tests/cuda_emu/run.sh -x -q          # the same under AddressSanitizer
#   CNNKIT_EMU_REVERSE=1 tests/cuda_emu/run.sh  # threads of a block in the opposite order
#   tests/cuda_emu/run.sh tests/test_cuda.py -k gemm
#   tests/cuda_emu/run.sh /tmp/script.py         # any script not named test_*.py runs as is
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
out="${CNNKIT_EMU_BUILD:-$root/build/cuda-emu${ASAN:+-asan}}"
mkdir -p "$out/obj" "$out/pkg"
CXX="${CXX:-g++}"
flags=(-std=c++17 -O1 -g -fPIC -fopenmp -DCNNKIT_WITH_CUDA -DCNNKIT_CUDA_EMULATION
       -I"$root/csrc" -I"$root/tests/cuda_emu" -Wall -Wextra -Wno-unused-parameter
       -Wno-unknown-pragmas)
if [[ -n "${ASAN:-}" ]]; then flags+=(-fsanitize=address -fno-omit-frame-pointer); fi
pyinc=$(python -m pybind11 --includes)
version=$(python -c "import re; print(re.search(r'\nversion = \"([^\"]+)\"', open('pyproject.toml').read()).group(1))")
suffix=$(python -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))")

# every core source CMakeLists.txt lists (C++ and CUDA), but not the CPU-only stub
mapfile -t sources < <(python - <<'EOF'
import re
text = open("CMakeLists.txt").read()
seen = []
for m in re.finditer(r"csrc/[\w/]+\.(?:cpp|cu)\b", text):
    p = m.group(0)
    if p not in seen and not p.endswith("stub.cpp") and "bindings" not in p:
        seen.append(p)
print("\n".join(seen))
EOF
)
sources+=(tests/cuda_emu/cuda_emu.cpp csrc/bindings/*.cpp)  # every binding file

compile() {
    local src="$1" obj="$out/obj/$(echo "$1" | tr '/' '_').o" extra=()
    if [[ "$src" == *norm_avx2.cpp ]]; then extra+=(-mavx2 -ffp-contract=off)  # as CMakeLists.txt
    elif [[ "$src" == *_avx2.cpp ]]; then extra+=(-mavx2 -mfma); fi
    [[ "$src" == *_avx512.cpp ]] && extra+=(-mavx512f -mavx512bw -mavx512vl -mavx512dq -mfma)
    [[ "$src" == *eltwise_avx2.cpp ]] && extra+=(-ffp-contract=off)
    [[ "$src" == csrc/bindings/* ]] && extra+=($pyinc)
    [[ "$src" == *module.cpp ]] && extra+=(-DCNNKIT_VERSION=\"$version\")
    [[ "$src" == *.cu ]] && extra+=(-x c++)
    [[ "$src" == *cuda_emu.cpp ]] && extra+=(-Wno-clobbered)
    if [[ ! -f "$obj" || "$src" -nt "$obj" || -n "$(find csrc tests/cuda_emu -newer "$obj" -name '*.h' -o -newer "$obj" -name '*.cuh' | head -1)" ]]; then
        echo "  compile $src"
        "$CXX" "${flags[@]}" "${extra[@]}" -c "$src" -o "$obj"
    fi
}
echo "== building the emulated CUDA module in $out"
jobs=$(nproc)
for src in "${sources[@]}"; do
    compile "$src" &
    while (( $(jobs -rp | wc -l) >= jobs )); do wait -n; done
done
wait
objs=()
for src in "${sources[@]}"; do objs+=("$out/obj/$(echo "$src" | tr '/' '_').o"); done
"$CXX" "${flags[@]}" -shared "${objs[@]}" -o "$out/pkg/_core$suffix" -ldl
# the stand-in for libnccl.so.2 that the NCCL tests open (tests/cuda_emu/fake_nccl.cpp)
if [[ ! -f "$out/libfakenccl.so" || tests/cuda_emu/fake_nccl.cpp -nt "$out/libfakenccl.so" ]]; then
    echo "  compile tests/cuda_emu/fake_nccl.cpp"
    "$CXX" -std=c++17 -O1 -g -fPIC -shared -Wall -Wextra tests/cuda_emu/fake_nccl.cpp \
        -o "$out/libfakenccl.so" -lrt
fi
rm -rf "$out/pkg/cnnkit"
cp -r python/cnnkit "$out/pkg/cnnkit"
rm -f "$out/pkg/cnnkit"/_core*.so
mv "$out/pkg/_core$suffix" "$out/pkg/cnnkit/"

echo "== running the tests against the emulated CUDA kernels"
args=("$@")
[[ ${#args[@]} -eq 0 ]] && args=(tests/test_cuda.py -q)
# An editable install of cnnkit puts an import hook ahead of PYTHONPATH: drop it in the test
# process, so that `import cnnkit` finds the emulated package.
mkdir -p "$out/site"
cat > "$out/site/sitecustomize.py" <<'PYEOF'
import sys
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in type(f).__module__]
PYEOF
export PYTHONPATH="$out/site:$out/pkg${PYTHONPATH:+:$PYTHONPATH}"
export CNNKIT_CUDA_EMULATED=1
export CNNKIT_EMU_FAKE_NCCL="$out/libfakenccl.so"
if [[ -n "${ASAN:-}" ]]; then
    # libstdc++ too, or the __cxa_throw interceptor finds no real function and aborts on throw
    export LD_PRELOAD="$("$CXX" -print-file-name=libasan.so) $("$CXX" -print-file-name=libstdc++.so)"
    export ASAN_OPTIONS="detect_leaks=0:detect_stack_use_after_return=0:allocator_may_return_null=1:${ASAN_OPTIONS:-}"
fi
python -c "import cnnkit; assert cnnkit.cuda_available(), 'emulated module did not load'; print('cnnkit from', cnnkit.__file__, '| device:', cnnkit._core.cuda_device_name(0))"
if [[ "${args[0]}" == *.py && "${args[0]}" != tests/* && "${args[0]}" != *test_*.py ]]; then
    exec python "${args[@]}"  # a plain script
fi
exec python -m pytest -p no:cacheprovider "${args[@]}"
