# Sourced by demo.sh and test.sh: installs what the project needs on a fresh Debian machine, idempotently.
#   - Fashion-MNIST from Debian's `dataset-fashion-mnist` (IDX files in /usr/share/datasets/fashion-mnist);
#   - a virtual environment in .venv with `pip install -e .[dev]`.
# Set FSQ_DATA_DIR to a folder holding the IDX files to skip the Debian package.

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else return 1; fi
}

apt_install() {  # apt_install PACKAGE...: install with apt-get, refreshing the package lists once if needed
    command -v apt-get >/dev/null || return 1
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null 2>&1 || {
        as_root apt-get update -qq >/dev/null 2>&1
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
    }
}

if [ -z "${FSQ_DATA_DIR:-}" ] && [ ! -e /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz ]; then
    echo "setup: installing Fashion-MNIST (apt-get install dataset-fashion-mnist)"
    apt_install dataset-fashion-mnist || echo "setup: could not install dataset-fashion-mnist; tests that need it" \
        "will be skipped (set FSQ_DATA_DIR to a folder with the IDX files)" >&2
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv"
    "$PYTHON" -m venv .venv 2>/dev/null || { apt_install python3-venv && "$PYTHON" -m venv .venv; }
fi
echo "setup: pip install -e .[dev]"
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev]"
