#!/usr/bin/env bash
# Build the vSphere simulator (vcsim) the tests run, and govc, offline from Debian packages.
#
#   tools/vcsim/install-vcsim.sh [DEST]        DEST defaults to ./.vcsim/bin
#
# Copied from the shared install script (../shared/tools/vcsim) so the project carries its own fixed
# simulator. Debian bookworm ships the govmomi 0.24.2 library (golang-github-vmware-govmomi-dev, Go
# source under /usr/share/gocode) but neither the vcsim nor the govc command. Built in GOPATH mode
# (GO111MODULE=off, GOPROXY=off): no module proxy, no network besides apt.
#
# Binaries in DEST:
#   vcsim-patched  govmomi's simulator with patches/*.patch applied and src/extra/*.go added
#                  (see README.md: snapshot tasks, unset properties, CBT, and snapshot removal that
#                  deleted unrelated VM files)
#   govc           govmomi's CLI, from Debian's source package (apt-get source, with a private
#                  deb-src list; the system's apt configuration is not touched), used by the tests
#                  as an observer independent of our pyVmomi code
#   vcsim          the stock simulator, only with VCSIM_STOCK=1 (to show a bug is the simulator's)
#
# Idempotent: apt packages are installed only when missing; each binary is rebuilt only when its
# inputs (package versions, go version, this script, main.go, the patches) changed: under a second
# when nothing did. Needs root (or sudo) only for apt-get. VCSIM_FORCE=1 rebuilds everything.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dest="${1:-./.vcsim/bin}"
mkdir -p "$dest"
dest="$(cd "$dest" && pwd)"
cache="$(dirname "$dest")/src" # govc's source package, kept so a rebuild needs no network

gocode=/usr/share/gocode
govmomi="$gocode/src/github.com/vmware/govmomi"
srcpkg=golang-github-vmware-govmomi
pkgs=(golang-go golang-github-vmware-govmomi-dev golang-github-google-uuid-dev golang-github-kr-pretty-dev dpkg-dev patch xz-utils)

log() { printf 'install-vcsim: %s\n' "$*" >&2; }
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi

# ---- 1. Debian packages ---------------------------------------------------
missing=()
for p in "${pkgs[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$p")
    fi
done
if ((${#missing[@]})); then
    export DEBIAN_FRONTEND=noninteractive
    if ! $sudo apt-get install -y --no-install-recommends "${missing[@]}" >&2; then
        log "apt-get install failed; running apt-get update and retrying"
        $sudo apt-get update >&2
        $sudo apt-get install -y --no-install-recommends "${missing[@]}" >&2
    fi
fi
command -v go >/dev/null || { log "go not found after installing golang-go"; exit 1; }
[ -d "$govmomi/simulator" ] || { log "missing $govmomi/simulator"; exit 1; }

base_inputs() {
    dpkg-query -W -f='${Package} ${Version}\n' "${pkgs[@]}" 2>/dev/null
    go version
    cat "${BASH_SOURCE[0]}" "$here/src/vcsim/main.go"
}
stamp_of() { sha256sum | cut -d' ' -f1; }
up_to_date() { # binary stamp
    [ "${VCSIM_FORCE:-0}" != 1 ] && [ -x "$dest/$1" ] && [ "$(cat "$dest/.$1-stamp" 2>/dev/null)" = "$2" ]
}

build="$(mktemp -d)"
trap 'rm -rf "$build"' EXIT
export GO111MODULE=off GOPROXY=off GOFLAGS= CGO_ENABLED=0
export GOCACHE="${GOCACHE:-${XDG_CACHE_HOME:-${HOME:-$build}/.cache}/go-build}"

# A private GOPATH holding a copy of the whole govmomi tree: GOPATH mode resolves an import path to
# the first GOPATH entry holding it, and govc imports govmomi/internal, which only code in the same
# tree may import.
tree() { # name -> prints the govmomi dir of a fresh GOPATH under $build/name
    local gp="$build/$1"
    mkdir -p "$gp/src/vcsim" "$gp/src/github.com/vmware"
    cp "$here/src/vcsim/main.go" "$gp/src/vcsim/"
    cp -r "$govmomi" "$gp/src/github.com/vmware/govmomi"
    chmod -R u+w "$gp/src/github.com/vmware/govmomi"
    find "$gp/src/github.com/vmware/govmomi" -name '*_test.go' -delete
    echo "$gp/src/github.com/vmware/govmomi"
}
go_build() { # name import-path binary
    (cd "$build/$1" && GOPATH="$build/$1:$gocode" go build -trimpath -o "$dest/$3.new" "$2")
    mv -f "$dest/$3.new" "$dest/$3"
}

# ---- 2. vcsim-patched -------------------------------------------------------
patches=("$here"/patches/*.patch)
extras=("$here"/src/extra/*.go)
stamp="$({ base_inputs; cat "${patches[@]}" "${extras[@]}"; } | stamp_of)"
if up_to_date vcsim-patched "$stamp"; then
    log "up to date: $dest/vcsim-patched"
else
    root="$(tree patched)"
    for p in "${patches[@]}"; do
        if ! patch -d "$root" -p1 --forward --quiet --no-backup-if-mismatch <"$p" >&2; then
            log "patch $(basename "$p") did not apply to govmomi $(dpkg-query -W -f='${Version}' golang-github-vmware-govmomi-dev)"
            exit 1
        fi
    done
    cp "${extras[@]}" "$root/simulator/"
    go_build patched vcsim vcsim-patched
    echo "$stamp" >"$dest/.vcsim-patched-stamp"
    log "built $dest/vcsim-patched (${#patches[@]} patches)"
fi

# ---- 3. govc ----------------------------------------------------------------
version="$(dpkg-query -W -f='${Version}' golang-github-vmware-govmomi-dev)"
stamp="$({ base_inputs; echo "$srcpkg $version"; } | stamp_of)"
if up_to_date govc "$stamp"; then
    log "up to date: $dest/govc"
else
    src="$cache/$srcpkg-$version"
    if [ ! -f "$src/.complete" ]; then
        # apt-get source with a private deb-src list and lists directory: the system's apt
        # configuration is left as it is. The suite is the one the installed package came from.
        suite="$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")"
        apt="$build/apt"
        mkdir -p "$apt/lists/partial" "$src"
        # the mirror the system uses for Debian's main archive (deb822 or one-line sources)
        mirror="$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | sed -n 's/^URIs: *//p' | tr ' ' '\n' |
            grep debian | grep -v -e security | head -n1 || true)"
        if [ -z "$mirror" ]; then
            mirror="$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
                awk '$1 == "deb" && $2 !~ /security/ && $2 ~ /debian/ {print $2; exit}' || true)"
        fi
        echo "deb-src ${mirror:-http://deb.debian.org/debian} $suite main" >"$apt/sources.list"
        aptopts=(-o "Dir::Etc::SourceList=$apt/sources.list" -o "Dir::Etc::SourceParts=$apt/none"
            -o "Dir::State::Lists=$apt/lists" -o "APT::Sandbox::User=$(id -un)")
        apt-get "${aptopts[@]}" update >&2
        (cd "$build" && apt-get "${aptopts[@]}" source "$srcpkg=$version" >&2)
        rm -rf "$src" && mkdir -p "$src"
        cp -r "$build/$srcpkg-${version%%-*}/govc" "$src/"
        touch "$src/.complete"
    fi
    root="$(tree govc)"
    cp -r "$src/govc" "$root/"
    find "$root/govc" -name '*_test.go' -delete
    go_build govc github.com/vmware/govmomi/govc govc
    echo "$stamp" >"$dest/.govc-stamp"
    log "built $dest/govc (govmomi $version)"
fi

# ---- 4. stock vcsim, on request -------------------------------------------------
if [ "${VCSIM_STOCK:-0}" = 1 ]; then
    stamp="$(base_inputs | stamp_of)"
    if up_to_date vcsim "$stamp"; then
        log "up to date: $dest/vcsim"
    else
        mkdir -p "$build/stock/src/vcsim" && cp "$here/src/vcsim/main.go" "$build/stock/src/vcsim/"
        go_build stock vcsim vcsim
        echo "$stamp" >"$dest/.vcsim-stamp"
        log "built $dest/vcsim (stock govmomi $version)"
    fi
fi
