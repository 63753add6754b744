#!/usr/bin/env bash
# The GPU visit of issue 16 (Triton 2:4 / 2:4+int4 kernels), one command on a lent GPU machine, ~5-8 minutes:
#   1. install the package (offline there: wheels carried in .whl/ first, then this checkout, no dependencies
#      fetched; the machine's image has torch, triton and transformers) and record the versions;
#   2. the tests: all of tests/nn/test_nn_triton.py (interpreter and compiled kernels against the reference) and
#      the CUDA tests of tests/nn/test_nn_kernels.py and tests/nn/test_nn_linear.py (native CPU kernels off:
#      building them is not what this visit is for);
#   3. python benchmarks/kernels_cuda.py --triton, spliced into a copy of docs/results/kernels_cuda.md.
#   4. compress() on CUDA (issue 13, item 4): SparseGPT and AWP on a random 8-block Llama (hidden 2048),
#      benchmarks/compression.py --scaling --device cuda, pages compression_cuda_{sparsegpt,awp}.md.
# Everything lands in OUT_DIR (default $OUT, the device tool's output folder): env.txt, tests.log, bench.log and
# kernels_cuda.md, the results page to copy over docs/results/kernels_cuda.md afterwards.
#
# Usage, from the repository root:  bash benchmarks/gpu_visit.sh [OUT_DIR]
#        here, without a GPU:        bash benchmarks/gpu_visit.sh --dry-run   (checks the steps, runs nothing)
set -uo pipefail

DRY_RUN=0
if [[ "${1:-}" == "--dry-run" ]]; then
    DRY_RUN=1
    shift
fi
OUT_DIR=${1:-${OUT:-/tmp/gpu_visit}}
PY=${PYTHON:-python3}
TEST_TIMEOUT=${TEST_TIMEOUT:-200}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-330}
COMPRESS_TIMEOUT=${COMPRESS_TIMEOUT:-150}
export PYTHONUNBUFFERED=1

step() {  # step NAME COMMAND...: print, then run unless --dry-run
    echo "== $1: ${*:2}"
    if [[ $DRY_RUN == 1 ]]; then
        return 0
    fi
    "${@:2}"
}

[[ -f pyproject.toml && -f benchmarks/kernels_cuda.py ]] || { echo "run from the repository root" >&2; exit 2; }
mkdir -p "$OUT_DIR"

# 1. install
if compgen -G ".whl/*.whl" >/dev/null; then
    step "carried wheels" "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
step "install optimum-awp[gpu] (no index: dependencies from the image)" \
    "$PY" -m pip install -q --no-index --no-deps --no-build-isolation -e ".[gpu]" \
    || echo "editable install failed: running from the checkout (PYTHONPATH)"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
step "environment" bash -c "{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; \
    $PY -c 'import torch, triton, transformers; print(\"torch\", torch.__version__, \"cuda\", torch.cuda.is_available(), \
    \"triton\", triton.__version__, \"transformers\", transformers.__version__)'; } 2>&1 | tee '$OUT_DIR/env.txt'"

# 2. tests (TRITON_INTERPRET unset: the interpreter tests set it themselves, the CUDA tests need it off)
step "CUDA tests" bash -c "unset TRITON_INTERPRET; OPTIMUM_AWP_CPU_ISA=none timeout $TEST_TIMEOUT $PY -m pytest -q \
    -p no:cacheprovider -k 'cuda or triton' tests/nn/test_nn_triton.py tests/nn/test_nn_kernels.py \
    tests/nn/test_nn_linear.py 2>&1 | tee '$OUT_DIR/tests.log'"

# 3. benchmark, into a copy of the results page
step "results page" cp docs/results/kernels_cuda.md "$OUT_DIR/kernels_cuda.md"
step "Triton benchmark" bash -c "unset TRITON_INTERPRET; timeout $BENCH_TIMEOUT $PY benchmarks/kernels_cuda.py --triton \
    --out '$OUT_DIR/kernels_cuda.md' 2>&1 | tee '$OUT_DIR/bench.log'"

# 4. issue 13, item 4: compress() on CUDA, SparseGPT and AWP on one random Llama-shaped model (8 blocks, hidden 2048),
#    in memory, every block offloaded to disk, and under a max_memory budget; pages in OUT_DIR only
for method in sparsegpt awp; do
    step "compression on CUDA ($method)" bash -c "timeout $COMPRESS_TIMEOUT $PY benchmarks/compression.py --scaling \
        --device cuda --method $method --depths 8 --hidden 2048 --widths 2048 --scaling-nsamples 32 \
        --scaling-seqlen 512 --out '$OUT_DIR/compression_cuda_$method.md' 2>&1 | tee '$OUT_DIR/compression_$method.log'"
done
echo "== done: $(ls "$OUT_DIR")"
