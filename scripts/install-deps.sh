#!/bin/bash
# Install what the build and the QEMU test lane need (Debian 12).
# usage: scripts/install-deps.sh [--kver 6.12]   (or KSERIES=6.12)
# Idempotent: does nothing when everything is already installed.
set -euo pipefail

series=${KSERIES:-}
while [ $# -gt 0 ]; do
	case $1 in
	--kver) series=${2:?--kver needs a value}; shift 2 ;;
	--kver=*) series=${1#*=}; shift ;;
	-h|--help) sed -n '2,4s/^# \{0,1\}//p' "$0"; exit 0 ;;
	*) echo "install-deps: unknown argument '$1'" >&2; exit 2 ;;
	esac
done
case $series in
''|6.1|6.1.*) series= ;;
6.12|6.12.*) series=6.12 ;;
*) echo "install-deps: unsupported kernel series '$series' (6.1 or 6.12)" >&2; exit 2 ;;
esac

pkgs=(build-essential linux-image-amd64 linux-headers-amd64 qemu-system-x86
	busybox-static fio sparse libdevmapper-dev dmsetup e2fsprogs cpio kmod
	xz-utils bc util-linux coreutils dosfstools gnuplot-nox
	qemu-utils python3-libnbd libnbd-bin iproute2 nbd-client)

SUDO=
if [ "$(id -u)" != 0 ]; then
	command -v sudo >/dev/null || { echo "install-deps: must run as root" >&2; exit 1; }
	SUDO="sudo -n"
fi

installed() {
	[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]
}

installed_glob() {
	dpkg-query -W -f='${Package} ${Status}\n' "$1" 2>/dev/null |
		grep -q ' install ok installed$'
}

missing=()
for p in "${pkgs[@]}"; do
	installed "$p" || missing+=("$p")
done

need_bpo=
if [ "$series" = 6.12 ]; then
	installed_glob 'linux-image-6.12*-amd64' && installed_glob 'linux-headers-6.12*-amd64' ||
		need_bpo=1
fi

if [ ${#missing[@]} = 0 ] && [ -z "$need_bpo" ]; then
	echo "install-deps: all packages already installed"
	exit 0
fi

export DEBIAN_FRONTEND=noninteractive
apt_opts=(-y -q --no-install-recommends -o Acquire::Retries=3
	-o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)

if [ -n "$need_bpo" ] &&
	! grep -rqs '^[^#]*bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
	echo "install-deps: adding bookworm-backports"
	$SUDO tee /etc/apt/sources.list.d/backports.sources >/dev/null <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
fi

$SUDO apt-get -q update < /dev/null
if [ ${#missing[@]} -gt 0 ]; then
	echo "install-deps: installing ${missing[*]}"
	$SUDO apt-get install "${apt_opts[@]}" "${missing[@]}" < /dev/null
fi
if [ -n "$need_bpo" ]; then
	echo "install-deps: installing the 6.12 kernel from bookworm-backports"
	$SUDO apt-get install "${apt_opts[@]}" -t bookworm-backports \
		linux-image-amd64 linux-headers-amd64 < /dev/null
fi
echo "install-deps: done"
