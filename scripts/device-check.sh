#!/usr/bin/env bash
# The on-device checks in one go, every device emulated (README, "On devices"); CI runs this
# script. Each check prints PASS, FAIL or SKIP (a toolchain or emulator that cannot be
# installed here is reported and skipped, never counted as passed); the last line is
# "N passed, N failed", and the exit status is 1 if any check failed.
#
#   1. AArch64 (phones, Raspberry Pi, Graviton): the test suite cross-built for
#      aarch64-unknown-linux-gnu and run under qemu-aarch64, with std and without; every
#      reference trajectory replayed there; the replayed parameters compared with the x86-64
#      ones bit for bit; the NEON kernels shown to be the ones that run (QEMU's log of the
#      instructions it translated, by function).
#   2. Cortex-M4F: the firmware of examples/cortex-m fine-tunes its classifier under
#      qemu-system-arm (mps2-an386) and must print PASS; its flash and RAM (llvm-size) and the
#      instructions per parameter per step of came::step (examples/cortex-m, binary `cost`).
#   3. Build checks: riscv32imac-unknown-none-elf (no FPU: software floats) and
#      wasm32-unknown-unknown.
#
#   scripts/device-check.sh            # installs what it needs (apt-get, rustup) where it can
#
# Debian packages: gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user qemu-system-arm.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

passed=0
failed=0
skipped=0
pass() { echo "PASS $*"; passed=$((passed + 1)); }
fail() { echo "FAIL $*"; failed=$((failed + 1)); }
skip() { echo "SKIP $*"; skipped=$((skipped + 1)); }
section() { printf '\n=== %s\n' "$*"; }
# runs a check: check NAME COMMAND...; its output is shown
check() {
    local name=$1
    shift
    if "$@"; then pass "$name"; else fail "$name"; fi
}

section "installing: cross linker, emulators, Rust targets"
sudo=()
[ "$(id -u)" = 0 ] || sudo=(sudo)
need=()
command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 || need+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
command -v qemu-aarch64 >/dev/null 2>&1 || need+=(qemu-user)
command -v qemu-system-arm >/dev/null 2>&1 || need+=(qemu-system-arm)
if [ ${#need[@]} -gt 0 ]; then
    echo "apt-get install ${need[*]}"
    { "${sudo[@]}" apt-get update -qq &&
        DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
            "${need[@]}"; } >/dev/null 2>&1 || echo "apt-get could not install ${need[*]}"
fi
have_target() { rustup target add "$1" >/dev/null 2>&1; }
rustup component add llvm-tools >/dev/null 2>&1 || true
llvm_bin="$(rustc --print sysroot)/lib/rustlib/$(rustc -vV | sed -n 's/^host: //p')/bin"

# --- 1. AArch64 -----------------------------------------------------------------------------
section "aarch64-unknown-linux-gnu under qemu-aarch64"
a64=aarch64-unknown-linux-gnu
if ! have_target $a64; then
    skip "aarch64: the Rust target $a64 cannot be installed here"
elif ! command -v aarch64-linux-gnu-gcc >/dev/null 2>&1; then
    skip "aarch64: no cross linker (Debian package gcc-aarch64-linux-gnu)"
elif ! command -v qemu-aarch64 >/dev/null 2>&1; then
    skip "aarch64: no user-mode emulator (Debian package qemu-user)"
else
    export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
    export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu"
    check "aarch64: the test suite with std (NEON kernels, threads, checkpoints)" \
        cargo test --release --target $a64 --features std
    check "aarch64: the test suite without std (libm maths)" \
        cargo test --release --target $a64 --no-default-features --lib --tests

    refs=(tests/data/golden/*.json tests/data/golden/lowp/*.json tests/data/golden/adamw/*.json
        tests/data/golden/resume/*.json)
    cargo build --release --features std --example replay
    cargo build --release --target $a64 --features std --example replay
    x86_out=$(mktemp -d)
    a64_out=$(mktemp -d)
    for arch in x86-64 aarch64; do
        if [ $arch = x86-64 ]; then
            target/release/examples/replay --out "$x86_out" "${refs[@]}" >"$x86_out/report"
        else
            qemu-aarch64 -L /usr/aarch64-linux-gnu target/$a64/release/examples/replay \
                --out "$a64_out" "${refs[@]}" >"$a64_out/report"
        fi
        if [ $? = 0 ]; then
            pass "$arch: ${#refs[@]} reference files replayed within their tolerances"
        else
            fail "$arch: a reference file replayed outside its tolerance"
        fi
    done
    echo "worst error as a fraction of the tolerance: file, x86-64 (AVX2), aarch64 (NEON)"
    paste <(awk '/worst/ {print $1, $3}' "$x86_out/report") \
        <(awk '/worst/ {print $3}' "$a64_out/report") |
        awk '{printf "  %-40s %8s %8s\n", $1, $2, $3}'
    same=0
    differ=()
    for f in "$x86_out"/*.json; do
        name=$(basename "$f")
        if cmp -s "$f" "$a64_out/$name"; then same=$((same + 1)); else differ+=("${name%.json}"); fi
    done
    echo "parameters after every step, bit for bit equal on both: $same files;" \
        "different in the last bits: ${#differ[@]}${differ[*]:+ (${differ[*]})}"
    rm -rf "$x86_out" "$a64_out"

    # the instructions QEMU translated while replaying a 32 x 48 matrix, by function: the
    # vector float instructions (NEON, 4 x f32) all sit in the crate's kernels
    log=$(mktemp)
    qemu-aarch64 -L /usr/aarch64-linux-gnu -d in_asm -D "$log" \
        target/$a64/release/examples/replay tests/data/golden/f32_default_32x48.json >/dev/null
    neon=$(awk '/^IN:/ {fn = $2}
        /[ \t](fadd|fsub|fmul|fdiv|fsqrt|fmla|fmax|fmin)[ \t]+v[0-9]+\.4s/ {n[fn]++}
        END {for (f in n) print n[f], f}' "$log" | sort -rn | c++filt)
    rm -f "$log"
    echo "NEON float instructions (v.4s) run, by function:"
    echo "$neon"
    if [ -n "$neon" ] && ! echo "$neon" | grep -qv ' came::'; then
        pass "aarch64: the NEON kernels run (every v.4s float instruction run is in came::)"
    else
        fail "aarch64: no NEON float instruction ran in the crate's kernels"
    fi
fi

# --- 2. Cortex-M4F --------------------------------------------------------------------------
section "thumbv7em-none-eabihf (Cortex-M4F) under qemu-system-arm, mps2-an386"
if ! have_target thumbv7em-none-eabihf; then
    skip "cortex-m: the Rust target thumbv7em-none-eabihf cannot be installed here"
elif ! command -v qemu-system-arm >/dev/null 2>&1; then
    skip "cortex-m: no system emulator (Debian package qemu-system-arm)"
else
    # the firmware crate is not in the workspace: its format and lints are checked here
    check "cortex-m: cargo fmt and clippy of the firmware crate" \
        bash -c "cd examples/cortex-m && cargo fmt --check && cargo clippy --release -- -D warnings"
    (cd examples/cortex-m && cargo build --release --bins)
    elf=examples/cortex-m/target/thumbv7em-none-eabihf/release
    # the runner of examples/cortex-m/.cargo/config.toml, with a time limit
    run_fw() {
        timeout 300 qemu-system-arm -machine mps2-an386 -cpu cortex-m4 -nographic -monitor none \
            -serial none -semihosting-config enable=on,target=native -icount shift=0 -kernel "$1"
    }
    out=$(run_fw $elf/came-cortex-m)
    status=$?
    echo "$out"
    if [ $status = 0 ] && echo "$out" | grep -Eq '^result loss=[0-9.]+ accuracy=[0-9.]+ target=[0-9.]+ PASS$'; then
        pass "cortex-m: the firmware fine-tunes its classifier below the target loss"
    else
        fail "cortex-m: the firmware did not reach its target (exit status $status)"
    fi
    out=$(run_fw $elf/cost)
    status=$?
    echo "$out"
    if [ $status = 0 ] && [ "$(echo "$out" | grep -c '^cost ')" = 4 ]; then
        pass "cortex-m: instructions per parameter per step counted"
    else
        fail "cortex-m: the cost firmware failed (exit status $status)"
    fi
    echo "flash (text + data) and static RAM (data + bss) of the firmware, bytes:"
    "$llvm_bin/llvm-size" $elf/came-cortex-m $elf/cost
fi

# --- 3. Build checks ------------------------------------------------------------------------
section "build checks: riscv32imac-unknown-none-elf, wasm32-unknown-unknown"
if have_target riscv32imac-unknown-none-elf; then
    check "riscv32imac: the crate (no FPU: software floats)" \
        cargo build --release --no-default-features --target riscv32imac-unknown-none-elf
    check "riscv32imac: a no_std static library that steps" \
        bash -c "cd .ci/nostd-check && cargo build --release --target riscv32imac-unknown-none-elf"
else
    skip "riscv32imac: the Rust target riscv32imac-unknown-none-elf cannot be installed here"
fi
if have_target wasm32-unknown-unknown; then
    check "wasm32: the crate without std" \
        cargo build --release --no-default-features --target wasm32-unknown-unknown
    check "wasm32: the crate with std (Came, checkpoints; one thread)" \
        cargo build --release --features std --target wasm32-unknown-unknown
else
    skip "wasm32: the Rust target wasm32-unknown-unknown cannot be installed here"
fi

cd "$root"
echo
[ $skipped = 0 ] || echo "$skipped skipped (see SKIP above)"
echo "$passed passed, $failed failed"
[ $failed = 0 ]
