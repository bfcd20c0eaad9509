#!/usr/bin/env bash
# Checks that the floors in pyproject.toml are true: in a scratch virtual environment (a temporary folder, removed
# afterwards) on the oldest Python that requires-python allows, installs every runtime dependency and every optional
# one (dev, tensorboard) pinned at its floor (`name>=X` installed as `name==X`, read from pyproject.toml, so this
# script cannot drift from it), then the package itself with --no-deps, and checks
#   1. every module of fsq_ref imports;
#   2. `fsq --help` and every subcommand's `--help` run;
#   3. the quantizer and layer tests, the docs' snippets (Flax at its floor), the docs site and the install checks pass;
#   4. training works: the CLI run tests (train, encode, eval, fine-tune from a checkpoint, export, TensorBoard).
# Exits non-zero and names the failed step on any failure. Needs python3 (3.11+) with venv, and PyPI.
# Usage: [PYTHON=python3.X] bash scripts/check-floors.sh [NAME==VERSION ...]
#   PYTHON: the scratch environment's interpreter. By default the floor of requires-python, found as python3.X on
#   the PATH or as a pyenv version; where there is none, python3, with a warning that the Python floor is unchecked.
#   Extra pins replace the floor of the same name, to probe an older version, or are added to the floors
#   (e.g. `jax==0.4.29 jaxlib==0.4.29`: pip pairs an old jax with the newest jaxlib it allows).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
start=$SECONDS
step=""

begin() {  # begin NAME: announce a step; it is the one reported if the script stops before the next
    step=$1
    echo "== check-floors: $step"
}
trap 'exit 130' INT
trap 'exit 143' TERM  # so that the EXIT trap still reports, and removes the scratch folder
trap 'rc=$?; [ $rc = 0 ] || echo "check-floors: FAILED at step '\''$step'\'' (exit $rc)" >&2' EXIT

begin "read the floors from pyproject.toml"
# The first line is requires-python's floor (X.Y), then one pin a line.
floors=$(python3 - "$@" <<'EOF'
import re, sys, tomllib

project = tomllib.load(open("pyproject.toml", "rb"))["project"]
m = re.fullmatch(r"\s*>=\s*(\d+\.\d+)\s*", project["requires-python"])
if m is None:
    sys.exit(f"no Python floor to check in requires-python = {project['requires-python']!r}: declare it as '>=X.Y'")
print(m[1])
requirements = project["dependencies"] + [r for group in project["optional-dependencies"].values() for r in group]
overrides = {re.split(r"[\[=<>!~ ]", p, maxsplit=1)[0].lower(): p for p in sys.argv[1:]}
for requirement in requirements:
    m = re.fullmatch(r"\s*([A-Za-z0-9._-]+)(\[[^\]]*\])?\s*>=\s*([^,;\s]+)\s*", requirement)
    if m is None:
        sys.exit(f"no floor to check in {requirement!r}: every dependency must be declared as 'name>=version'")
    name, extras, floor = m.groups()
    print(overrides.pop(name.lower(), f"{name}{extras or ''}=={floor}"))
print(*overrides.values(), sep="\n")  # pins of other packages (e.g. jaxlib) are added
EOF
)
python_floor=$(head -n 1 <<< "$floors")
pins=$(tail -n +2 <<< "$floors")
echo "   python $python_floor"
echo "$pins" | sed 's/^/   /'

begin "find Python $python_floor"
is_python() {  # is_python EXE X.Y: whether EXE runs and is Python X.Y
    "$1" -c 'import sys; sys.exit(f"{sys.version_info[0]}.{sys.version_info[1]}" != sys.argv[1])' "$2" 2>/dev/null
}
if [ -z "${PYTHON:-}" ]; then
    for candidate in "python$python_floor" "$(pyenv root 2>/dev/null)/versions/$python_floor".*/bin/python3; do
        if is_python "$candidate" "$python_floor"; then PYTHON=$candidate; break; fi
    done
fi
if [ -z "${PYTHON:-}" ]; then
    PYTHON=python3
    echo "check-floors: WARNING: no Python $python_floor here; checking on $("$PYTHON" --version) instead," \
        "so requires-python's floor is unchecked" >&2
fi
echo "   $PYTHON: $("$PYTHON" --version)"

begin "create a scratch virtual environment"
tmp=$(mktemp -d)
trap 'rc=$?; rm -rf "$tmp"; [ $rc = 0 ] || echo "check-floors: FAILED at step '\''$step'\'' (exit $rc)" >&2' EXIT
"$PYTHON" -m venv "$tmp/venv" || {
    echo "check-floors: '$PYTHON -m venv' failed (on Debian: apt-get install python3-venv)" >&2
    exit 1
}
python=$tmp/venv/bin/python
pip() { "$python" -m pip --disable-pip-version-check -q "$@"; }

begin "install the dependencies at their floors"
# orbax-checkpoint (Flax's, not ours) is constrained to the version pip settles on for flax at its floor anyway, after
# minutes of backtracking through every newer release otherwise.
# shellcheck disable=SC2086  # one pin a line, none with spaces
pip install -c <(echo "orbax-checkpoint==0.6.4") $pins

begin "install fsq-ref (--no-deps)"
pip install --no-deps "$root"
"$python" -m pip --disable-pip-version-check list --format=freeze 2>/dev/null | sed 's/^/   /'

# From the scratch folder, so that what runs is the installed package rather than the source tree.
cd "$tmp"
begin "import every module of fsq_ref"
"$python" - <<'EOF'
import importlib, pkgutil
import fsq_ref

for module in pkgutil.walk_packages(fsq_ref.__path__, "fsq_ref."):
    if module.name.endswith(".__main__"):  # `python -m fsq_ref.cli`: importing it runs the command
        continue
    importlib.import_module(module.name)
    print("   imported", module.name)
EOF

begin "fsq --help and every subcommand's --help"
commands=$("$python" - <<'EOF'
import click
from fsq_ref.cli.commands import main

def walk(command, path):
    yield path
    for name, sub in (command.commands.items() if isinstance(command, click.Group) else ()):
        yield from walk(sub, path + [name])

for path in walk(main, []):
    print(" ".join(path))
EOF
)
while IFS= read -r command; do
    echo "   fsq $command --help"
    # shellcheck disable=SC2086  # the words of a subcommand's path
    "$tmp/venv/bin/fsq" $command --help >/dev/null
done <<< "$commands"

cd "$root"
begin "the quantizer and layer tests, the snippets, the docs site, the install checks"
"$python" -m pytest -p no:cacheprovider -q \
    tests/test_fsq.py tests/test_vq.py tests/test_quantizers.py tests/test_metrics.py tests/test_snippets.py \
    tests/test_layers.py tests/test_flax_layers.py tests/test_docs_site.py tests/test_install.py

begin "training: the CLI run tests"
"$python" -m pytest -p no:cacheprovider -q tests/test_cli_runs.py

begin "done"
echo "check-floors: all floors hold on $("$python" --version) ($((SECONDS - start)) s)"
