#!/usr/bin/env bash
# Measures how fast the decision core replays random timelines ("10,000 random
# timelines through the core take seconds, not minutes").
#
# Usage: bench/core-timelines.sh [COUNT]   (default 10000)
#
# Two figures, both from the same seeded timelines the property tests draw:
#   1. the core alone: every event applied, a gate and a conversation query after each, one
#      export per timeline (examples/random_timelines.rs);
#   2. the differential property test at COUNT cases: the core and the independent oracle of
#      tests/invariants.rs, compared after every step. The oracle is the baseline in the same
#      run: a naive state machine with no event-keyed history.
set -euo pipefail
cd "$(dirname "$0")/.."
count="${1:-10000}"

cargo build --release -p custos-core --example random_timelines --quiet
echo "== core alone"
./target/release/examples/random_timelines "$count"

cargo test --release -p custos-core --test invariants --no-run --quiet 2>/dev/null
echo "== core + independent oracle, compared after every step (PROPTEST_CASES=$count)"
start=$(date +%s.%N)
PROPTEST_CASES="$count" cargo test --release -p custos-core --test invariants --quiet \
  -- the_core_agrees_with_an_independent_model_after_every_step 2>&1 | grep -E "test result"
end=$(date +%s.%N)
python3 -c "print(f'{$count} differential cases in {$end - $start:.2f} s wall')"
