#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 30), starting from the checked-in seeds.
# New inputs go to fuzz/corpus/<target> (not checked in), crashes to fuzz/artifacts/<target>.
# A long campaign: bash fuzz/run.sh 3600    One target: bash fuzz/run.sh 600 sled_script
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-30}"
only="${2:-}"
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
# cargo-fuzz needs nightly flags; this machine has the stable toolchain only.
export RUSTC_BOOTSTRAP=1
cargo fuzz build
for target in $(cargo fuzz list); do
  if [ -n "$only" ] && [ "$only" != "$target" ]; then continue; fi
  mkdir -p "corpus/$target"
  echo "== fuzzing $target for ${secs}s"
  cargo fuzz run "$target" "corpus/$target" "seeds/$target" -- -max_total_time="$secs" -rss_limit_mb=2048 -print_final_stats=1 2>&1 \
    | grep -E 'Done|stat::number_of_executed_units|stat::new_units_added|ERROR|panicked|SUMMARY' || true
  if [ -n "$(ls -A "artifacts/$target" 2>/dev/null)" ]; then
    echo "fuzz target $target found a failure: see fuzz/artifacts/$target" >&2
    exit 1
  fi
done
