#!/usr/bin/env python3
"""Checks the workspace's declared minimum Rust version against its dependencies: every registry package in
Cargo.lock whose sources `cargo fetch` downloaded is read for its `rust-version`, and those above the
workspace's are listed (exit status 1). Packages without a `rust-version` are counted apart (they declare
nothing). Run from the repository root after `cargo fetch`:

    python3 scripts/msrv-deps.py
"""
import glob
import os
import re
import sys


def version(text):
    return tuple(int(x) for x in text.split(".")[:2])


def main():
    workspace = open("Cargo.toml").read()
    want = re.search(r'^rust-version\s*=\s*"([^"]+)"', workspace, re.M).group(1)
    lock = open("Cargo.lock").read()
    packages = re.findall(
        r'\[\[package\]\]\nname = "([^"]+)"\nversion = "([^"]+)"\nsource = "registry', lock
    )
    home = os.environ.get("CARGO_HOME", os.path.expanduser("~/.cargo"))
    above, missing, undeclared, newest = [], [], 0, (0, 0)
    for name, ver in packages:
        found = glob.glob(os.path.join(home, "registry", "src", "*", f"{name}-{ver}", "Cargo.toml"))
        if not found:
            missing.append(f"{name} {ver}")
            continue
        m = re.search(r'^rust-version\s*=\s*"([^"]+)"', open(found[0]).read(), re.M)
        if not m:
            undeclared += 1
            continue
        newest = max(newest, version(m.group(1)))
        if version(m.group(1)) > version(want):
            above.append(f"{name} {ver} needs {m.group(1)}")
    print(
        f"{len(packages)} registry packages in Cargo.lock, workspace rust-version {want}: "
        f"{len(packages) - len(missing) - undeclared} declare one (newest {newest[0]}.{newest[1]}), "
        f"{undeclared} declare none, {len(missing)} not fetched"
    )
    for line in above:
        print("above the workspace's:", line)
    for line in missing:
        print("not fetched (run `cargo fetch`):", line)
    return 1 if above or missing else 0


if __name__ == "__main__":
    sys.exit(main())
