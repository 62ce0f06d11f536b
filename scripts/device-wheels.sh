#!/usr/bin/env bash
# Build .whl/: the packages a lent GPU machine lacks to run mario-rl (see docs/campaign.md, "A GPU burst").
#
# That machine has Python 3.12 with PyTorch, numpy, rich, safetensors, imageio, matplotlib and
# tensorboard, and no network. What it lacks travels as wheels, pinned to uv.lock's versions:
# gymnasium, tyro and gym-super-mario-bros with their small pure-Python needs, and nes-py, whose
# emulator is compiled. nes-py 9 publishes wheels for Python 3.13+ only, so it is built here for 3.12
# from its source with the requires-python bound lowered (its code runs on 3.12; scripts/gpu-burst.sh
# installs with --ignore-requires-python for gym-super-mario-bros likewise).
set -euo pipefail
cd "$(dirname "$0")/.."
out=.whl
rm -rf "$out" && mkdir -p "$out"
exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >>"$exclude"

# Versions from the lock file, so the GPU machine runs what the tests ran.
pin() { uv export --frozen --no-hashes --no-dev --no-emit-project | grep -i "^$1==" | cut -d' ' -f1; }
pure=(gymnasium farama-notifications tyro docstring-parser typeguard typing-extensions gym-super-mario-bros)
pins=()
for name in "${pure[@]}"; do
  p=$(pin "$name") && [ -n "$p" ] || { echo "device-wheels: no pin for $name in uv.lock" >&2; exit 1; }
  pins+=("$p")
done
python3 -m pip download --quiet --no-deps --only-binary=:all: --ignore-requires-python \
  --python-version 3.12 --implementation cp --platform manylinux2014_x86_64 --platform any \
  -d "$out" "${pins[@]}"

# nes-py from its sdist, for CPython 3.12: PY312 names the interpreter, else python3.12 on PATH, else the
# one uv finds or fetches.
py312=${PY312:-$(command -v python3.12 || uv python find 3.12 2>/dev/null || echo 3.12)}
nes=$(pin nes-py) && [ -n "$nes" ] || { echo "device-wheels: no pin for nes-py in uv.lock" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m pip download --quiet --no-deps --no-binary=:all: --no-build-isolation -d "$work" "$nes" 2>/dev/null ||
  curl -sSfL -o "$work/nes_py.tar.gz" "$(grep -o "https://[^\"]*nes_py-${nes#*==}.tar.gz" uv.lock | head -1)"
tar -xzf "$work"/nes_py*.tar.gz -C "$work"
src=$(find "$work" -maxdepth 1 -type d -name 'nes_py-*' | head -1)
sed -i 's/requires-python = ">=3.13"/requires-python = ">=3.12"/' "$src/pyproject.toml"
uv venv --quiet --seed --python "$py312" "$work/py312"
"$work/py312/bin/python" -m pip wheel --quiet --no-deps -w "$out" "$src"

ls -la "$out"
du -sh "$out"
