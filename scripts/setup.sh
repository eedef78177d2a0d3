#!/usr/bin/env bash
# One command that installs everything a reader or CI needs for the book and
# the notebooks. Idempotent and version-pinned: about 19 min from scratch on
# 2 cores (evcxr_jupyter alone is about 13 min), under 2 s when all is present.
#
#   scripts/setup.sh                    # reader / developer machine
#   WANT_CHROMIUM=1 scripts/setup.sh    # CI: also the headless browser check
#
# Installs:
#   ~/.cargo/bin: mdbook 0.5.4, mdbook-katex 0.10.0, evcxr_jupyter 0.22.0,
#                 wasm-bindgen-cli 0.2.130 (same version as crates/bnbook-web's wasm-bindgen)
#   the Rust target wasm32-unknown-unknown, and the browser lab's module in
#   book/lab/pkg/ (scripts/build_lab.sh; git-ignored)
#   .venv/ (git-ignored): jupyterlab, nbclient, nbconvert, nbformat (pinned)
#   the `rust` Jupyter kernelspec (evcxr_jupyter --install)
#   Fashion-MNIST (Debian package, only when root on Debian)
#   chromium (Debian package, only with WANT_CHROMIUM=1)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

MDBOOK_VERSION=0.5.4
MDBOOK_KATEX_VERSION=0.10.0
EVCXR_JUPYTER_VERSION=0.22.0
# Must equal the `wasm-bindgen = "=..."` pin in crates/bnbook-web/Cargo.toml:
# the CLI refuses a module built by another version.
WASM_BINDGEN_VERSION=0.2.130
PY_PACKAGES=(jupyterlab==4.6.6 nbclient==0.11.0 nbconvert==7.17.2 nbformat==5.11.1)

installed=$(cargo install --list)

# need_cargo CRATE VERSION [--or-unlocked] : `cargo install` only when that
# exact version is absent. With --or-unlocked, a failed `--locked` install
# (a registry mirror lacking one locked dependency version) is retried with
# the newest compatible dependencies.
need_cargo() {
    local crate=$1 version=$2 fallback=${3:-} t0=$SECONDS
    if grep -qx "$crate v$version:" <<<"$installed"; then
        echo "have       $crate $version"
    else
        echo "installing $crate $version (cargo install --locked) ..."
        if ! cargo install --locked "$crate" --version "$version"; then
            [ "$fallback" = --or-unlocked ] || exit 1
            echo "retrying   $crate $version without --locked ..."
            cargo install "$crate" --version "$version"
        fi
        echo "installed  $crate $version in $((SECONDS - t0)) s"
    fi
}

need_cargo mdbook "$MDBOOK_VERSION"
need_cargo mdbook-katex "$MDBOOK_KATEX_VERSION"
need_cargo evcxr_jupyter "$EVCXR_JUPYTER_VERSION"
need_cargo wasm-bindgen-cli "$WASM_BINDGEN_VERSION" --or-unlocked

# The browser lab: bnbook for WebAssembly (about 2 min the first time).
if rustup target list --installed | grep -qx wasm32-unknown-unknown; then
    echo "have       Rust target wasm32-unknown-unknown"
else
    rustup target add wasm32-unknown-unknown
fi
scripts/build_lab.sh

# Python venv: the stamp records the pinned list, so changing a pin reinstalls.
stamp=.venv/.bnbook-packages
want="${PY_PACKAGES[*]}"
if [ -x .venv/bin/python ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    echo "have       .venv ($want)"
else
    t0=$SECONDS
    echo "creating   .venv with $want ..."
    python3 -m venv .venv
    .venv/bin/pip install -q --disable-pip-version-check "${PY_PACKAGES[@]}"
    echo "$want" >"$stamp"
    echo "created    .venv in $((SECONDS - t0)) s"
fi

# The kernelspec is cheap to write; always rewrite it so it points at this evcxr_jupyter.
evcxr_jupyter --install >/dev/null
if .venv/bin/jupyter kernelspec list 2>/dev/null | grep -q '^ *rust '; then
    echo "have       Jupyter kernel 'rust' (evcxr_jupyter)"
else
    echo "the 'rust' kernelspec is missing after evcxr_jupyter --install" >&2
    exit 1
fi

# Fashion-MNIST
fm=/usr/share/datasets/fashion-mnist
if [ -n "${FASHION_MNIST_DIR:-}" ] && [ -e "$FASHION_MNIST_DIR/train-images-idx3-ubyte.gz" ]; then
    echo "have       Fashion-MNIST in FASHION_MNIST_DIR=$FASHION_MNIST_DIR"
elif [ -e "$fm/train-images-idx3-ubyte.gz" ]; then
    echo "have       Fashion-MNIST in $fm"
elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && [ -e /etc/debian_version ]; then
    echo "installing Fashion-MNIST (apt-get install dataset-fashion-mnist) ..."
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq dataset-fashion-mnist
else
    echo "note       Fashion-MNIST not installed: bnbook downloads it into ~/.cache/bnbook on first use"
fi

# Chromium, only for CI's headless browser check.
if [ "${WANT_CHROMIUM:-0}" = 1 ]; then
    if command -v chromium >/dev/null; then
        echo "have       chromium"
    else
        echo "installing chromium (apt-get) ..."
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq chromium
    fi
fi
echo "setup done"
