#!/bin/sh
# Download the cp312 manylinux wheels of bench/gpu_wheels.txt for a GPU box
# with no network: each [FOLDER] section into FOLDER under the current
# directory (the repo root, where the device tool's carry finds them).
# PY_VERSION=3.11 fetches them for another Python (the CPU rehearsal's).
set -eu
list="$(cd "$(dirname "$0")" && pwd)/gpu_wheels.txt"
py=${PY_VERSION:-3.12}
for dir in $(sed -n 's/^\[\(.*\)\]$/\1/p' "$list"); do
    awk -v want="[$dir]" '/^\[/ {on = ($0 == want); next} on && !/^#/ && NF' "$list" |
        xargs python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$py" \
            --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
            --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
            --platform any -d "$dir"
    du -sh "$dir"
done
