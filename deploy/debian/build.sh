#!/usr/bin/env bash
# Build the bluezone-gateway .deb from this checkout (deploy/README.md §6).
#
#   deploy/debian/build.sh OUTDIR [dpkg-buildpackage options...]
#
# e.g. `deploy/debian/build.sh dist/` on a Pi (the full package, with the [pi] extra), or
# `deploy/debian/build.sh /tmp/out -Pnopi` for the lighter test build (deploy/debian/rules).
#
# The source tree is copied to a temporary directory (tracked and untracked-but-not-ignored
# files only: no .venv, build/ or caches), deploy/debian/ is put there as debian/, and
# `dpkg-buildpackage -us -uc -b` builds an unsigned binary package for this machine's
# architecture. The .deb ends up in OUTDIR, and its path is the last line printed. Build on
# the release and architecture the gateways run (a Pi with Raspberry Pi OS Bookworm: arm64,
# Python 3.11): the venv is tied to both.
set -euo pipefail

if [ $# -lt 1 ]; then
    echo "usage: $0 OUTDIR [dpkg-buildpackage options, e.g. -Pnopi]" >&2
    exit 2
fi
out=$1
shift
root=$(cd "$(dirname "$0")/../.." && pwd)

# The build tools: fail early with the install line rather than deep inside dpkg-buildpackage.
for tool in dpkg-buildpackage dh dh_virtualenv; do
    if ! command -v "$tool" >/dev/null; then
        echo "$tool not found: sudo apt install build-essential dpkg-dev debhelper dh-virtualenv" >&2
        exit 1
    fi
done

# The package's version is debian/changelog's; it must be the one gateway/__init__.py declares,
# or the .deb would be named and upgraded as a version it does not contain.
deb_version=$(dpkg-parsechangelog -l "$root/deploy/debian/changelog" -S Version)
py_version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$root/gateway/__init__.py")
if [ "$deb_version" != "$py_version" ]; then
    echo "deploy/debian/changelog is at $deb_version but gateway/__init__.py at $py_version:" \
        "add a changelog entry (dch -v $py_version, or by hand)" >&2
    exit 1
fi

mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/bluezone-deb.XXXXXX")
trap 'rm -rf "$work"' EXIT
src="$work/bluezone-gateway-$deb_version"
mkdir "$src"
# pip writes the console scripts' shebangs with the build venv's python, which dh_virtualenv
# then rewrites to /opt/bluezone/bin/python; past 127 characters (the kernel's limit) pip
# writes a /bin/sh trampoline instead. It would run, but the package would differ by TMPDIR.
build_python="$src/debian/bluezone-gateway/opt/bluezone/bin/python"
if [ ${#build_python} -gt 125 ]; then
    echo "TMPDIR too deep: $build_python is over 125 characters; set TMPDIR=/var/tmp" >&2
    exit 1
fi

# Copy the sources. From a git checkout: what git would commit (including new files not yet
# added, excluding ignored ones and files deleted from the work tree). Otherwise (an unpacked
# archive): everything but the usual build products and caches.
if git -C "$root" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    (
        cd "$root"
        git ls-files -z --cached --others --exclude-standard \
            | while IFS= read -r -d '' f; do
                if [ -e "$f" ] || [ -L "$f" ]; then printf '%s\0' "$f"; fi
            done \
            | tar --null -T - -cf -
    ) | tar -C "$src" -xf -
else
    tar -C "$root" -cf - --exclude=./.git --exclude=./.venv --exclude=./build --exclude=./dist \
        --exclude='*.egg-info' --exclude=__pycache__ --exclude=./.pytest_cache \
        --exclude=./.mypy_cache --exclude=./.ruff_cache --exclude=./.hypothesis . \
        | tar -C "$src" -xf -
fi
rm -rf "$src/debian"
cp -a "$root/deploy/debian" "$src/debian"

# A caller's virtualenv or PYTHONPATH must not leak into the venv being built.
unset VIRTUAL_ENV PYTHONPATH PYTHONHOME PYTHONSTARTUP

# -us -uc: unsigned; -b: binary only (no source package). The .deb is written to $work.
(cd "$src" && dpkg-buildpackage -us -uc -b "$@")

shopt -s nullglob
debs=("$work"/bluezone-gateway_*.deb)
if [ ${#debs[@]} -ne 1 ]; then
    echo "expected one bluezone-gateway_*.deb in $work, found ${#debs[@]}" >&2
    exit 1
fi
cp "${debs[0]}" "$out/"
echo "$out/$(basename "${debs[0]}")"
