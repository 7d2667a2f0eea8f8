#!/bin/sh
# On the GPU box, through the device tool, in two back-to-back calls (the
# machine stays warm ~30 s between them; one call carries at most 64 MiB):
#   carry [".whl"]:  sh bench/gpu_run.sh install
#   carry [".whl2"]: sh bench/gpu_run.sh bench [gpu_bench.py flags]
# (the folders come from bench/gpu_wheels.sh). Results land in $OUT.
set -eu
site=/tmp/site
pipi() {
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "$@"
}
case "${1:-}" in
install)
    pipi .whl/*.whl
    ;;
bench)
    shift
    test -d "$site/av" || { echo "install first: the .whl carry did not reach this machine" >&2; exit 2; }
    pipi .whl2/*.whl
    out=${OUT:-.}
    nvidia-smi -L
    PYTHONPATH=$site PYTHONUNBUFFERED=1 python3 -m bench.gpu_bench --out "$out/gpu_bench.json" "$@" \
        >"$out/gpu_bench.log" 2>&1 || { tail -50 "$out/gpu_bench.log"; exit 1; }
    grep -v "pad_token_id" "$out/gpu_bench.log" | tail -40
    ;;
*)
    echo "usage: sh bench/gpu_run.sh install|bench [gpu_bench.py flags]" >&2
    exit 2
    ;;
esac
