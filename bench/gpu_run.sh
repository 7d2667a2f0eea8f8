#!/bin/sh
# On the GPU box, through the device tool, in two back-to-back calls (the
# machine stays warm ~30 s between them; one call carries at most 64 MiB):
#   carry [".whl"]:  sh bench/gpu_run.sh install
#   carry [".whl2"]: sh bench/gpu_run.sh bench [gpu_bench.py flags]
# (the folders come from bench/gpu_wheels.sh). Results land in $OUT.
# On a CPU machine, `sh bench/gpu_run.sh rehearse` runs the same sequence in
# an environment holding only the GPU image's packages and the carried
# wheels, on the tiny checkpoints (bench/gpu_rehearse.py).
# SITE and WHEELS move the install target and the wheel folders' parent.
set -eu
site=${SITE:-/tmp/site}
wheels=${WHEELS:-.}
pipi() {
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "$@"
}
case "${1:-}" in
install)
    pipi "$wheels"/.whl/*.whl
    ;;
bench)
    shift
    test -d "$site/av" || { echo "install first: the .whl carry did not reach this machine" >&2; exit 2; }
    pipi "$wheels"/.whl2/*.whl
    out=${OUT:-.}
    nvidia-smi -L || echo "no nvidia-smi: not a GPU machine"
    # The repository root too: the benchmark starts servers as cuda/server.py.
    PYTHONPATH=$site:$PWD PYTHONUNBUFFERED=1 python3 -m bench.gpu_bench --out "$out/gpu_bench.json" "$@" \
        >"$out/gpu_bench.log" 2>&1 || { tail -50 "$out/gpu_bench.log"; exit 1; }
    grep -v "pad_token_id" "$out/gpu_bench.log" | tail -40
    ;;
rehearse)
    shift
    exec python3 -m bench.gpu_rehearse "$@"
    ;;
*)
    echo "usage: sh bench/gpu_run.sh install|bench [gpu_bench.py flags]|rehearse [gpu_rehearse.py flags]" >&2
    exit 2
    ;;
esac
