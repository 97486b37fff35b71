#!/usr/bin/env bash
# Times `bantin build` on generated stores of 10,000 and 100,000 articles: a cold build into an
# empty folder and a warm one over the same folder, with wall time and peak memory (GNU time).
# When Hugo is installed (Debian: hugo), builds the same content with it for comparison.
#
#   benches/build.sh [WORK_DIR]
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-${TMPDIR:-/tmp}/bantin-bench}
mkdir -p "$work"
cargo build --release --manifest-path "$repo/Cargo.toml" >/dev/null
bin=$repo/target/release/bantin
[ -x /usr/bin/time ] || { echo "needs GNU time (Debian: time)"; exit 1; }

measure() { # label, command...
  local label=$1; shift
  /usr/bin/time -v -o "$work/time.txt" "$@" >"$work/out.txt" 2>&1 || { cat "$work/out.txt"; exit 1; }
  local wall rss
  wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$work/time.txt")
  rss=$(awk -F': ' '/Maximum resident set size/ {printf "%.0f", $2/1024}' "$work/time.txt")
  printf '%-34s wall %8s   peak memory %5s MiB\n' "$label" "$wall" "$rss"
}

for n in 10000 100000; do
  store=$work/store-$n feeds=$work/feeds-$n
  [ -d "$store" ] || python3 "$repo/benches/gen_store.py" "$n" "$store" --feeds "$feeds" >/dev/null
  # A cold build goes to a folder never used before; earlier ones are removed afterwards.
  out=$work/build-$n-$(date +%s%N)
  cat >"$work/build-$n.toml" <<TOML
[store]
dir = "$store"
[feeds]
dir = "$feeds"
[templates]
dir = "$repo/templates"
[output]
dir = "$out"
TOML
  sync
  measure "bantin build, $n, cold" "$bin" --config "$work/build-$n.toml" build
  measure "bantin build, $n, warm" "$bin" --config "$work/build-$n.toml" build
  rm -rf "$out"
  if command -v hugo >/dev/null; then
    site=$work/hugo-$n
    [ -d "$site" ] || python3 "$repo/benches/to_hugo.py" "$store" "$site" >/dev/null
    rm -rf "$site/public"
    sync
    measure "hugo $(hugo version | awk '{print $2}'), $n, cold" hugo --quiet -s "$site"
  fi
done
