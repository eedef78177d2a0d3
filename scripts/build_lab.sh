#!/usr/bin/env bash
# Builds the browser lab (book chapter "Try it: batch norm in your browser"):
# the crate crates/bnbook-web for wasm32-unknown-unknown, then wasm-bindgen's
# JavaScript glue, into book/lab/pkg/ (git-ignored), where mdbook copies it
# into the built book. Needs the wasm32-unknown-unknown target and
# wasm-bindgen-cli (scripts/setup.sh installs both). Prints the module's size.
#
#   scripts/build_lab.sh               # book/lab/pkg/
#   scripts/build_lab.sh --node DIR    # also a Node.js build in DIR, for the
#                                      # native-vs-wasm test (BNBOOK_WEB_NODE_PKG=DIR)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
target_dir=${CARGO_TARGET_DIR:-target}
cargo build --release -p bnbook-web --target wasm32-unknown-unknown
wasm=$target_dir/wasm32-unknown-unknown/release/bnbook_web.wasm
rm -rf book/lab/pkg
wasm-bindgen --target web --no-typescript --out-dir book/lab/pkg "$wasm"
if [ "${1:-}" = --node ]; then
    wasm-bindgen --target nodejs --no-typescript --out-dir "${2:?--node needs a directory}" "$wasm"
fi
echo "lab module: book/lab/pkg/bnbook_web_bg.wasm, $(wc -c <book/lab/pkg/bnbook_web_bg.wasm) bytes uncompressed"
