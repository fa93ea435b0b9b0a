#!/usr/bin/env bash
# Build edge-agent_<version>_<arch>.deb with standard Debian tools (python3 -m venv, pip,
# dpkg-deb). Run from anywhere; as any user (dpkg-deb --root-owner-group sets ownership).
#
#   packaging/build_deb.sh [--out DIR] [--cache DIR] [--compression xz|zstd|gzip|none]
#                          [--level N] [--extras cuda,...] [--offline]
#
# The application lives in its own virtual environment at /opt/edge-agent. A venv is not
# relocatable (its console scripts name the interpreter by absolute path), so it is created
# with the target interpreter (/usr/bin/python3.11, the package's dependency) inside a
# staging root, filled from wheels, and every staging path it recorded is then rewritten to
# /opt/edge-agent: script shebangs, activate scripts, pyvenv.cfg. Bytecode is compiled with
# the final paths (compileall -s/-p). The build fails if any staging path is left anywhere.
# This needs no privileges, no mount namespace and no chroot.
#
# Dependency wheels are cached under --cache (default <repo>/.cache/deb, git-ignored), keyed
# by the dependency list, interpreter and architecture: the first build downloads from PyPI,
# later builds (and --offline) install from the cache only.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
out="$repo/dist"
cache="$repo/.cache/deb"
compression=xz
level=""
extras=""
offline=0
PYTHON=${PYTHON:-/usr/bin/python3.11}
BUILD_PYTHON=${BUILD_PYTHON:-}

die() { echo "build_deb: $*" >&2; exit 1; }
started=$SECONDS
step() { echo "build_deb: [$((SECONDS - started))s] $*" >&2; }

while [ $# -gt 0 ]; do
    case "$1" in
        --out) out=$2; shift 2 ;;
        --cache) cache=$2; shift 2 ;;
        --compression) compression=$2; shift 2 ;;
        --level) level=$2; shift 2 ;;
        --extras) extras=$2; shift 2 ;;
        --offline) offline=1; shift ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done

for tool in dpkg-deb dpkg md5sum; do
    command -v "$tool" >/dev/null || die "$tool is missing (apt-get install dpkg)"
done
[ -x "$PYTHON" ] || die "$PYTHON is missing (apt-get install python3.11 python3.11-venv)"
"$PYTHON" -c 'import ensurepip, venv' 2>/dev/null \
    || die "$PYTHON cannot create virtual environments (apt-get install python3.11-venv)"

pyver=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
version=$("$PYTHON" -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' "$repo/pyproject.toml")
arch=$(dpkg --print-architecture)
deps_key=$("$PYTHON" - "$repo/pyproject.toml" "$extras" "$pyver" "$arch" <<'PY'
import hashlib, json, sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
extras = sorted(e for e in sys.argv[2].split(",") if e)
wanted = {"deps": project["dependencies"], "extras": {e: project["optional-dependencies"][e] for e in extras}}
print(hashlib.sha256(json.dumps([wanted, sys.argv[3:]], sort_keys=True).encode()).hexdigest()[:16])
PY
)
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
    SOURCE_DATE_EPOCH=$(git -C "$repo" log -1 --format=%ct 2>/dev/null || date +%s)
fi
# Reproducible archive timestamps; also makes compileall write hash-checked .pyc files,
# which stay valid whatever mtimes dpkg gives the sources.
export SOURCE_DATE_EPOCH

work=$(mktemp -d "${TMPDIR:-/tmp}/edge-agent-deb.XXXXXX")
trap 'rm -rf "$work"' EXIT
root="$work/root"
venv="$root/opt/edge-agent"
final=/opt/edge-agent
mkdir -p "$root" "$out" "$cache"

echo "build_deb: edge-agent $version for $arch, python $pyver" >&2

# Layout version of the cached dependency venv: bump when the steps below change its content.
layout=1
pipq=(--disable-pip-version-check --no-input -q)

# Rewrite what a venv recorded about the path it was created at (see the header).
relocate() {
    local at=$1 f
    for f in "$at"/bin/*; do
        [ -f "$f" ] && [ ! -L "$f" ] || continue
        if head -c 2 "$f" | grep -q '#!'; then
            sed -i "1s|^#!$at/bin/|#!$final/bin/|" "$f"
        fi
        case "$(basename "$f")" in activate*) sed -i "s|$at|$final|g" "$f" ;; esac
    done
    sed -i "s|$at|$final|g" "$at/pyvenv.cfg"
}

step "build tools"
# 1. Build tools: a current pip, setuptools and wheel, in their own cached venv. Debian's
#    bundled pip (23.0) ignores dependencies declared in Metadata-Version 2.4 wheels, which
#    current setuptools writes; and pip never enters the shipped venv (pip --python targets it).
build_reqs=("pip>=25" "setuptools>=69" wheel)
tools_key=$(printf '%s\n' "${build_reqs[@]}" "$PYTHON" "$pyver" | sha256sum | cut -c1-16)
buildtools="$cache/buildtools-$tools_key"
tools="$cache/tools-$tools_key"
if [ ! -f "$buildtools/.complete" ]; then
    [ "$offline" = 1 ] && die "no cached build tools in $buildtools; run once online"
    rm -rf "$buildtools" "$buildtools.part"
    "$PYTHON" -m venv "$work/bootstrap"
    "$work/bootstrap/bin/python" -m pip "${pipq[@]}" download --only-binary=:all: \
        -d "$buildtools.part" "${build_reqs[@]}"
    touch "$buildtools.part/.complete"
    mv "$buildtools.part" "$buildtools"
fi
if [ ! -f "$tools/.complete" ]; then
    rm -rf "$tools"
    "$PYTHON" -m venv --without-pip "$tools"
    pip_wheel=$(ls "$buildtools"/pip-*.whl | head -1)
    "$tools/bin/python" "$pip_wheel/pip" "${pipq[@]}" install --no-index \
        --find-links "$buildtools" "${build_reqs[@]}"
    touch "$tools/.complete"
fi
tpip=("$tools/bin/python" -m pip "${pipq[@]}")

step "project wheel"
# 2. The project wheel, built from a copy of what setuptools needs (tracked and untracked but
#    not ignored files), so a shared checkout's build/ and egg-info are neither used nor touched.
src="$work/src"
mkdir -p "$src" "$work/wheel"
if git -C "$repo" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    (cd "$repo" && git ls-files -z --cached --others --exclude-standard -- \
        pyproject.toml README.md 'LICENSE*' edge_agent \
        | while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done \
        | xargs -0 cp --parents -t "$src")
else
    cp -a "$repo/pyproject.toml" "$repo/README.md" "$repo/edge_agent" "$src/"
fi
# setuptools is chatty about deprecations that are not the packager's to fix: show its
# output only when the build fails.
"${tpip[@]}" wheel --no-deps --no-build-isolation -w "$work/wheel" "$src" \
    >"$work/wheel.log" 2>&1 || { cat "$work/wheel.log" >&2; die "building the project wheel failed"; }
project_wheel=$(ls "$work/wheel"/edge_agent-*.whl)

step "dependencies"
# 3. The dependencies: wheels, then a venv holding them, relocated and compiled; both cached
#    by the dependency list, so a rebuild only adds the project on top of a copy.
key="$deps_key-$tools_key-l$layout"
wheels="$cache/wheels-$deps_key"
depvenv="$cache/venv-$key"
if [ ! -f "$wheels/.complete" ]; then
    [ "$offline" = 1 ] && die "no cached wheels for these dependencies in $cache; run once online"
    rm -rf "$wheels" "$wheels.part"
    # By file, never by name: an unrelated "edge-agent" exists on PyPI (dependency confusion).
    "${tpip[@]}" wheel -w "$wheels.part" "$project_wheel${extras:+[$extras]}"
    rm -f "$wheels.part"/edge_agent-*.whl
    touch "$wheels.part/.complete"
    mv "$wheels.part" "$wheels"
fi
if [ ! -f "$depvenv/.complete" ]; then
    rm -rf "$depvenv" "$work/deps"
    dstage="$work/deps$final"
    "$PYTHON" -m venv --without-pip "$dstage"
    # Resolve edge-agent's requirements from the cached wheels only, then drop edge-agent.
    "${tpip[@]}" --python "$dstage/bin/python" install --no-index --no-compile \
        --find-links "$wheels" --find-links "$work/wheel" "edge-agent${extras:+[$extras]}==$version"
    "${tpip[@]}" --python "$dstage/bin/python" uninstall -y edge-agent
    relocate "$dstage"
    "$dstage/bin/python" -m compileall -q -j 0 -s "$work/deps" -p / "$dstage/lib" >/dev/null \
        || die "bytecode compilation failed"
    touch "$dstage/.complete"
    mv "$dstage" "$depvenv"
fi

step "install into the staging venv"
# 4. A copy of the dependency venv plus the project, made to live at /opt/edge-agent.
mkdir -p "$(dirname "$venv")"
cp -a "$depvenv" "$venv"
rm -f "$venv/.complete"
# By name from the local folder (--no-index: nothing else is consulted); by file, pip would
# record the staging path in direct_url.json.
"${tpip[@]}" --python "$venv/bin/python" install --no-index --no-deps --no-compile \
    --find-links "$work/wheel" "edge-agent==$version"
"${tpip[@]}" --python "$venv/bin/python" check >/dev/null \
    || die "dependencies do not match the project (pip check): rebuild without cache"
relocate "$venv"
"$venv/bin/python" -m compileall -q -j 0 -s "$root" -p / \
    "$venv/lib/python$pyver/site-packages/edge_agent" >/dev/null \
    || die "bytecode compilation failed"

step "demo model, systemd files, config"
# 5. Demo model, systemd integration, config, docs.
if [ -f "$repo/models/demo/genai_config.json" ]; then
    mkdir -p "$venv/share/models"
    cp -r "$repo/models/demo" "$venv/share/models/demo"
else
    echo "build_deb: warning: models/demo is missing; the package ships no demo model" >&2
fi
install -D -m 0644 "$repo/systemd/edge-agent.service" "$root/lib/systemd/system/edge-agent.service"
install -D -m 0644 "$repo/systemd/edge-agent.sysusers" "$root/usr/lib/sysusers.d/edge-agent.conf"
install -D -m 0644 "$repo/systemd/edge-agent.tmpfiles" "$root/usr/lib/tmpfiles.d/edge-agent.conf"
install -D -m 0640 "$here/agent.toml" "$root/etc/edge-agent/agent.toml"
if [ ! -d "$venv/share/models/demo" ]; then
    sed -i 's|^model_dir = |# model_dir = |' "$root/etc/edge-agent/agent.toml"
fi
chmod 0750 "$root/etc/edge-agent"
doc="$root/usr/share/doc/edge-agent"
install -D -m 0644 "$repo/systemd/edge-agent.service.d/accelerator.conf.example" \
    "$doc/accelerator.conf.example"
[ -f "$repo/docs/INSTALL.md" ] && install -m 0644 "$repo/docs/INSTALL.md" "$doc/INSTALL.md"
cat > "$doc/copyright" <<COPY
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: edge-agent
License: Apache-2.0
Comment: /opt/edge-agent/lib holds third-party Python packages under their own licenses;
 each one's license is in its *.dist-info folder.
COPY
mkdir -p "$root/usr/bin"
ln -s "$final/bin/edge-agent" "$root/usr/bin/edge-agent"

# Nothing may remember where it was built.
if leaks=$(grep -rlF "$work" "$root" 2>/dev/null | head -5) && [ -n "$leaks" ]; then
    die "staging path left in: ${leaks//$root/}"
fi

step "debian metadata"
# 6. Debian metadata.
mkdir -p "$root/DEBIAN"
install -m 0755 "$here/debian/postinst" "$here/debian/prerm" "$here/debian/postrm" "$root/DEBIAN/"
echo /etc/edge-agent/agent.toml > "$root/DEBIAN/conffiles"
(cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' \
    | grep -zv '^etc/' | sort -z | xargs -0 md5sum) > "$root/DEBIAN/md5sums"
installed_kb=$(du -sk --apparent-size --exclude=DEBIAN "$root" | cut -f1)
cat > "$root/DEBIAN/control" <<CONTROL
Package: edge-agent
Version: $version
Architecture: $arch
Maintainer: edge-agent maintainers <edge-agent@localhost>
Installed-Size: $installed_kb
Depends: python$pyver, adduser | systemd (>= 252)
Recommends: systemd (>= 252)
Section: net
Priority: optional
Homepage: https://github.com/edge-agent/edge-agent
Description: private LLM inference daemon for edge boxes
 A gRPC daemon that serves a quantized model locally through onnxruntime-genai,
 watches resource pressure, escalates to a cloud router only when a fleet-signed
 policy permits, and installs signed model bundles atomically.
 .
 The application and its Python dependencies live in a private virtual
 environment under /opt/edge-agent; the service runs sandboxed as the
 edge-agent user (systemd Type=notify, watchdog, credentials).
CONTROL

# Normal permissions whatever the umask of the build; ownership comes from --root-owner-group.
find "$root" -type d -exec chmod u+rwx,go+rx,go-w {} +
chmod 0750 "$root/etc/edge-agent"
find "$root" -type f ! -perm -u+x -exec chmod 0644 {} +
find "$root" -type f -perm -u+x -exec chmod 0755 {} +
chmod 0640 "$root/etc/edge-agent/agent.toml"
chmod 0644 "$root/DEBIAN/control" "$root/DEBIAN/conffiles" "$root/DEBIAN/md5sums"

step "dpkg-deb"
deb="$out/edge-agent_${version}_${arch}.deb"
zopts=(-Z"$compression")
[ -n "$level" ] && zopts+=(-z"$level")
dpkg-deb --root-owner-group "${zopts[@]}" --build "$root" "$deb" >/dev/null
step "done: $deb"
echo "$deb"
