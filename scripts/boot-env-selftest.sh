#!/usr/bin/env bash
# Self-test of the boot environment (scripts/boot-env.sh): builds it (if not
# up to date), serves the provisioner's side of the HTTP contract from a
# small Python server on 127.0.0.1, and boots the environment under QEMU
# (TCG; the guest reaches the server as 10.0.2.2):
#
#   commission     inventory POSTed, valid JSON, matches the VM (2 CPUs,
#                  ~256 MiB, the disks' sizes, the NIC's MAC with link; a
#                  virtio-scsi disk whose model has a quote and a backslash)
#   deploy-ok      image (with image-sha256) written to the disk, the rest
#                  of the disk untouched, /deployed POSTed, guest rebooted
#   deploy-404     /image answers 404: /failed POSTed, disk unchanged
#   deploy-short   /image closes after half the bytes: /failed, first MiB wiped
#   deploy-badsha  wrong image-sha256: /failed, first MiB wiped
#   bad-mode       strato.mode=bogus: /failed POSTed, disk unchanged
#   deploy-tiny    (if guest-images.sh's tiny.raw is in the cache) tiny.raw
#                  deployed without image-sha256, then the disk boots it to
#                  "STRATO-GUEST ready"
#
# Usage: boot-env-selftest.sh [--force]   (--force rebuilds the environment)
#   STRATO_IMAGE_CACHE   as for boot-env.sh
#   STRATO_KEEP_TEST=1   keep the work dir (it is kept anyway on failure)
# Exits non-zero with a message on the first failed check. Runs as root.
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CACHE_DIR="${STRATO_IMAGE_CACHE:-/var/cache/strato/images}"
MAC=52:54:00:12:34:56
DISK_MIB=64
QEMU_TIMEOUT=180
T=""
SERVER_PID=""
QEMU_PID=""
PASSED=()

die() {
    echo "FAIL: $*" >&2
    exit 1
}

cleanup() {
    local rc=$?
    set +e
    [ -z "$QEMU_PID" ] || { kill "$QEMU_PID" 2>/dev/null; wait "$QEMU_PID" 2>/dev/null; }
    [ -z "$SERVER_PID" ] || { kill "$SERVER_PID" 2>/dev/null; wait "$SERVER_PID" 2>/dev/null; }
    if [ -n "$T" ] && [ -d "$T" ]; then
        if [ "$rc" -ne 0 ] || [ "${STRATO_KEEP_TEST:-0}" = 1 ]; then
            echo "test files kept in $T" >&2
        else
            rm -rf "$T"
        fi
    fi
    exit "$rc"
}

# ------------------------------------------------------------------ server

write_server() {
    cat >"$T/server.py" <<'PY'
"""Provisioner side of the boot-env HTTP contract, for the self-test.

Serves /bootenv/m1/s3cret/{image,image-size,image-sha256}; records each
POST to <dir>/posts/<name> (body) and <name>.ctype. The scenario is read
from <dir>/scenario on each request: "ok", "404" (image 404), "short" (image
cut off halfway), "badsha" (wrong image-sha256), "nosha" (no image-sha256).
The image served is <dir>/image.
"""
import hashlib, http.server, os, sys

D = sys.argv[1]
PREFIX = "/bootenv/m1/s3cret/"

def scenario():
    with open(os.path.join(D, "scenario")) as f:
        return f.read().strip()

class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def log_message(self, fmt, *args):
        with open(os.path.join(D, "requests.log"), "a") as f:
            f.write("%s %s\n" % (scenario(), fmt % args))

    def reply(self, code, body=b"", ctype="text/plain"):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        sc = scenario()
        img = os.path.join(D, "image")
        if not self.path.startswith(PREFIX):
            return self.reply(404, b"unknown machine\n")
        name = self.path[len(PREFIX):]
        if name == "image-size":
            return self.reply(200, b"%d\n" % os.path.getsize(img))
        if name == "image-sha256":
            if sc == "nosha":
                return self.reply(404, b"no checksum\n")
            h = hashlib.sha256()
            with open(img, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            digest = h.hexdigest()
            if sc == "badsha":
                digest = "0" * 64
            return self.reply(200, digest.encode() + b"\n")
        if name == "image":
            if sc == "404":
                return self.reply(404, b"no image\n")
            size = os.path.getsize(img)
            send = size // 2 if sc == "short" else size
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(size))
            self.end_headers()
            with open(img, "rb") as f:
                left = send
                while left > 0:
                    chunk = f.read(min(left, 1 << 16))
                    if not chunk:
                        break
                    self.wfile.write(chunk)
                    left -= len(chunk)
            self.close_connection = True
            return
        return self.reply(404, b"not found\n")

    def do_POST(self):
        if not self.path.startswith(PREFIX):
            return self.reply(404, b"unknown machine\n")
        name = self.path[len(PREFIX):]
        n = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(n) if n else b""
        if name not in ("inventory", "deployed", "failed"):
            return self.reply(404, b"not found\n")
        posts = os.path.join(D, "posts")
        os.makedirs(posts, exist_ok=True)
        with open(os.path.join(posts, name + ".ctype"), "w") as f:
            f.write(self.headers.get("Content-Type", ""))
        with open(os.path.join(posts, name), "wb") as f:
            f.write(body)
        self.send_response(204)
        self.end_headers()

srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
with open(os.path.join(D, "port.tmp"), "w") as f:
    f.write(str(srv.server_address[1]))
os.rename(os.path.join(D, "port.tmp"), os.path.join(D, "port"))
srv.serve_forever()
PY
}

start_server() {
    echo ok >"$T/scenario"
    python3 "$T/server.py" "$T" >"$T/server.log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 100); do
        [ -f "$T/port" ] && break
        kill -0 "$SERVER_PID" 2>/dev/null || { cat "$T/server.log" >&2; die "HTTP server did not start"; }
        sleep 0.1
    done
    [ -f "$T/port" ] || die "HTTP server did not report its port"
    PORT="$(cat "$T/port")"
    log "HTTP server on 127.0.0.1:$PORT (pid $SERVER_PID)"
}

# ------------------------------------------------------------------- files

# A test image whose size is not a multiple of 1 MiB: a header, then a
# SHA-256 counter stream.
make_test_image() { # OUT
    python3 - "$1" <<'PY'
import hashlib, sys
size = 4 * 1048576 + 12345
out = bytearray(b"STRATO-BOOTENV-TEST-IMAGE\n")
i = 0
while len(out) < size:
    out += hashlib.sha256(b"strato %d" % i).digest()
    i += 1
open(sys.argv[1], "wb").write(bytes(out[:size]))
PY
}

# The target disk: the first 8 MiB a recognisable "old content" pattern.
make_disk() {
    rm -f "$T/disk.raw"
    python3 - "$T/disk.raw" "$DISK_MIB" <<'PY'
import sys
with open(sys.argv[1], "wb") as f:
    f.write(b"OLD-DISK-CONTENT" * (8 * 1048576 // 16))
    f.truncate(int(sys.argv[2]) * 1048576)
PY
    DISK_SHA="$(sha256sum "$T/disk.raw" | cut -d' ' -f1)"
}

reset_posts() { rm -rf "$T/posts"; mkdir -p "$T/posts"; }

# -------------------------------------------------------------------- QEMU

# run_qemu NAME MODE [QEMU ARGS...]: boots the environment; console in
# $T/NAME.console.
run_qemu() {
    local name="$1" mode="$2" rc=0 start
    shift 2
    local url="http://10.0.2.2:$PORT/bootenv/m1/s3cret"
    start=$(date +%s)
    timeout -k 5 "$QEMU_TIMEOUT" qemu-system-x86_64 -machine accel=tcg -m 256 -smp 2 -nographic \
        -kernel "$BOOTENV/vmlinuz" -initrd "$BOOTENV/initrd.img" \
        -append "console=ttyS0 quiet no_timer_check panic=5 strato.url=$url strato.mode=$mode" \
        -netdev user,id=n0 -device virtio-net-pci,netdev=n0,mac=$MAC \
        -drive file="$T/disk.raw",if=virtio,format=raw -no-reboot "$@" \
        </dev/null >"$T/$name.console" 2>&1 &
    QEMU_PID=$!
    wait "$QEMU_PID" || rc=$?
    QEMU_PID=""
    log "$name: QEMU exited with $rc after $(( $(date +%s) - start )) s"
    [ "$rc" -ne 124 ] || die "$name: QEMU timed out after ${QEMU_TIMEOUT}s (console: $T/$name.console)"
    [ "$rc" -eq 0 ] || die "$name: QEMU exited with status $rc (console: $T/$name.console)"
    grep -a 'STRATO-BOOTENV' "$T/$name.console" | sed "s/^/    [$name] /" | tr -d '\r' >&2
    if grep -aq 'Kernel panic' "$T/$name.console"; then die "$name: kernel panic (console: $T/$name.console)"; fi
}

console_has() { # NAME TEXT
    grep -aqF "STRATO-BOOTENV $2" "$T/$1.console"
}

# ------------------------------------------------------------------- tests

# SCSI product id with a quote and a backslash: JSON escaping.
SCSI_MODEL='Tst"Dsk\X'
test_commission() {
    reset_posts
    echo ok >"$T/scenario"
    truncate -s 32M "$T/disk2.raw"
    run_qemu commission commission -device virtio-scsi-pci,id=scsi0 \
        -drive file="$T/disk2.raw",if=none,id=d2,format=raw -device scsi-hd,drive=d2,bus=scsi0.0,product="$SCSI_MODEL"
    console_has commission "inventory sent" || die "commission: no 'inventory sent' on the console"
    [ -f "$T/posts/inventory" ] || die "commission: no inventory POSTed"
    [ ! -f "$T/posts/failed" ] || die "commission: /failed POSTed: $(cat "$T/posts/failed")"
    [ "$(cat "$T/posts/inventory.ctype")" = application/json ] ||
        die "commission: inventory Content-Type is '$(cat "$T/posts/inventory.ctype")'"
    python3 -m json.tool "$T/posts/inventory" >/dev/null || die "commission: inventory is not valid JSON: $(cat "$T/posts/inventory")"
    python3 - "$T/posts/inventory" "$(stat -c %s "$T/disk.raw")" "$MAC" "$(stat -c %s "$T/disk2.raw")" "$SCSI_MODEL" <<'PY' || die "commission: inventory does not match the VM"
import json, sys
inv = json.load(open(sys.argv[1]))
disk_size, mac, disk2_size, disk2_model = int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
errors = []
if set(inv) != {"cpus", "cpu_model", "ram_mib", "disks", "nics"}:
    errors.append("keys are %s" % sorted(inv))
if inv.get("cpus") != 2:
    errors.append("cpus %r, want 2" % inv.get("cpus"))
if not isinstance(inv.get("cpu_model"), str) or not inv["cpu_model"]:
    errors.append("cpu_model %r" % inv.get("cpu_model"))
if not isinstance(inv.get("ram_mib"), int) or not 160 <= inv["ram_mib"] <= 256:
    errors.append("ram_mib %r, want 160..256" % inv.get("ram_mib"))
disks = {d.get("name"): d for d in inv.get("disks", [])}
if disks.get("vda", {}).get("size_bytes") != disk_size:
    errors.append("disk vda %r, want size_bytes %d" % (disks.get("vda"), disk_size))
if disks.get("sda") != {"name": "sda", "size_bytes": disk2_size, "model": disk2_model}:
    errors.append("disk sda %r, want size_bytes %d model %r" % (disks.get("sda"), disk2_size, disk2_model))
if any(set(d) != {"name", "size_bytes", "model"} for d in disks.values()):
    errors.append("disk entries %r" % list(disks.values()))
nics = inv.get("nics", [])
if [n for n in nics if n.get("mac") == mac and n.get("link") is True and n.get("name")] == []:
    errors.append("no nic with mac %s and link: %r" % (mac, nics))
for e in errors:
    print("  inventory: " + e, file=sys.stderr)
print("  inventory: %s" % json.dumps(inv), file=sys.stderr)
sys.exit(1 if errors else 0)
PY
    PASSED+=(commission)
}

test_deploy_ok() {
    reset_posts
    make_disk
    echo ok >"$T/scenario"
    run_qemu deploy-ok deploy
    console_has deploy-ok "deployed" || die "deploy-ok: no 'deployed' on the console"
    console_has deploy-ok "image SHA-256 verified" || die "deploy-ok: the SHA-256 was not checked"
    [ -f "$T/posts/deployed" ] || die "deploy-ok: /deployed not POSTed"
    [ ! -s "$T/posts/deployed" ] || die "deploy-ok: /deployed body is not empty"
    [ ! -f "$T/posts/failed" ] || die "deploy-ok: /failed POSTed: $(cat "$T/posts/failed")"
    grep -aq 'reboot now' "$T/deploy-ok.console" || die "deploy-ok: did not reboot"
    local n
    n="$(stat -c %s "$T/image")"
    cmp -n "$n" "$T/image" "$T/disk.raw" || die "deploy-ok: the disk does not start with the image"
    # The rest of the disk is untouched: old pattern up to 8 MiB, zeros after.
    python3 - "$T/disk.raw" "$n" <<'PY' || die "deploy-ok: the disk beyond the image was changed"
import sys
data = open(sys.argv[1], "rb").read()
n = int(sys.argv[2])
old = (b"OLD-DISK-CONTENT" * (8 * 1048576 // 16))
sys.exit(0 if data[n:8 * 1048576] == old[n:] and data[8 * 1048576:].count(0) == len(data) - 8 * 1048576 else 1)
PY
    PASSED+=(deploy-ok)
}

# test_deploy_fail NAME SCENARIO WANT_DISK(unchanged|wiped) REASON_TEXT
test_deploy_fail() {
    local name="$1" sc="$2" want="$3" reason="$4"
    reset_posts
    make_disk
    echo "$sc" >"$T/scenario"
    run_qemu "$name" deploy
    [ -f "$T/posts/failed" ] || die "$name: /failed not POSTed"
    [ ! -f "$T/posts/deployed" ] || die "$name: /deployed POSTed although the deploy failed"
    ! console_has "$name" "deployed" || die "$name: 'deployed' printed although the deploy failed"
    [ "$(wc -l <"$T/posts/failed")" -le 1 ] || die "$name: /failed body is not one line"
    grep -qF "$reason" "$T/posts/failed" || die "$name: /failed reason '$(cat "$T/posts/failed")' lacks '$reason'"
    [ "$(cat "$T/posts/failed.ctype")" = text/plain ] || die "$name: /failed Content-Type is '$(cat "$T/posts/failed.ctype")'"
    grep -aq 'poweroff now' "$T/$name.console" || die "$name: did not power off"
    log "$name: /failed says: $(cat "$T/posts/failed")"
    case "$want" in
        unchanged)
            [ "$(sha256sum "$T/disk.raw" | cut -d' ' -f1)" = "$DISK_SHA" ] || die "$name: the disk was changed" ;;
        wiped)
            cmp -n 1048576 "$T/disk.raw" /dev/zero >/dev/null 2>&1 || die "$name: the first MiB of the partly written disk was not wiped" ;;
    esac
    PASSED+=("$name")
}

# strato.mode=bogus: reported to the provisioner, then power off.
test_bad_mode() {
    reset_posts
    make_disk
    echo ok >"$T/scenario"
    run_qemu bad-mode bogus
    [ -f "$T/posts/failed" ] || die "bad-mode: /failed not POSTed"
    grep -qF "unknown strato.mode 'bogus'" "$T/posts/failed" || die "bad-mode: /failed says '$(cat "$T/posts/failed")'"
    [ ! -f "$T/posts/inventory" ] && [ ! -f "$T/posts/deployed" ] || die "bad-mode: inventory or deployed POSTed"
    [ "$(sha256sum "$T/disk.raw" | cut -d' ' -f1)" = "$DISK_SHA" ] || die "bad-mode: the disk was changed"
    grep -aq 'poweroff now' "$T/bad-mode.console" || die "bad-mode: did not power off"
    PASSED+=(bad-mode)
}

# tiny.raw from guest-images.sh, deployed and then booted from the disk.
test_deploy_tiny() {
    local tiny="$CACHE_DIR/tiny.raw" rc=0
    if [ ! -f "$tiny" ] || ! (cd "$CACHE_DIR" && sha256sum --status -c tiny.raw.sha256 2>/dev/null); then
        log "deploy-tiny: skipped ($tiny missing or not matching its .sha256; scripts/guest-images.sh tiny makes it)"
        return 0
    fi
    cp "$T/image" "$T/image.synthetic"
    cp "$tiny" "$T/image"
    reset_posts
    make_disk
    echo nosha >"$T/scenario"
    run_qemu deploy-tiny deploy
    console_has deploy-tiny "no image-sha256 offered" || die "deploy-tiny: the missing image-sha256 was not noticed"
    console_has deploy-tiny "deployed" || die "deploy-tiny: no 'deployed' on the console"
    [ -f "$T/posts/deployed" ] || die "deploy-tiny: /deployed not POSTed"
    [ ! -f "$T/posts/failed" ] || die "deploy-tiny: /failed POSTed: $(cat "$T/posts/failed")"
    cmp -n "$(stat -c %s "$tiny")" "$tiny" "$T/disk.raw" || die "deploy-tiny: the disk does not start with tiny.raw"
    # Boot the deployed disk; the tiny guest stays up, so stop at "ready".
    timeout -k 5 120 qemu-system-x86_64 -machine accel=tcg -m 256 -smp 1 -nographic \
        -drive file="$T/disk.raw",if=virtio,format=raw,snapshot=on -net none -no-reboot \
        </dev/null >"$T/tiny-boot.console" 2>&1 &
    QEMU_PID=$!
    for _ in $(seq 1100); do
        grep -aq 'STRATO-GUEST ready' "$T/tiny-boot.console" && break
        kill -0 "$QEMU_PID" 2>/dev/null || break
        sleep 0.1
    done
    kill "$QEMU_PID" 2>/dev/null || true
    wait "$QEMU_PID" 2>/dev/null || rc=$?
    QEMU_PID=""
    grep -aq 'STRATO-GUEST ready' "$T/tiny-boot.console" || die "deploy-tiny: the deployed disk did not boot to 'STRATO-GUEST ready' ($T/tiny-boot.console)"
    log "deploy-tiny: the deployed disk boots (STRATO-GUEST ready)"
    cp "$T/image.synthetic" "$T/image"
    PASSED+=(deploy-tiny)
}

main() {
    local force=() t0
    for a in "$@"; do
        case "$a" in
            --force) force=(--force) ;;
            -h|--help) sed -n '2,/^# shellcheck/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
            *) echo "unknown argument: $a (try --help)" >&2; exit 2 ;;
        esac
    done
    [ "$(id -u)" -eq 0 ] || die "run as root (boot-env.sh needs it)"
    command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 not found (scripts/lib.sh ensure_virt installs it)"
    command -v python3 >/dev/null || die "python3 not found"
    t0=$(date +%s)
    BOOTENV="$(bash "$STRATO_ROOT/scripts/boot-env.sh" "${force[@]}")" || die "boot-env.sh failed"
    [ -f "$BOOTENV/vmlinuz" ] && [ -f "$BOOTENV/initrd.img" ] || die "boot-env.sh made no vmlinuz/initrd.img in '$BOOTENV'"
    log "boot env: $BOOTENV (vmlinuz $(stat -c %s "$BOOTENV/vmlinuz") bytes, initrd.img $(stat -c %s "$BOOTENV/initrd.img") bytes)"

    T="$(mktemp -d /tmp/strato-bootenv-test.XXXXXX)"
    trap cleanup EXIT
    trap 'exit 130' INT TERM
    write_server
    make_test_image "$T/image"
    make_disk
    start_server

    test_commission
    test_deploy_ok
    test_deploy_fail deploy-404 404 unchanged "downloading the image failed"
    test_deploy_fail deploy-short short wiped "image"
    test_deploy_fail deploy-badsha badsha wiped "SHA-256 mismatch"
    test_bad_mode
    test_deploy_tiny

    if grep -av ' /bootenv/m1/s3cret/\(inventory\|deployed\|failed\|image\|image-size\|image-sha256\) ' "$T/requests.log" |
        grep -a '"' >&2; then
        die "the environment requested paths outside the contract (above)"
    fi
    echo "PASS: boot-env self-test (${PASSED[*]}) in $(( $(date +%s) - t0 )) s"
}

main "$@"
