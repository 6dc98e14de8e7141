#!/usr/bin/env bash
# Create (or reuse) a virtual environment for a peer system the tests talk to, OUTSIDE the repo.
#
#   tests/peers/ensure_venv.sh <name> <pip requirement>...
#
# The venv lives in ${AGENTSTREAM_TEST_PEERS_DIR:-$HOME/.cache/agentstream/peers}/<name>, shared by
# every clone of the repository. It is (re)built only when it is missing or when the requested
# requirements differ from the ones recorded in its stamp file, so repeated runs cost nothing.
# Prints the venv path on the last line of standard output.
set -euo pipefail

if [ "$#" -lt 2 ]; then
  echo "usage: $0 <name> <pip requirement>..." >&2
  exit 2
fi
name=$1
shift
case "$name" in
  */*|.*|"") echo "ensure_venv.sh: expected a plain name, got '$name'" >&2; exit 2 ;;
esac

peers_dir=${AGENTSTREAM_TEST_PEERS_DIR:-$HOME/.cache/agentstream/peers}
venv="$peers_dir/$name"
stamp="$venv/.agentstream-requirements"
wanted=$(printf '%s\n' "$@")
python=${PYTHON:-python3}

if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ]; then
  echo "$venv"
  exit 0
fi

mkdir -p "$peers_dir"
# One builder at a time per peer (two clones running `make test` together).
exec 9>"$peers_dir/.$name.lock"
flock 9
if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ]; then
  echo "$venv"
  exit 0
fi

echo "ensure_venv.sh: building $venv for: $*" >&2
rm -f "$stamp"
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip >&2
"$venv/bin/python" -m pip install -q --disable-pip-version-check "$@" >&2
# The stamp is written last: an interrupted install is retried on the next run.
printf '%s\n' "$wanted" >"$stamp"
echo "$venv"
