"""Checks that the declared rust-version is honest, from `cargo metadata` on stdin.

Only one toolchain is installed in CI, so the declared version is checked against its
two bounds rather than by a build with that version: it is at least the largest
rust-version of every locked dependency (dev-dependencies and other platforms'
included), and at most the running compiler's version.
"""

import json
import re
import subprocess
import sys


def parse(version):
    parts = [int(x) for x in version.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))


meta = json.load(sys.stdin)
root = next(p for p in meta["packages"] if p["id"] == meta["resolve"]["root"])
declared_raw = root.get("rust_version")
if not declared_raw:
    sys.exit("Cargo.toml declares no rust-version")
declared = parse(declared_raw)

deps = [
    (parse(p["rust_version"]), p["name"], p["version"], p["rust_version"])
    for p in meta["packages"]
    if p["id"] != root["id"] and p.get("rust_version")
]
_, name, version, raw = max(deps)
print(
    f"declared rust-version {declared_raw}; the largest among {len(deps)} locked "
    f"dependencies that declare one: {raw} ({name} {version})"
)
too_new = sorted(f"{n} {v} needs {r}" for (req, n, v, r) in deps if req > declared)
if too_new:
    sys.exit("rust-version is below what these dependencies need:\n  " + "\n  ".join(too_new))

rustc = subprocess.check_output(["rustc", "--version"], text=True)
current = re.search(r"\d+\.\d+\.\d+", rustc).group(0)
if parse(current) < declared:
    sys.exit(f"rustc {current} is older than the declared rust-version {declared_raw}")
print(f"rustc {current} is at least {declared_raw}")
