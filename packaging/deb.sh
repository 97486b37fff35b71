#!/usr/bin/env bash
# Builds the Debian package: the release binary, its manual pages and shell completions
# (generated from the command line's definition), then `cargo deb` with the metadata in
# Cargo.toml. Prints the path of the .deb. Needs cargo-deb (`cargo install cargo-deb`).
set -euo pipefail
cd "$(dirname "$0")/.."

target=$(cargo metadata --format-version 1 --no-deps |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
cargo build --release --locked
bin=$target/release/bantin
out=$target/release/generated
rm -rf "$out"
mkdir -p "$out/man"
"$bin" generate man "$out/man"
gzip -9n "$out"/man/*.1
"$bin" generate completions bash > "$out/bantin.bash"
"$bin" generate completions zsh > "$out/_bantin"
"$bin" generate completions fish > "$out/bantin.fish"
cargo deb --no-build --locked --strip "$@"
