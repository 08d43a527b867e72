#!/usr/bin/env bash
# Builds (or finds in the cache) the Debian 12 image the molecule VM boots:
#   debootstrap bookworm -> apt-get install packages.txt in the chroot -> kernel + initrd copied out
#   -> ext4 image made from the folder with `mkfs.ext4 -d` (no loop mount) -> Python wheelhouse.
# The cache lives outside the repository, keyed by a hash of packages.txt and this script:
#   ${TENANTNET_VM_CACHE:-~/.cache/tenantnet-nsproxy}/image-<key>/{rootfs.ext4,vmlinuz,initrd.img,
#   id_ed25519,id_ed25519.pub,wheels/,rootfs.tar}
# rootfs.tar is the same root as a tarball without the kernel (/boot, /usr/lib/modules), for
# `docker import`: the fleet stage (tests/fleet) runs its container hosts from it.
# Prints that directory on its last line of stdout; progress goes to stderr.
# Runs as root (debootstrap, chroot). All mounts happen in a private mount namespace.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
MIRROR=${TENANTNET_VM_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
IMAGE_SIZE=${TENANTNET_VM_IMAGE_SIZE:-6G}
CACHE=${TENANTNET_VM_CACHE:-$HOME/.cache/tenantnet-nsproxy}
# The wheels the nsproxy daemon's fast path needs, for the VM's Python (3.11, like the host's).
WHEELS=(httptools uvloop setproctitle setuptools wheel hypno==1.1.0)  # hypno: verify's worker probe (its temp-file use is relied on)

log() { printf '[build-image %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (debootstrap and chroot need it)"
for tool in debootstrap mkfs.ext4 ssh-keygen unshare; do
  command -v "$tool" >/dev/null || die "'$tool' is missing (scripts/bootstrap.sh installs it)"
done

mapfile -t PACKAGES < <(sed -e 's/#.*//' -e 's/[[:space:]]//g' "$HERE/packages.txt" | grep -v '^$')
KEY=$(cat "$HERE/packages.txt" "$HERE/build-image.sh" | sha256sum | cut -c1-16)
OUT=$CACHE/image-$KEY
if [ -f "$OUT/.complete" ]; then
  log "cached image $OUT"
  echo "$OUT"
  exit 0
fi

mkdir -p "$CACHE/debs"
exec 9>"$CACHE/.build.lock"
flock 9 # a second build of the same key waits for the first, then finds it complete
if [ -f "$OUT/.complete" ]; then echo "$OUT"; exit 0; fi

START=$SECONDS
WORK=$CACHE/build-$KEY
rm -rf "$WORK" "$OUT"
mkdir -p "$WORK" "$OUT"
ROOT=$WORK/rootfs
trap 'rm -rf "$WORK"' EXIT

log "image key $KEY: ${#PACKAGES[@]} packages from $MIRROR (takes several minutes the first time)"

# Everything that mounts (debootstrap's /proc, the apt archive bind) runs in a private mount
# namespace, so nothing stays mounted on this machine even if the build is killed.
unshare --mount --propagation private -- bash -euo pipefail -s "$ROOT" "$MIRROR" "$SUITE" \
  "$CACHE/debs" "${PACKAGES[@]}" <<'CHROOT' 2>&1 | sed -u 's/^/  | /' >&2
ROOT=$1 MIRROR=$2 SUITE=$3 DEBS=$4
shift 4
log() { printf '[build-image %s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }
log "debootstrap $SUITE (minbase)"
debootstrap --variant=minbase --cache-dir="$DEBS" "$SUITE" "$ROOT" "$MIRROR" \
  | grep --line-buffered -E '^I: (Retrieving|Validating|Extracting|Installing|Configuring|Base)' \
  | awk '{ n++; if ($2 != last || n % 25 == 0) { print; fflush() } last = $2 }'

# Configuration that must exist before the packages' maintainer scripts run.
echo 'force-unsafe-io' > "$ROOT/etc/dpkg/dpkg.cfg.d/unsafe-io"
printf '#!/bin/sh\nexit 101\n' > "$ROOT/usr/sbin/policy-rc.d"   # start no service in the chroot
chmod 755 "$ROOT/usr/sbin/policy-rc.d"
printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' \
  > "$ROOT/etc/apt/apt.conf.d/90norecommends"
cat > "$ROOT/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb http://deb.debian.org/debian-security $SUITE-security main
EOF
echo '/dev/vda / ext4 defaults,errors=remount-ro 0 1' > "$ROOT/etc/fstab"

mount --bind "$DEBS" "$ROOT/var/cache/apt/archives"
mount -t proc proc "$ROOT/proc"
mount -t sysfs sys "$ROOT/sys"
mount --bind /dev "$ROOT/dev"
mount -t devpts devpts "$ROOT/dev/pts" -o newinstance,ptmxmode=0666
log "apt-get install $# packages"
chroot "$ROOT" env DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8 apt-get update -q \
  | grep --line-buffered -E '^(Get|Hit|Reading)' || true
chroot "$ROOT" env DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8 \
  apt-get install -y -q -o Dpkg::Use-Pty=0 -o Dpkg::Options::=--force-confold "$@" </dev/null \
  | grep --line-buffered -E '^(Get:|Setting up|Unpacking linux|Processing triggers for (systemd|initramfs)|update-initramfs|E:)' \
  | awk '/^Get:/ { n++; if (n % 20 == 0) { print "downloaded " n " packages"; fflush() } next } { print; fflush() }'
chroot "$ROOT" apt-get clean
umount "$ROOT/var/cache/apt/archives"
log "chroot done"
CHROOT
[ -s "$ROOT/usr/sbin/sshd" ] || die "package installation failed (see the log above)"

log "configuring the guest"
# Kernel and initrd (Debian's default MODULES=most has virtio) boot with -kernel/-initrd.
KVER=$(basename "$(ls -d "$ROOT"/lib/modules/* | sort -V | tail -1)")
cp "$ROOT/boot/vmlinuz-$KVER" "$OUT/vmlinuz"
cp "$ROOT/boot/initrd.img-$KVER" "$OUT/initrd.img"

rm -f "$ROOT/usr/sbin/policy-rc.d" "$ROOT/etc/dpkg/dpkg.cfg.d/unsafe-io"
echo tenantnet-vm > "$ROOT/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 tenantnet-vm\n' > "$ROOT/etc/hosts"
: > "$ROOT/etc/resolv.conf" # no DNS: the VM reaches nothing outside
# Management NIC (first NIC, fixed MAC) by DHCP from QEMU's user-mode network; the trunk and
# switch NICs stay unmanaged for the roles and the tests.
mkdir -p "$ROOT/etc/systemd/network"
cat > "$ROOT/etc/systemd/network/10-mgmt.network" <<'EOF'
[Match]
MACAddress=52:54:00:12:34:56

[Network]
DHCP=ipv4
LinkLocalAddressing=no
IPv6AcceptRA=no
EOF
chroot "$ROOT" systemctl enable systemd-networkd.service >/dev/null 2>&1
# Boot speed under TCG: nothing waits for "online", no periodic jobs.
for unit in systemd-networkd-wait-online.service apt-daily.timer apt-daily-upgrade.timer \
  man-db.timer e2scrub_all.timer e2scrub_reap.service fstrim.timer dpkg-db-backup.timer; do
  chroot "$ROOT" systemctl mask "$unit" >/dev/null 2>&1 || true
done
chroot "$ROOT" systemctl enable docker.service ssh.service >/dev/null 2>&1 || true
# Root logs in with the cached key only; the serial console shows the boot.
chroot "$ROOT" passwd -l root >/dev/null
ssh-keygen -q -t ed25519 -N '' -C tenantnet-molecule -f "$OUT/id_ed25519"
install -d -m 700 "$ROOT/root/.ssh"
install -m 600 "$OUT/id_ed25519.pub" "$ROOT/root/.ssh/authorized_keys"
cat > "$ROOT/etc/ssh/sshd_config.d/tenantnet.conf" <<'EOF'
PermitRootLogin prohibit-password
PasswordAuthentication no
UseDNS no
EOF

log "wheelhouse for the VM's Python 3.11: ${WHEELS[*]}"
PY=/usr/bin/python3
mkdir -p "$OUT/wheels"
if ! "$PY" -m pip --version >/dev/null 2>&1; then PY=$HERE/../../../.venv/bin/python; fi
"$PY" -m pip download -q --only-binary=:all: --python-version 3.11 --platform manylinux2014_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 --implementation cp \
  -d "$OUT/wheels" "${WHEELS[@]}" 2>&1 | sed 's/^/  | /' >&2
ls "$OUT/wheels" | sed 's/^/  | /' >&2
mkdir -p "$ROOT/var/cache/tenantnet"
cp "$OUT"/wheels/*.whl "$ROOT/var/cache/tenantnet/"

log "container root: rootfs.tar (no kernel) for docker import"
tar -C "$ROOT" --numeric-owner --xattrs --exclude=./boot --exclude=./usr/lib/modules \
  -cf "$OUT/rootfs.tar" .

log "ext4 image ($IMAGE_SIZE, sparse) from the folder: mkfs.ext4 -d"
rm -f "$OUT/rootfs.ext4"
truncate -s "$IMAGE_SIZE" "$OUT/rootfs.ext4"
mkfs.ext4 -q -F -L tenantnet-root -d "$ROOT" "$OUT/rootfs.ext4"
printf '%s\n' "${PACKAGES[@]}" > "$OUT/packages.txt"
echo "$KVER" > "$OUT/kernel-version"
touch "$OUT/.complete"
log "image ready in $((SECONDS - START)) s: $OUT ($(du -sh --apparent-size "$OUT/rootfs.ext4" | cut -f1) apparent, $(du -sh "$OUT/rootfs.ext4" | cut -f1) used)"
echo "$OUT"
