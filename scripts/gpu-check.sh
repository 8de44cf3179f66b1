#!/usr/bin/env bash
# The GPU checks in one go, for a machine with an NVIDIA GPU:
#   - the parity tests (every reference trajectory on the GPU, the 16-bit ones of lowp/ among
#     them; GPU against the CPU kernels on large odd shapes; bf16, f16 and mixed parameters and
#     gradients against the CPU bit for bit where no sum depends on its order, rounded to
#     nearest and stochastically; 16-bit overflow and refused momentum formats; determinism,
#     the on-device guard) and the NVRTC compile of every kernel instantiation;
#   - the bench on the GPU (f32, and bf16 on 4096 x 4096): 4096 x 4096, 8192 x 8192 and a GPT-2 small step, with the
#     achieved memory bandwidth at 32 bytes per element beside a device-to-device copy of as many
#     bytes;
#   - came-pytorch and torch's fused AdamW on the same GPU and shapes, where PyTorch is installed.
#
#   scripts/gpu-check.sh                      # builds with cargo (--features cuda)
#   CAME_GPU_BIN=DIR scripts/gpu-check.sh     # prebuilt x86-64 binaries: DIR/cuda-tests (a copy
#                                             # of the test binary suite), DIR/bench
#
# Run it from anywhere; it works in the repository root. libcuda comes with the NVIDIA driver;
# libnvrtc from CUDA's lib64 (or a pip nvidia-cuda-nvrtc-cu12 wheel): put it on LD_LIBRARY_PATH
# if it is not found.
set -euo pipefail
cd "$(dirname "$0")/.."

for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
    if [ -d "$d" ]; then export LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"; fi
done

if [ -n "${CAME_GPU_BIN:-}" ]; then
    TESTS="$CAME_GPU_BIN/cuda-tests"
    BENCH="$CAME_GPU_BIN/bench"
else
    cargo build --release --features cuda --example bench
    TESTS=$(cargo test --release --features cuda --test suite --no-run --message-format=json 2>/dev/null \
        | grep -o '"executable":"[^"]*"' | tail -1 | cut -d'"' -f4)
    BENCH=target/release/examples/bench
fi

echo "=== device"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "nvidia-smi not found"

echo "=== parity tests (the GPU and NVRTC tests are #[ignore]d elsewhere: run them here)"
"$TESTS" cuda:: --include-ignored --nocapture --test-threads=1

echo "=== bench (bytes_per_elem is the floor; of_copy = copy time / step time)"
for shape in 4096x4096 8192x8192; do
    "$BENCH" --device cuda --shape "$shape" --steps 21
done
"$BENCH" --device cuda --shape 4096x4096 --steps 21 --dtype bf16
"$BENCH" --device cuda --model gpt2-small --steps 11

echo "=== NCCL: sharded steps with the collectives over NCCL, one rank per GPU, against one process"
if [ -n "${CAME_GPU_BIN:-}" ]; then
    DIST="$CAME_GPU_BIN/dist_check"
elif command -v mpicc >/dev/null 2>&1; then
    cargo build --release --features mpi,nccl --example dist_check
    DIST=target/release/examples/dist_check
else
    DIST=""
fi
if [ -n "$DIST" ] && [ -x "$DIST" ] && command -v mpirun >/dev/null 2>&1; then
    gpus=$(nvidia-smi -L 2>/dev/null | wc -l)
    as_root=()
    [ "$(id -u)" = 0 ] && as_root=(--allow-run-as-root)
    mpirun "${as_root[@]}" --oversubscribe -n "${gpus:-1}" "$DIST" --nccl --steps 3 \
        || echo "NCCL check failed (is libnccl on LD_LIBRARY_PATH? pip's nvidia-nccl-cu12 has one)"
else
    echo "skipped: needs mpirun and dist_check built with --features mpi,nccl"
fi

echo "=== PyTorch on the same GPU"
if python3 -c "import torch, came_pytorch; assert torch.cuda.is_available()" 2>/dev/null; then
    for shape in 4096x4096 8192x8192; do
        python3 scripts/bench_pytorch.py --device cuda --shape "$shape" --steps 11
    done
    python3 scripts/bench_pytorch.py --device cuda --model gpt2-small --steps 5
else
    echo "skipped: torch with CUDA and came-pytorch are not installed here"
fi
echo "=== done"
