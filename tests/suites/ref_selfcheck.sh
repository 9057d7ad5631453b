#!/usr/bin/env bash
# ref_selfcheck.sh: proves the Python test side right before other suites trust it: the numpy
# reference forward pass (tests/ref/forward.py) reproduces the real stories260K model's greedy
# ids and its 252-token text, tools/gguf.py's ggml blocks match hand-computed layouts, and the
# rope/GQA/rope-scaling conventions satisfy their identities (tests/ref/selftest.py).
set -u
root=${KILN_ROOT:-$(cd "$(dirname "$0")/../.." && pwd)}
td=${KILN_TESTDATA:-$root/../shared/testdata}
py=${PYTHON:-/usr/bin/python3}
mkdir -p "$root/build/testmodels"
# The CLI path too: forward.py --greedy on the real GGUF.
ids=$("$py" "$root/tests/ref/forward.py" "$td/models/stories260K.gguf" --tokens 1,403,407,261,378 --greedy 13)
extra_pass=0 extra_fail=0
if [ "$ids" = "432 383 286 261 376 298 315 421 395 317 426 338 401" ]; then
    echo "ok   forward.py --greedy 13 on stories260K.gguf"; extra_pass=1
else
    echo "FAIL forward.py --greedy 13 on stories260K.gguf: got '$ids'"; extra_fail=1
fi
out=$("$py" "$root/tests/ref/selftest.py" "$td" "$root/build/testmodels")
rc=$?
echo "$out" | sed '$d'
line=$(tail -n 1 <<<"$out")
p=$(sed -E 's/^([0-9]+) passed, ([0-9]+) failed$/\1/' <<<"$line")
f=$(sed -E 's/^([0-9]+) passed, ([0-9]+) failed$/\2/' <<<"$line")
[[ $p =~ ^[0-9]+$ ]] || { p=0; f=1; }
[ "$rc" -ne 0 ] && [ "$f" -eq 0 ] && f=1
echo "$((p + extra_pass)) passed, $((f + extra_fail)) failed"
[ $((f + extra_fail)) -eq 0 ]
