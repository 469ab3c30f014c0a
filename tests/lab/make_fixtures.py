#!/usr/bin/env python3
"""Builds the tree the lab's registry serves (tests/src/bin/registry.rs), from nothing but this
file: every package is made here, at test time, so no test ever downloads anything.

    make_fixtures.py OUT --npm-url https://npm.lab.test/npm --crates-url https://crates.lab.test/cargo

OUT/pypi    PEP 503 simple index + wheels (labpkg, blockedpkg)
OUT/npm     packuments (NAME/index.json) + tarballs (NAME/-/NAME-1.0.0.tgz)
OUT/cargo   sparse index (index/config.json, index/la/bc/labcrate, ...) + .crate downloads
OUT/go      GOPROXY tree (lab.test/hello, lab.test/blocked: @v/list, .info, .mod, .zip)
OUT/git     bare repositories lab.git and blocked.git (for git http-backend and git daemon)

Each package carries the marker `lab-ok` that the tests look for in what the client fetched.
"""

import argparse
import base64
import hashlib
import io
import json
import os
import subprocess
import tarfile
import zipfile

MARKER = "lab-ok"
# Fixed times: the same input gives the same bytes (and checksums) on every run.
EPOCH = (2026, 1, 1, 0, 0, 0)
MTIME = 1767225600  # 2026-01-01T00:00:00Z


def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)


def zip_bytes(files):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files:
            z.writestr(zipfile.ZipInfo(name, EPOCH), data)
    return buf.getvalue()


def tgz_bytes(files):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.USTAR_FORMAT) as t:
        for name, data in files:
            data = data.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), MTIME, 0o644
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def wheel(name):
    """A pure-Python wheel (PEP 427): module, METADATA, WHEEL, RECORD with hashes."""
    dist = f"{name}-1.0.0.dist-info"
    files = [
        (f"{name}/__init__.py", f'VALUE = "{MARKER}"\n'),
        (f"{dist}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0.0\n"),
        (f"{dist}/WHEEL", "Wheel-Version: 1.0\nGenerator: egress-lab\n"
                          "Root-Is-Purelib: true\nTag: py3-none-any\n"),
    ]
    record = []
    for path, data in files:
        digest = base64.urlsafe_b64encode(hashlib.sha256(data.encode()).digest()).rstrip(b"=")
        record.append(f"{path},sha256={digest.decode()},{len(data.encode())}")
    record.append(f"{dist}/RECORD,,")
    files.append((f"{dist}/RECORD", "\n".join(record) + "\n"))
    return zip_bytes(files)


def pypi(out, names):
    links = []
    for name in names:
        fname = f"{name}-1.0.0-py3-none-any.whl"
        data = wheel(name)
        write(f"{out}/pypi/packages/{fname}", data)
        sha = hashlib.sha256(data).hexdigest()
        write(f"{out}/pypi/simple/{name}/index.html",
              f'<!DOCTYPE html>\n<html><body>\n'
              f'<a href="../../packages/{fname}#sha256={sha}">{fname}</a>\n</body></html>\n')
        links.append(f'<a href="{name}/">{name}</a>')
    write(f"{out}/pypi/simple/index.html",
          "<!DOCTYPE html>\n<html><body>\n" + "\n".join(links) + "\n</body></html>\n")


def npm(out, names, base):
    for name in names:
        pkg = {"name": name, "version": "1.0.0", "main": "index.js"}
        data = tgz_bytes([
            ("package/package.json", json.dumps(pkg, indent=2) + "\n"),
            ("package/index.js", f'module.exports = "{MARKER}";\n'),
        ])
        write(f"{out}/npm/{name}/-/{name}-1.0.0.tgz", data)
        integrity = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
        version = dict(pkg, dist={
            "tarball": f"{base}/{name}/-/{name}-1.0.0.tgz",
            "shasum": hashlib.sha1(data).hexdigest(),
            "integrity": integrity,
        })
        packument = {"name": name, "dist-tags": {"latest": "1.0.0"},
                     "versions": {"1.0.0": version}}
        write(f"{out}/npm/{name}/index.json", json.dumps(packument, indent=2) + "\n")


def index_path(name):
    """The sparse index's path of a crate (cargo's `index` layout)."""
    if len(name) <= 2:
        return f"{len(name)}/{name}"
    if len(name) == 3:
        return f"3/{name[0]}/{name}"
    return f"{name[:2]}/{name[2:4]}/{name}"


def cargo(out, names, base):
    write(f"{out}/cargo/index/config.json",
          json.dumps({"dl": f"{base}/api/v1/crates", "api": base}) + "\n")
    for name in names:
        manifest = f'[package]\nname = "{name}"\nversion = "1.0.0"\nedition = "2021"\n'
        data = tgz_bytes([
            (f"{name}-1.0.0/Cargo.toml", manifest),
            (f"{name}-1.0.0/src/lib.rs", f'pub const VALUE: &str = "{MARKER}";\n'),
        ])
        write(f"{out}/cargo/api/v1/crates/{name}/1.0.0/download", data)
        entry = {"name": name, "vers": "1.0.0", "deps": [],
                 "cksum": hashlib.sha256(data).hexdigest(), "features": {}, "yanked": False}
        write(f"{out}/cargo/index/{index_path(name)}", json.dumps(entry) + "\n")


def goproxy(out, modules):
    for mod in modules:
        v = "v1.0.0"
        gomod = f"module {mod}\n\ngo 1.18\n"
        base = f"{out}/go/{mod}/@v"
        write(f"{base}/list", f"{v}\n")
        write(f"{base}/{v}.info", json.dumps({"Version": v, "Time": "2026-01-01T00:00:00Z"}))
        write(f"{base}/{v}.mod", gomod)
        pkg = mod.rsplit("/", 1)[-1]
        write(f"{base}/{v}.zip", zip_bytes([
            (f"{mod}@{v}/go.mod", gomod),
            (f"{mod}@{v}/{pkg}.go", f'package {pkg}\n\nconst Value = "{MARKER}"\n'),
        ]))


def git_repos(out, names):
    env = dict(os.environ, GIT_CONFIG_NOSYSTEM="1", HOME=out,
               GIT_AUTHOR_NAME="lab", GIT_AUTHOR_EMAIL="lab@lab.test",
               GIT_COMMITTER_NAME="lab", GIT_COMMITTER_EMAIL="lab@lab.test",
               GIT_AUTHOR_DATE="2026-01-01T00:00:00Z", GIT_COMMITTER_DATE="2026-01-01T00:00:00Z")

    def git(*args, cwd=None):
        subprocess.run(["git", *args], cwd=cwd, env=env, check=True,
                       stdout=subprocess.DEVNULL)

    for name in names:
        work = f"{out}/git-work/{name}"
        os.makedirs(work, exist_ok=True)
        git("init", "-q", "-b", "main", work)
        write(f"{work}/README", f"{MARKER} {name}\n")
        git("add", "README", cwd=work)
        git("commit", "-q", "-m", "lab fixture", cwd=work)
        git("clone", "-q", "--bare", work, f"{out}/git/{name}.git")
        # `git daemon` serves a repository only when it is marked exported (or --export-all).
        write(f"{out}/git/{name}.git/git-daemon-export-ok", "")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--npm-url", required=True)
    p.add_argument("--crates-url", required=True)
    a = p.parse_args()
    pypi(a.out, ["labpkg", "blockedpkg"])
    npm(a.out, ["labpkg", "blockedpkg"], a.npm_url)
    cargo(a.out, ["labcrate", "blocked"], a.crates_url)
    goproxy(a.out, ["lab.test/hello", "lab.test/blocked"])
    git_repos(a.out, ["lab", "blocked"])


if __name__ == "__main__":
    main()
