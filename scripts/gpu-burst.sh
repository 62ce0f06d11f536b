#!/usr/bin/env bash
# Run one mario-rl command on a lent GPU machine and bring back every file it wrote.
#
#   bash scripts/gpu-burst.sh campaign 1-3 --envs 32 --budget-hours 0.12
#
# Runs there from the repository root, with .whl/ (scripts/device-wheels.sh) carried along. Installs
# the wheels beside the machine's own PyTorch, runs `mario-rl ARGS...`, then packs the files under
# campaign/, models/, demos/ and runs/ that the command created or changed (not TensorBoard events,
# plots or videos) into $OUT/burst.tar, with the command's log as $OUT/burst.log. Back here:
# `tar -xf .../burst.tar` in the repository root puts them in place. Stop the command with mario-rl's
# own limit (--budget-hours, --minutes), well inside the device call's timeout, so that it writes its
# checkpoint before the machine goes back.
set -uo pipefail
: "${OUT:?OUT is unset: run this on the device machine}"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --ignore-requires-python \
  --target /tmp/site .whl/*.whl || exit 3
export PYTHONPATH="/tmp/site:$PWD/src" PYTHONUNBUFFERED=1
stamp=$(mktemp)
sleep 1 # file times have a resolution; anything written from now on is newer than the stamp
nproc
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'
python3 -m mario_rl.cli "$@" 2>&1 | tee "$OUT/burst.log"
rc=${PIPESTATUS[0]}
find campaign models demos runs -type f -newer "$stamp" \
  -not -path '*/tb/*' -not -path '*/plots/*' -not -path '*/videos/*' -not -name '*.mp4' -not -name '*.gif' \
  2>/dev/null | tar -cf "$OUT/burst.tar" -T -
tar -tvf "$OUT/burst.tar"
exit "$rc"
