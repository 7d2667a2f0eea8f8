"""Rehearse the GPU run on a CPU machine: prove the carried wheels complete.

The GPU machine has no network and only its image's packages
(``bench/gpu_image.txt``); everything else travels as the wheels of
``bench/gpu_wheels.txt``. A wheel missing from that list shows up there as an
``ImportError`` after minutes of device time. This builds, on a CPU machine,
a virtual environment that holds exactly the image's packages (CPU builds,
linked from an environment that has them: ``--source``, the checkout's
``.venv-cuda`` by default) and nothing else, downloads the carried wheels for
its Python, and runs ``bench/gpu_run.sh``'s whole sequence in it (``install``,
then ``bench --cpu-rehearsal --no-compile`` on the tiny checkpoints) with the
wheels installed offline (``--no-index``). The image runs Python 3.12; the
rehearsal runs on the source environment's Python.

    sh bench/gpu_run.sh rehearse [--source PYTHON] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMAGE = Path(__file__).with_name("gpu_image.txt")

# Run by the source interpreter: each installed distribution's name and the
# top-level entries of site-packages it owns.
LIST_DISTS = """
import json, importlib.metadata as md
out = {}
for dist in md.distributions():
    tops = {str(f).split("/")[0] for f in (dist.files or ()) if not str(f).startswith("..")}
    out[dist.metadata["Name"]] = sorted(t for t in tops if t and t != "__pycache__")
print(json.dumps(out))
"""


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def image_names() -> set[str]:
    lines = IMAGE.read_text(encoding="utf-8").splitlines()
    return {canonical(line) for line in lines if line.strip() and not line.startswith("#")}


def site_packages(python: Path) -> Path:
    code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    return Path(
        subprocess.run([python, "-c", code], check=True, capture_output=True, text=True).stdout.strip()
    )


def build_env(source: Path, venv: Path) -> Path:
    """A venv (pip from ensurepip, offline) plus links to the image's packages."""
    if venv.exists():
        shutil.rmtree(venv)
    subprocess.run([source, "-m", "venv", venv], check=True)  # the same Python as the linked packages
    python = venv / "bin" / "python3"
    target, origin = site_packages(python), site_packages(source)
    dists = json.loads(
        subprocess.run([source, "-c", LIST_DISTS], check=True, capture_output=True, text=True).stdout
    )
    wanted = image_names() - {"pip", "setuptools", "wheel"}  # the venv's own
    linked = []
    for name, tops in sorted(dists.items()):
        if canonical(name) not in wanted:
            continue
        linked.append(name)
        for top in tops:
            if (origin / top).exists() and not (target / top).exists():
                (target / top).symlink_to(origin / top)
    print(f"rehearsal env: {len(linked)} of the image's packages linked from {source}", flush=True)
    return python


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--source", type=Path, default=ROOT / ".venv-cuda" / "bin" / "python")
    parser.add_argument("--work", type=Path, default=Path("/tmp/polyasr-rehearse"))
    args = parser.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    python = build_env(args.source, work / "venv")
    version = subprocess.run(
        [python, "-c", "import sys; print(f'{sys.version_info[0]}.{sys.version_info[1]}')"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    env = {
        **os.environ,
        "PATH": f"{python.parent}{os.pathsep}{os.environ['PATH']}",  # python3 is the venv's
        "PY_VERSION": version,
        "SITE": str(work / "site"),
        "WHEELS": str(work),
        "OUT": str(work / "out"),
    }
    env.pop("PYTHONPATH", None)
    for folder in ("site", "out", ".whl", ".whl2"):
        shutil.rmtree(work / folder, ignore_errors=True)
    (work / "out").mkdir()
    subprocess.run(["sh", str(ROOT / "bench" / "gpu_wheels.sh")], cwd=work, env=env, check=True)
    steps = (["install"], ["bench", "--cpu-rehearsal", "--no-compile"])
    for step in steps:
        print(f"== gpu_run.sh {' '.join(step)}", flush=True)
        subprocess.run(["sh", str(ROOT / "bench" / "gpu_run.sh"), *step], cwd=ROOT, env=env, check=True)
    print(f"rehearsal passed: {work / 'out' / 'gpu_bench.json'}")


if __name__ == "__main__":
    main()
