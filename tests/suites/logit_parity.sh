#!/usr/bin/env bash
# logit_parity.sh: `kiln eval` logits against the independent numpy reference (tests/ref/forward.py)
# for random-weight llama / qwen2 / qwen3 models in F32, F16, BF16, Q8_0 and Q4_0, some in Q4_1,
# Q5_0, Q4_K, Q5_K, Q6_K and Q4_K_M / Q5_K_M mixes (plus tied
# output + Llama 3.1 rope scaling, MHA, chunked feeding), 80 positions each, with the scalar
# reference kernels (tolerance 1e-4 of the logit scale) and the default kernels (per-type
# tolerances: see tests/ref/logit_parity.py). Models are cached in build/testmodels/.
set -u
root=${KILN_ROOT:-$(cd "$(dirname "$0")/../.." && pwd)}
py=${PYTHON:-/usr/bin/python3}
kiln=${KILN_BIN:-$root/build/release/kiln}
if [ ! -x "$kiln" ]; then echo "FAIL no kiln binary at $kiln"; echo "0 passed, 1 failed"; exit 1; fi
exec "$py" "$root/tests/ref/logit_parity.py" "$kiln" "$root/build/testmodels" ${KILN_PARITY_FILTER:+--filter "$KILN_PARITY_FILTER"}
