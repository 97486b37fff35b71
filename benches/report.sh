#!/usr/bin/env bash
# The speed report: fan-out, build and restart, each beside its reference in the same runs,
# three runs, medians, one table (benches/report.py says what each line measures).
#
#   benches/report.sh [--before OLD_BINARY [--before-templates DIR]] [--runs N]
#                     [--only mail,fanout,build,run] ...
#
# Needs Postfix's smtp-sink and smtp-source (Debian: postfix) for the fan-out; generates its
# stores (10,000 and 100,000 articles) under ${TMPDIR:-/tmp}/bantin-report the first time.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cargo build --release --quiet --manifest-path "$repo/Cargo.toml"
target=$(cargo metadata --format-version 1 --no-deps --manifest-path "$repo/Cargo.toml" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
# The build's rendering alone (benches/render.rs), for the floor under the build's row.
render=$(cargo bench --no-run --quiet --bench render --message-format json --manifest-path "$repo/Cargo.toml" |
  python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "render" and m.get("executable"):
        print(m["executable"])')
exec python3 "$repo/benches/report.py" --bin "$target/release/bantin" --render-bench "$render" "$@"
