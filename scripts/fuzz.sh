#!/usr/bin/env bash
# Coverage-guided fuzzing of shardgate's parsers on the stable toolchain.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# Builds the libFuzzer driver in tests/fuzz/ (libFuzzer itself is compiled
# from source by the libfuzzer-sys crate, so only cargo and a C++ compiler
# are needed), then runs each target (default: all of them) for SECONDS
# (default 60) and prints the executions per target. Exits non-zero if any
# target crashed, timed out or ran out of memory; the input that did it is
# saved under tests/fuzz/crashes/<target>/. Copy it to
# tests/fuzz/regressions/<target>/ to keep it as a regression test
# (tests/fuzz_regressions.rs replays that directory in `cargo test`).
#
# The growing corpus of each target is kept in $FUZZ_DIR/corpus/<target>
# (default target/fuzz), so a later run starts where the last one stopped;
# the seeds in tests/fuzz/corpus/<target>/ are read, never written.
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${1:-60}
shift || true
if ! [[ "$secs" =~ ^[0-9]+$ ]] || [ "$secs" -lt 1 ]; then
    echo "usage: scripts/fuzz.sh [SECONDS] [TARGET...]" >&2
    exit 2
fi

all_targets=()
for f in tests/fuzz/fuzz_targets/*.rs; do
    all_targets+=("$(basename "$f" .rs)")
done
targets=("${@:-${all_targets[@]}}")
for t in "${targets[@]}"; do
    if [ ! -f "tests/fuzz/fuzz_targets/$t.rs" ]; then
        echo "fuzz.sh: unknown target $t (targets: ${all_targets[*]})" >&2
        exit 2
    fi
done

if ! command -v c++ >/dev/null 2>&1 && ! command -v g++ >/dev/null 2>&1 \
    && ! command -v clang++ >/dev/null 2>&1; then
    echo "fuzz.sh: no C++ compiler found (c++, g++ or clang++); libFuzzer is built from source" >&2
    exit 2
fi

fuzz_dir=${FUZZ_DIR:-$PWD/target/fuzz}
host=$(rustc -vV | sed -n 's/^host: //p')
# Stable-only instrumentation: what cargo-fuzz passes with `--sanitizer none`.
# --target keeps these flags off build scripts and proc-macros.
export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module \
-Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
-Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares \
-Cdebug-assertions -Coverflow-checks"
echo "== building the fuzzer (release, sanitizer coverage) into $fuzz_dir"
CARGO_TARGET_DIR="$fuzz_dir" cargo build --release --quiet \
    --manifest-path tests/fuzz/Cargo.toml --target "$host"
bin_dir="$fuzz_dir/$host/release"

# Longest input per target: configs are larger than the other inputs.
max_len() {
    case "$1" in
        config) echo 16384 ;;
        *) echo 4096 ;;
    esac
}

failed=()
summary=()
mkdir -p "$fuzz_dir/logs"
for t in "${targets[@]}"; do
    work="$fuzz_dir/corpus/$t"
    crashes="tests/fuzz/crashes/$t"
    log="$fuzz_dir/logs/$t.log"
    mkdir -p "$work" "$crashes"
    dict=()
    [ -f "tests/fuzz/dict/$t.dict" ] && dict=("-dict=tests/fuzz/dict/$t.dict")
    echo "== $t: ${secs}s (log: $log)"
    status=0
    "$bin_dir/$t" "$work" "tests/fuzz/corpus/$t" \
        -max_total_time="$secs" -max_len="$(max_len "$t")" -timeout=10 \
        -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$crashes/" \
        "${dict[@]}" >"$log" 2>&1 || status=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    cov=$(grep -Eo 'cov: [0-9]+' "$log" | tail -1 | cut -d' ' -f2)
    corpus=$(find "$work" -type f | wc -l)
    line=$(printf '%-14s %12s execs %9s exec/s  cov %6s  corpus %6s' \
        "$t" "${execs:-?}" "${rate:-?}" "${cov:-?}" "$corpus")
    if [ "$status" -ne 0 ]; then
        failed+=("$t")
        line="$line  FAILED (exit $status)"
        echo "!! $t failed (exit $status); last lines of $log:" >&2
        grep -E 'ERROR|panicked|Test unit written|SUMMARY' "$log" | tail -8 >&2 || true
        echo "   reproduce: $bin_dir/$t <input file>" >&2
        echo "   keep it:   cp <input file> tests/fuzz/regressions/$t/" >&2
    fi
    echo "$line"
    summary+=("$line")
done

echo "== summary (${secs}s per target, $(nproc) cores)"
printf '%s\n' "${summary[@]}"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz.sh: crashes in: ${failed[*]} (inputs under tests/fuzz/crashes/)" >&2
    exit 1
fi
echo "fuzz.sh: no crash"
