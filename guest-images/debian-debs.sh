# shellcheck shell=bash
# Debian packages for the guest images, sourced by guest-images/hwkvm/build.sh and
# guest-images/linux/build.sh: `apt-get download` into a cache directory (no install), a
# kernel package chosen once and then taken from the cache, busybox-static unpacked.
#
# The sourcing script sets `out` (its output directory: .debs go to $out/debs) and defines
# `log`. Everything runs as root (apt's sandbox user cannot write into a root-owned tree).

# apt-get update is slow (~20 s) and only needed before the first install or download.
apt_updated=0
apt_update_once() {
    if [ "$apt_updated" = 0 ]; then
        log "apt-get update"
        apt-get update -qq
        apt_updated=1
    fi
}

# Downloads package $1 into $out/debs unless a .deb of it is there already.
download_deb() {
    local package=$1
    mkdir -p "$out/debs"
    if compgen -G "$out/debs/${package}_*.deb" >/dev/null; then
        return
    fi
    apt_update_once
    log "apt-get download $package"
    # Downloading as root into our own cache directory is what we want anyway.
    (cd "$out/debs" && apt-get download -qq -o APT::Sandbox::User=root "$package")
}

# Sets `kpkg` to the kernel package: $1 if not empty (the caller's override), else the
# newest cached .deb matching $out/debs/$3, else what meta-package $2 depends on. A warm
# run needs neither apt's lists nor the network.
choose_kernel_package() {
    local override=$1 meta=$2 glob=$3 cached
    kpkg=$override
    if [ -z "$kpkg" ]; then
        cached=$(compgen -G "$out/debs/$glob" | sort -V | tail -n1 || true)
        if [ -n "$cached" ]; then
            kpkg=$(basename "$cached" | cut -d_ -f1)
        else
            apt_update_once
            kpkg=$(apt-cache depends "$meta" | awk '/Depends: linux-image-/ { print $2; exit }')
        fi
    fi
    [ -n "$kpkg" ] || { log "cannot find the Debian kernel package ($meta)"; exit 1; }
}

# Unpacks the downloaded busybox-static into $out/busybox once; sets `bbdir` and `busybox`.
# (Not Debian's busybox package: installing it would replace a machine's dynamic one.)
unpack_busybox() {
    bbdir=$out/busybox
    if [ ! -x "$bbdir/bin/busybox" ]; then
        rm -rf "$bbdir"
        mkdir -p "$bbdir"
        dpkg-deb -x "$(compgen -G "$out/debs/busybox-static_*.deb" | head -n1)" "$bbdir"
    fi
    busybox=$bbdir/bin/busybox
}
