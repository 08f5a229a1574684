#!/usr/bin/env bash
# nfguard set-up for a fresh Debian machine (run as root):
#   ./bootstrap.sh run    install dependencies, nfguard and a default config, then run it
#   ./bootstrap.sh test   install dependencies and run the whole test suite
#   ./bootstrap.sh bench  install dependencies (and OpenSnitch, to compare) and run the
#                         benchmark suite (python -m tests.bench; options pass through)
#   ./bootstrap.sh deb    build the Debian package (dist/nfguard_VERSION_ARCH.deb) and
#                         check it with lintian
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")"

# Build and runtime: NetfilterQueue compiles against libnetfilter-queue; the nftables
# binding loads libnftables. Tests and benchmarks: real servers, clients and tools.
RUNTIME_PACKAGES=(python3 python3-venv python3-dev gcc libnetfilter-queue-dev libnftables1
                  nftables iptables iproute2 kmod)
# systemd: `systemd-analyze verify` checks the unit; util-linux: setpriv drops the engine to
# the unit's capabilities.
# bash-completion and scdoc: the shipped completion and man pages are tried.
TEST_PACKAGES=(curl dnsmasq-base dnsutils nginx-light wrk procps psmisc systemd util-linux
               bash-completion scdoc)
# The VM test boots Debian's stock kernel on a snapshot of this machine: virtme-ng needs a
# static busybox for its initramfs and `file` to read the kernel's version and busybox's
# linking; `vng --systemd` boots the snapshot's /sbin/init (systemd-sysv). Vagrant and its
# libvirt plugin validate the Vagrantfile.
VM_TEST_PACKAGES=(linux-image-amd64 qemu-system-x86 busybox-static file systemd-sysv
                  vagrant vagrant-libvirt)
# The Debian package: debhelper and dh-virtualenv, what the wheels without a binary for
# this machine (NetfilterQueue) compile with, scdoc for the man pages, lintian to check it.
# Only the build machine needs them; the package's own Depends are runtime libraries.
DEB_BUILD_PACKAGES=(build-essential ca-certificates debhelper dh-virtualenv dpkg-dev python3 python3-dev
                    python3-venv libnetfilter-queue-dev scdoc lintian)
# Benchmarks only (not CI): what users would run instead, measured side by side.
BENCH_PACKAGES=(opensnitch)
PREFIX=/opt/nfguard

log() { printf 'bootstrap: %s\n' "$*" >&2; }

need_root() {
    if [ "$(id -u)" -ne 0 ]; then
        log "run me as root (sudo $0 $*)"
        exit 1
    fi
}

installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
}

apt_install() {
    local missing=()
    for pkg in "$@"; do
        installed "$pkg" || missing+=("$pkg")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        log "apt: installing ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${missing[@]}" >/dev/null
    fi
}

make_venv() {  # make_venv DIR PIP-INSTALL-ARGS...
    local venv=$1
    shift
    if [ ! -x "$venv/bin/python" ]; then
        log "creating $venv"
        # Debian's interpreter (the python3 package), not whatever python3 comes first on
        # PATH: one under /root or /home would be hidden from the systemd unit's sandbox
        # (ProtectHome=yes), and python3-dev's headers are the ones NetfilterQueue builds with.
        /usr/bin/python3 -m venv "$venv"
        "$venv/bin/pip" install -q --upgrade pip
    fi
    log "pip: installing $* into $venv"
    "$venv/bin/pip" install -q "$@"
}

# promtool checks contrib/prometheus's alert rules. Debian 12 ships it only inside the
# prometheus server package (96 MB of web assets, and a server started on install): the
# one binary is taken from that package into the venv instead.
promtool_into() {  # promtool_into VENV
    local target=$1/bin/promtool tmp
    [ -x "$target" ] && return
    tmp=$(mktemp -d)
    log "apt: taking promtool from Debian's prometheus package"
    (
        cd "$tmp"
        apt-get download -qq -o APT::Sandbox::User=root prometheus 2>/dev/null || {
            apt-get update -qq
            apt-get download -qq -o APT::Sandbox::User=root prometheus
        }
        dpkg-deb --fsys-tarfile prometheus_*.deb | tar -x ./usr/bin/promtool
    )
    install -m 0755 "$tmp/usr/bin/promtool" "$target"
    rm -rf "$tmp"
}

modules() {
    # Stock kernels build these as modules; this does nothing where they are built in.
    for mod in nfnetlink_queue nft_queue xt_NFQUEUE nf_conntrack; do
        modprobe -q "$mod" 2>/dev/null || true
    done
}

cmd_run() {
    need_root run
    apt_install "${RUNTIME_PACKAGES[@]}"
    modules
    make_venv "$PREFIX/venv" .
    ln -sf "$PREFIX/venv/bin/nfguard" /usr/local/sbin/nfguard
    install -d -m 0755 /etc/nfguard /etc/nfguard/rules
    [ -e /etc/nfguard/nfguard.toml ] || install -m 0644 etc/nfguard/nfguard.toml /etc/nfguard/
    if [ -z "$(ls -A /etc/nfguard/rules)" ]; then
        install -m 0644 rules/base.toml /etc/nfguard/rules/
    fi
    nfguard check --config /etc/nfguard/nfguard.toml
    log "starting nfguard (Ctrl-C stops it; 'nfguard uninstall' removes its ruleset)"
    exec nfguard run --config /etc/nfguard/nfguard.toml
}

cmd_test() {
    need_root test
    apt_install "${RUNTIME_PACKAGES[@]}" "${TEST_PACKAGES[@]}" "${VM_TEST_PACKAGES[@]}"
    modules
    make_venv .venv -e ".[test]"
    promtool_into .venv
    log "ruff"
    .venv/bin/ruff check nfguard tests vagrant/vm-test
    log "mypy"
    .venv/bin/mypy
    log "pytest"
    exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
}

cmd_bench() {
    need_root bench
    local had_opensnitch=yes
    installed opensnitch || had_opensnitch=no
    apt_install "${RUNTIME_PACKAGES[@]}" "${TEST_PACKAGES[@]}" "${BENCH_PACKAGES[@]}"
    if [ "$had_opensnitch" = no ] && [ -d /run/systemd/system ]; then
        # The package starts its daemon on the host; the benchmark runs its own, in a
        # network namespace, and only while it measures it.
        log "disabling the opensnitch service the package just started"
        systemctl disable --now opensnitch.service >/dev/null 2>&1 || true
    fi
    modules
    make_venv .venv -e ".[test]"
    log "benchmarks (a few minutes)"
    exec .venv/bin/python -m tests.bench "$@"
}

cmd_deb() {
    need_root deb
    apt_install "${DEB_BUILD_PACKAGES[@]}"
    local build
    build=$(mktemp -d /tmp/nfguard-deb.XXXXXX)
    # shellcheck disable=SC2064  # $build is known now
    trap "rm -rf '$build'" EXIT
    # Built from a copy, so that debhelper's and pip's scratch files never land in the
    # checkout; what is not committed is built too.
    mkdir "$build/nfguard"
    tar --exclude=./.git --exclude=./.venv --exclude=./dist --exclude=__pycache__ \
        --exclude='*.egg-info' --exclude=./build -cf - . | tar -xf - -C "$build/nfguard"
    log "dpkg-buildpackage in $build (a virtualenv with every dependency; a few minutes)"
    (cd "$build/nfguard" && dpkg-buildpackage --build=binary --no-sign) >"$build/build.log" 2>&1 \
        || { tail -n 40 "$build/build.log" >&2; log "the build failed"; exit 1; }
    mkdir -p dist
    local deb
    for deb in "$build"/*.deb; do
        mv "$deb" dist/
        deb=dist/$(basename "$deb")
        log "lintian $deb"
        lintian --fail-on error,warning --info "$deb" >&2 || { log "lintian: $deb fails"; exit 1; }
        log "built $PWD/$deb ($(du -h "$deb" | cut -f1); install: apt install ./$deb)"
    done
}

case "${1:-}" in
    run) shift; cmd_run "$@" ;;
    test) shift; cmd_test "$@" ;;
    bench) shift; cmd_bench "$@" ;;
    deb) shift; cmd_deb ;;
    *) echo "usage: $0 run | test [pytest args] | bench [python -m tests.bench args] | deb" >&2
       exit 2 ;;
esac
