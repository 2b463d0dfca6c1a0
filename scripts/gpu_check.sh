#!/usr/bin/env bash
# The one command to run on a machine with TensorRT and an NVIDIA GPU:
#
#   scripts/gpu_check.sh            (WORK=build/gpu_check PRECISIONS="fp32 fp16" TensorRT_ROOT=... or
#                                    TensorRT_INCLUDE=<headers' folder> with a pip-installed TensorRT, to change)
#
# In one go, for the bundled model: export, build the TensorRT engines per precision, `lru-deploy check` them,
# generate on the TensorRT backend (same tokens as ONNX Runtime for the same seed?), time prefill and step
# (with and without CUDA graphs), then build and run the C++ example. It stops at the first failure, naming
# the stage, and fails at once with a clear message where TensorRT, cuda-python, a GPU or cmake is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
WORK=${WORK:-build/gpu_check}
PRECISIONS=${PRECISIONS:-fp32 fp16}
PROMPT=${PROMPT:-"def "}
declare -a TIMES=()

fail() { echo "gpu_check: $*" >&2; exit 1; }
stage() {  # stage NAME CMD...: run, time, and stop with the stage's name on failure
    local name=$1; shift
    echo; echo "== $name"
    local t0; t0=$(date +%s%N)
    "$@" || fail "stage '$name' failed (exit $?): $*"
    local ms=$(( ($(date +%s%N) - t0) / 1000000 ))
    TIMES+=("$(printf '%-44s %6d.%03d s' "$name" $((ms / 1000)) $((ms % 1000)))")
}

# ---- fail fast: TensorRT, cuda-python, a GPU, cmake, the bundled model
"$PY" - <<'EOF' || exit 1
import sys
from lru_deploy import trt_env
from lru_deploy.checkpoints import default_model_dir
from lru_deploy.errors import LRUDeployError
try:
    info = trt_env.preflight()
except LRUDeployError as e:
    sys.exit("gpu_check: " + e.render())
if trt_env.import_cudart() is None:
    sys.exit("gpu_check: cuda-python is not installed (the TensorRT runtime backend needs it)\n"
             "hint: pip install 'lru-deploy[trt-cu12]' (or [trt-cu13] with a driver for CUDA 13)")
if not (default_model_dir() / "config.json").is_file():
    sys.exit(f"gpu_check: the bundled model is missing at {default_model_dir()}")
print(f"GPU {info.gpu_name} (compute capability {info.compute_capability}), TensorRT {info.trt_version}, "
      f"{info.platform}")
EOF
command -v cmake >/dev/null || fail "cmake is not installed (needed for the C++ example)"
LRU=("$PY" -m lru_deploy.cli)
mkdir -p "$WORK"

# ---- export, build, check
PREC_CSV=$(echo "$PRECISIONS" | tr ' ' ',')
stage "export ($PREC_CSV)" "${LRU[@]}" export default --out "$WORK/export" --precision "$PREC_CSV"
for p in $PRECISIONS; do
    stage "build $p engines" "${LRU[@]}" build "$WORK/export" --precision "$p" --out "$WORK/engines/$p" \
        --timing-cache "$WORK/timing.cache"
done
for p in $PRECISIONS; do
    stage "check $p engines (Polygraphy, TensorRT)" "${LRU[@]}" check "$WORK/engines/$p" --report "$WORK/report-$p"
done

# ---- generate on TensorRT; same tokens as ONNX Runtime; prefill and step timings
FIRST=$(echo "$PRECISIONS" | awk '{print $1}')
stage "generate + timings (Python, TensorRT $FIRST)" "$PY" - "$WORK" "$FIRST" "$PROMPT" <<'EOF'
import sys, time
import numpy as np
from lru_deploy.runtime import decode, encode, open_session
work, prec, prompt = sys.argv[1:4]
ort = open_session(f"{work}/export", precision=prec)
with open_session(f"{work}/engines/{prec}") as trt:
    a = [int(t[0]) for t in trt.generate(encode(prompt), 200, 0.8, 20, 0)]
    b = [int(t[0]) for t in ort.generate(encode(prompt), 200, 0.8, 20, 0)]
    print("--- TensorRT sample (seed 0) ---")
    print(prompt + decode(a))
    print("---")
    same = a == b
    first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
    print(f"same 200 tokens as ONNX Runtime {prec}: {same}" + ("" if same else f" (first difference at {first})"))
    greedy = [int(t[0]) for t in trt.generate(encode(prompt), 200, 0.0, 0, 0)]
    with open(f"{work}/greedy_python.txt", "wb") as f:
        f.write(prompt.encode() + bytes(greedy) + b"\n")
    ids = np.random.default_rng(0).integers(0, 256, (1, 4096))
    for graphs in (True, False):
        trt.cuda_graphs = graphs
        trt.prefill(ids[:, :64])
        t0 = time.perf_counter(); _, st = trt.prefill(ids); t_pre = time.perf_counter() - t0
        tok = ids[:, -1]
        for _ in range(20):
            _, st = trt.step(tok, st)
        n = 2000
        t0 = time.perf_counter()
        for _ in range(n):
            _, st = trt.step(tok, st)
        t_step = (time.perf_counter() - t0) / n
        print(f"CUDA graphs {'on ' if graphs else 'off'}: prefill 4096 tokens {t_pre * 1e3:.2f} ms "
              f"({4096 / t_pre:,.0f} tokens/s); step {t_step * 1e6:.1f} us (incl. logits copy to host)")
EOF
if "${LRU[@]}" generate --help >/dev/null 2>&1; then
    stage "lru-deploy generate (CLI, TensorRT $FIRST)" "${LRU[@]}" generate "$WORK/engines/$FIRST" \
        --prompt "$PROMPT" --max-new-tokens 120 --seed 0
else
    echo; echo "== lru-deploy generate: not in this CLI yet, skipped (the Python API above covered generation)"
fi

# ---- C++: configure, build, run the example
# CMake takes TensorRT from TensorRT_ROOT (or TENSORRT_ROOT), or the headers from TensorRT_INCLUDE and the library
# from the tensorrt_libs wheel of $PY.
TRT_ROOT=${TensorRT_ROOT:-${TENSORRT_ROOT:-}}
stage "cmake configure" cmake -S cpp -B "$WORK/cpp" -DCMAKE_BUILD_TYPE=Release -DPython3_EXECUTABLE="$("$PY" -c 'import sys; print(sys.executable)')" \
    ${TRT_ROOT:+-DTensorRT_ROOT="$TRT_ROOT"} ${TensorRT_INCLUDE:+-DTensorRT_INCLUDE="$TensorRT_INCLUDE"}
stage "cmake build" cmake --build "$WORK/cpp" -j
stage "C++ compatibility rules (compat_test, $FIRST manifest)" "$WORK/cpp/compat_test" "$WORK/engines/$FIRST"
[ -x "$WORK/cpp/lru_generate" ] || fail "CMake did not build lru_generate: see its TensorRT/CUDA messages above \
(pass TensorRT_ROOT=<folder with include/NvInferRuntime.h and lib/>, or TensorRT_INCLUDE=<headers' folder> with \
the pip wheel's library)"
run_cpp_greedy() { "$WORK/cpp/lru_generate" "$WORK/engines/$FIRST" --prompt "$PROMPT" --max-new-tokens 200 \
    --temperature 0 | tee "$WORK/greedy_cpp.txt"; }
stage "C++ example (greedy, $FIRST)" run_cpp_greedy
if cmp -s "$WORK/greedy_cpp.txt" "$WORK/greedy_python.txt"; then
    echo "C++ greedy text equals the Python TensorRT session's: yes"
else
    echo "C++ greedy text equals the Python TensorRT session's: NO (compare $WORK/greedy_*.txt)"
fi
stage "C++ example without CUDA graphs" "$WORK/cpp/lru_generate" "$WORK/engines/$FIRST" --prompt "$PROMPT" \
    --max-new-tokens 200 --temperature 0 --no-cuda-graph

echo; echo "== timings"
printf '%s\n' "${TIMES[@]}"
echo "gpu_check: all stages passed ($WORK)"
