# Debian's kernel packages for the images Strato builds (guest-images.sh,
# boot-env.sh): resolve, fetch once (a checked copy is kept in $DEB_CACHE so
# rebuilds need no download), unpack, and order modules. The caller sets
# KERNEL_META (the metapackage, e.g. linux-image-cloud-amd64), DEB_CACHE
# and WORK, and sources lib.sh first.

kernel_pkg_name() {
    { apt-cache depends "$KERNEL_META" 2>/dev/null || true; } |
        awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }'
}

# Sets KERNEL_PKG, KERNEL_VERSION (Debian version) and KVER (uname -r)
# without downloading anything.
resolve_kernel() {
    KERNEL_PKG="$(kernel_pkg_name)"
    if [ -z "$KERNEL_PKG" ]; then
        apt-get update -qq
        KERNEL_PKG="$(kernel_pkg_name)"
    fi
    [ -n "$KERNEL_PKG" ] || { echo "error: cannot resolve $KERNEL_META" >&2; exit 1; }
    KERNEL_VERSION="$(apt-cache policy "$KERNEL_PKG" | awk '$1 == "Candidate:" { print $2 }')"
    [ -n "$KERNEL_VERSION" ] && [ "$KERNEL_VERSION" != "(none)" ] ||
        { echo "error: no installable version of $KERNEL_PKG" >&2; exit 1; }
    KVER="${KERNEL_PKG#linux-image-}"
}

# A local .deb is used only if it is exactly the package apt would download.
local_kernel_deb() {
    local want f
    want="$(apt-cache show "$KERNEL_PKG=$KERNEL_VERSION" 2>/dev/null | awk '$1 == "SHA256:" { print $2; exit }')"
    [ -n "$want" ] || return 1
    for f in ${STRATO_KERNEL_DEB:-} "$DEB_CACHE/${KERNEL_PKG}_${KERNEL_VERSION//:/%3a}"_*.deb \
        /var/cache/apt/archives/"${KERNEL_PKG}_${KERNEL_VERSION//:/%3a}"_*.deb; do
        [ -f "$f" ] || continue
        if [ "$(sha256sum "$f" | cut -d' ' -f1)" = "$want" ]; then
            echo "$f"
            return 0
        fi
        log "ignoring $f: not $KERNEL_PKG $KERNEL_VERSION (SHA256 differs from apt's index)"
    done
    return 1
}

# Sets KERNEL_DEB and KROOT (the unpacked package, with a modules.dep);
# once per run.
fetch_kernel() {
    [ -n "${KROOT:-}" ] && return 0
    mkdir -p "$WORK/kernel"
    if KERNEL_DEB="$(local_kernel_deb)"; then
        log "using $KERNEL_DEB"
    else
        log "downloading $KERNEL_PKG $KERNEL_VERSION"
        (cd "$WORK/kernel" && apt-get -qq -o APT::Sandbox::User=root download "$KERNEL_PKG=$KERNEL_VERSION")
        KERNEL_DEB="$(ls "$WORK/kernel"/"${KERNEL_PKG}"_*.deb)"
    fi
    # Kept (one version) so that rebuilds after a template change need no
    # download; checked against apt's index again when used.
    if [ "$(dirname "$KERNEL_DEB")" != "$DEB_CACHE" ]; then
        mkdir -p "$DEB_CACHE"
        rm -f "$DEB_CACHE"/*.deb
        cp "$KERNEL_DEB" "$DEB_CACHE/"
    fi
    KROOT="$WORK/kernel/x"
    dpkg-deb -x "$KERNEL_DEB" "$KROOT"
    [ -f "$KROOT/lib/modules/$KVER/modules.dep" ] || busybox depmod -b "$KROOT" "$KVER"
    [ -f "$KROOT/lib/modules/$KVER/modules.alias" ] || busybox depmod -b "$KROOT" "$KVER"
}

# modules.dep paths for the named modules, dependencies first; built-in
# modules print nothing, unknown ones are an error.
module_load_order() { # NAME...
    local moddir="$KROOT/lib/modules/$KVER"
    awk -v want="$*" '
        function base(p) { sub(/.*\//, "", p); sub(/\.ko(\.xz|\.zst|\.gz)?$/, "", p); gsub(/-/, "_", p); return p }
        function visit(p,   n, i, d) {
            if (p in done) return
            done[p] = 1
            n = split(deps[p], d, " ")
            for (i = 1; i <= n; i++) visit(d[i])
            print p
        }
        FILENAME ~ /modules\.builtin$/ { builtin[base($1)] = 1; next }
        { p = $1; sub(/:$/, "", p); $1 = ""; deps[p] = $0; path[base(p)] = p }
        END {
            n = split(want, w, " ")
            for (i = 1; i <= n; i++) {
                m = w[i]; gsub(/-/, "_", m)
                if (m in path) visit(path[m])
                else if (!(m in builtin)) { print "error: no module " m > "/dev/stderr"; exit 1 }
            }
        }' "$moddir/modules.builtin" "$moddir/modules.dep"
}
