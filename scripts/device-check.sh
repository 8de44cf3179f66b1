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
#   CAME_DEVICES_REQUIRED="aarch64 cortex-m" scripts/device-check.sh
#                                      # a skipped check of these groups counts as failed (CI)
#
# Debian packages: gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user qemu-system-arm.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
target_dir=${CARGO_TARGET_DIR:-$root/target}
firmware_dir=${CARGO_TARGET_DIR:-$root/examples/cortex-m/target}

passed=0
failed=0
skipped=0
# each result line ends with the seconds since the previous one (a budget to plan CI with)
mark=$SECONDS
report() { echo "$* ($((SECONDS - mark)) s)"; mark=$SECONDS; }
pass() { report PASS "$@"; passed=$((passed + 1)); }
fail() { report FAIL "$@"; failed=$((failed + 1)); }
# skip GROUP MESSAGE: a check that cannot run here; failed if GROUP is required
skip() {
    if [[ " ${CAME_DEVICES_REQUIRED:-} " == *" $1 "* ]]; then
        fail "$1: $2 (required: CAME_DEVICES_REQUIRED)"
    else
        report SKIP "$1: $2"
        skipped=$((skipped + 1))
    fi
}
section() { printf '\n=== %s\n' "$*"; }
# runs a check: check NAME COMMAND...; its output is shown
check() {
    local name=$1
    shift
    if "$@"; then pass "$name"; else fail "$name"; fi
}

section "installing: cross linker, emulators, Rust targets"
sudo=()
[ "$(id -u)" = 0 ] || sudo=(sudo -n)
need=()
command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 || need+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
command -v qemu-aarch64 >/dev/null 2>&1 || need+=(qemu-user)
command -v qemu-system-arm >/dev/null 2>&1 || need+=(qemu-system-arm)
if [ ${#need[@]} -gt 0 ]; then
    echo "apt-get install ${need[*]}"
    { "${sudo[@]}" apt-get update -qq &&
        DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq \
            "${need[@]}"; } >/dev/null 2>&1 || echo "apt-get could not install ${need[*]}"
fi
have_target() { rustup target add "$1" >/dev/null 2>&1; }
rustup component add llvm-tools >/dev/null 2>&1 || true
llvm_bin="$(rustc --print sysroot)/lib/rustlib/$(rustc -vV | sed -n 's/^host: //p')/bin"
report installed

# --- 1. AArch64 -----------------------------------------------------------------------------
section "aarch64-unknown-linux-gnu under qemu-aarch64"
a64=aarch64-unknown-linux-gnu
if ! have_target $a64; then
    skip aarch64 "the Rust target $a64 cannot be installed here"
elif ! command -v aarch64-linux-gnu-gcc >/dev/null 2>&1; then
    skip aarch64 "no cross linker (Debian package gcc-aarch64-linux-gnu)"
elif ! command -v qemu-aarch64 >/dev/null 2>&1; then
    skip aarch64 "no user-mode emulator (Debian package qemu-user)"
else
    export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
    export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu"
    # the library's and the integration tests (the examples are built for their own checks
    # below, and doctests cannot run on another target); without the Shakespeare training
    # run, which takes three minutes under the emulator and checks the example's model, not
    # the kernels (every kernel it steps with is checked against the reference here)
    check "aarch64: the test suite with std (NEON kernels, threads, checkpoints)" \
        cargo test --release --target $a64 --features std --lib --tests -- \
        --skip shakespeare::a_short_run_beats_the_unigram_baseline_with_every_optimizer
    check "aarch64: the test suite without std (libm maths)" \
        cargo test --release --target $a64 --no-default-features --lib --tests

    refs=(tests/data/golden/*.json tests/data/golden/lowp/*.json tests/data/golden/adamw/*.json
        tests/data/golden/resume/*.json)
    check "x86-64 and aarch64: build replay" bash -c \
        "cargo build --release --features std --example replay &&
         cargo build --release --target $a64 --features std --example replay"
    x86_out=$(mktemp -d)
    a64_out=$(mktemp -d)
    for arch in x86-64 aarch64; do
        if [ $arch = x86-64 ]; then
            "$target_dir/release/examples/replay" --out "$x86_out" "${refs[@]}" >"$x86_out/report"
        else
            qemu-aarch64 -L /usr/aarch64-linux-gnu "$target_dir/$a64/release/examples/replay" \
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
    # bit for bit: every file but those whose sums along a row (or over a vector, for the
    # clip) run through vector registers, whose order follows the vector width (8 lanes of
    # AVX2, 4 of NEON)
    width_dependent=" f32_default_7 f32_default_16x33 f32_default_32x48 f32_drift_20x24
        f32_lr_2e-4_long_24x40 f32_scaled_rows_32x16 f32_sparse_3x17x19 bf16_lr1e-3_32x48
        bf16_vec_7 came_resume_vec_20 "
    same=0
    differ=()
    unexpected=()
    for f in "$x86_out"/*.json; do
        name=$(basename "$f" .json)
        if cmp -s "$f" "$a64_out/$name.json"; then
            same=$((same + 1))
        else
            differ+=("$name")
            [[ " $(echo $width_dependent) " == *" $name "* ]] || unexpected+=("$name")
        fi
    done
    echo "parameters after every step, bit for bit equal on both: $same files;" \
        "different in the last bits: ${#differ[@]}${differ[*]:+ (${differ[*]})}"
    if [ ${#unexpected[@]} = 0 ] && [ $same -gt 0 ]; then
        pass "aarch64: bit for bit equal to x86-64 wherever no sum depends on the vector width"
    else
        fail "aarch64: differs from x86-64 where it should not: ${unexpected[*]:-no file compared}"
    fi
    rm -rf "$x86_out" "$a64_out"

    # the instruction set pulp picks on this CPU, and the instructions QEMU translated while
    # replaying a 32 x 48 matrix, by function: the crate's kernels run 4-lane float
    # instructions (the replay harness's own code, compiled by LLVM for a CPU that always has
    # NEON, may too)
    log=$(mktemp)
    isa=$(qemu-aarch64 -L /usr/aarch64-linux-gnu -d in_asm -D "$log" \
        "$target_dir/$a64/release/examples/replay" tests/data/golden/f32_default_32x48.json |
        sed -n 's/.*(kernels: \(.*\))$/\1/p')
    neon=$(awk '/^IN:/ {fn = $2}
        /[ \t]f[a-z0-9]+[ \t]+v[0-9]+\.4s/ {n[fn]++}
        END {for (f in n) print n[f], f}' "$log" | sort -rn | c++filt)
    rm -f "$log"
    echo "kernels: $isa"
    echo "4-lane float instructions (f... v.4s) run, by function:"
    echo "$neon"
    if [[ "$isa" == pulp::aarch64::Neon* ]] && grep -Eq '^[0-9]+ <?came::' <<<"$neon"; then
        pass "aarch64: the NEON kernels run ($isa; 4-lane float instructions in came::)"
    else
        fail "aarch64: the kernels did not run on NEON (kernels: ${isa:-unknown})"
    fi
fi

# --- 2. Cortex-M4F --------------------------------------------------------------------------
section "thumbv7em-none-eabihf (Cortex-M4F) under qemu-system-arm, mps2-an386"
if ! have_target thumbv7em-none-eabihf; then
    skip cortex-m "the Rust target thumbv7em-none-eabihf cannot be installed here"
elif ! command -v qemu-system-arm >/dev/null 2>&1; then
    skip cortex-m "no system emulator (Debian package qemu-system-arm)"
else
    # the firmware crate is not in the workspace: its format and lints are checked here
    check "cortex-m: cargo fmt and clippy of the firmware crate" \
        bash -c "cd examples/cortex-m && cargo fmt --check && cargo clippy --release -- -D warnings"
    check "cortex-m: build and link the firmware for a 1 MiB flash, 256 KiB RAM part" \
        bash -c "cd examples/cortex-m && cargo build --release --bins"
    elf=$firmware_dir/thumbv7em-none-eabihf/release
    # the runner of examples/cortex-m/.cargo/config.toml, with a time limit
    run_fw() {
        timeout 300 qemu-system-arm -machine mps2-an386 -cpu cortex-m4 -nographic -monitor none \
            -serial none -semihosting-config enable=on,target=native -icount shift=0 -kernel "$1"
    }
    out=$(run_fw $elf/came-cortex-m)
    status=$?
    echo "$out"
    if [ $status = 0 ] && grep -Eq '^result loss=[0-9.]+ accuracy=[0-9.]+ target=[0-9.]+ PASS$' <<<"$out"; then
        pass "cortex-m: the firmware fine-tunes its classifier below the target loss"
    else
        fail "cortex-m: the firmware did not reach its target (exit status $status)"
    fi
    out=$(run_fw $elf/cost)
    status=$?
    echo "$out"
    if [ $status = 0 ] && [ "$(grep -c '^cost ' <<<"$out")" = 4 ]; then
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
    skip riscv32imac "the Rust target riscv32imac-unknown-none-elf cannot be installed here"
fi
if have_target wasm32-unknown-unknown; then
    check "wasm32: the crate without std" \
        cargo build --release --no-default-features --target wasm32-unknown-unknown
    check "wasm32: the crate with std (Came, checkpoints; one thread)" \
        cargo build --release --features std --target wasm32-unknown-unknown
else
    skip wasm32 "the Rust target wasm32-unknown-unknown cannot be installed here"
fi

cd "$root"
echo
[ $skipped = 0 ] || echo "$skipped skipped (see SKIP above)"
echo "$passed passed, $failed failed"
[ $failed = 0 ]
