#!/usr/bin/env bash
# kquant_dequant.sh: Q4_1 / Q5_0 / Q4_K / Q5_K / Q6_K dequantization by kiln (every kernel table,
# release and ASan builds) against values numpy computed from the block fields, on random blocks
# with extreme f16 scales (tests/ref/kquant_vectors.py, which also checks tools/gguf.py's decoders);
# and test_kquants' matmul tests with the AVX2 integer dot forced (KILN_KQUANT_NO_VNNI=1).
set -u
root=${KILN_ROOT:-$(cd "$(dirname "$0")/../.." && pwd)}
py=${PYTHON:-/usr/bin/python3}
work="$root/build/testmodels"
mkdir -p "$work"
pass=0 fail=0
vec="$work/kquant_vectors.bin"
if "$py" "$root/tests/ref/kquant_vectors.py" "$vec"; then pass=$((pass + 1)); else fail=$((fail + 1)); fi
for variant in release asan; do
    t="$root/build/$variant/tests/test_kquants"
    if [ ! -x "$t" ]; then echo "skip $variant (no $t)"; continue; fi
    if "$t" "$vec"; then pass=$((pass + 1)); echo "ok   $variant"; else fail=$((fail + 1)); echo "FAIL $variant"; fi
    # the matmuls again with the AVX2 integer dot instead of AVX512-VNNI (same on a CPU without it)
    if KILN_KQUANT_NO_VNNI=1 "$t"; then pass=$((pass + 1)); echo "ok   $variant matmuls without VNNI"
    else fail=$((fail + 1)); echo "FAIL $variant matmuls without VNNI"; fi
done
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
