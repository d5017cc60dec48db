#!/usr/bin/env bash
# Checks redial's declared rust-version (the MSRV) without the old toolchain,
# which CI cannot install (no rustup downloads here). The MSRV must be at
# least:
#   * what the edition needs (2024: 1.85);
#   * what the language features in src/ need (let chains: 1.88);
#   * every rust-version declared by a crate a library user builds: the
#     normal and build dependencies of redial, all features on.
# Standard-library APIs newer than the MSRV are caught by clippy's
# `incompatible_msrv` lint, which reads the same rust-version (clippy runs
# with -D warnings in .ci/run). docs/msrv.md says how the figure was found.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo metadata --format-version 1 --all-features --locked 2>/dev/null |
  python3 -c '
import json, pathlib, re, sys

def ver(text):
    return tuple(int(part) for part in (text.split(".") + ["0", "0"])[:3])

def show(v):
    return ".".join(map(str, v))

meta = json.load(sys.stdin)
packages = {p["id"]: p for p in meta["packages"]}
root = meta["resolve"]["root"]
ours = packages[root]
declared = ver(ours["rust_version"])
nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}

# What a library user compiles: normal and build dependencies, transitively
# (dev-dependencies of redial only build its own tests and benches).
needs = []
seen, todo = {root}, [root]
while todo:
    node = nodes[todo.pop()]
    for dep in node["deps"]:
        if all(k["kind"] == "dev" for k in dep["dep_kinds"]) or dep["pkg"] in seen:
            continue
        seen.add(dep["pkg"])
        todo.append(dep["pkg"])
        package = packages[dep["pkg"]]
        if package.get("rust_version"):
            needs.append((ver(package["rust_version"]), package["name"] + " " + package["version"]))

editions = {"2015": (1, 0, 0), "2018": (1, 31, 0), "2021": (1, 56, 0), "2024": (1, 85, 0)}
needs.append((editions[ours["edition"]], "edition " + ours["edition"]))
# `if let … && let …`: let chains, stable since 1.88 (edition 2024 only).
chains = [str(path) for path in pathlib.Path("src").rglob("*.rs")
          if re.search(r"&&\s*let\s", path.read_text())]
if chains:
    needs.append(((1, 88, 0), "let chains (" + chains[0] + ")"))

floor, why = max(needs)
print(f"rust-version declared: {show(declared)}; needed: {show(floor)} ({why})")
too_new = sorted(n for n in needs if n[0] > declared)
for v, what in too_new:
    print(f"  {what} needs {show(v)}")
sys.exit(1 if too_new else 0)
'
