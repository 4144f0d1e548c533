#!/bin/bash
# Build (or reuse) the debug kernel of `make check-debug': Debian's
# linux-source-6.1 tarball, `make allnoconfig' plus tests/vm/debug-kernel.config
# (KASAN, lockdep, kmemleak, UBSAN, debug objects, hung-task detector, and the
# guest's drivers built in), bzImage and the few modules, all in a cache
# directory outside the repo. Rebuilds only when the stamp changes: the
# fragment, this script, the source tarball or the compiler.
#
#   usage: tests/vm/build-debug-kernel.sh [--cache DIR] [--jobs N] [--force]
#   env:   PTB_DEBUG_CACHE  cache dir (default ${XDG_CACHE_HOME:-$HOME/.cache}/ptbackup-debug)
#          LINUX_SOURCE     source tarball (default /usr/src/linux-source-6.1.tar.xz)
#
# On success it writes CACHE/kernel.env (shell assignments, read by
# check-debug.sh):
#   PTB_DEBUG_KVER     kernel release, e.g. 6.1.192-ptb-debug
#   PTB_DEBUG_KDIR     the built tree (make -C KDIR M=... modules)
#   PTB_DEBUG_KERNEL   bzImage
#   PTB_DEBUG_MODROOT  INSTALL_MOD_PATH of the modules (MODROOT/lib/modules/KVER)
#   PTB_DEBUG_BUILD_SECONDS  duration of the last kernel build
set -u
set -o pipefail

die() { echo "build-debug-kernel: $*" >&2; exit 1; }
say() { echo "build-debug-kernel: $*" >&2; }

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
self=$here/$(basename "${BASH_SOURCE[0]}")
fragment=$here/debug-kernel.config
cache=${PTB_DEBUG_CACHE:-${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/ptbackup-debug}
tarball=${LINUX_SOURCE:-/usr/src/linux-source-6.1.tar.xz}
jobs=$(nproc 2>/dev/null || echo 2)
force=

while [ $# -gt 0 ]; do
	case $1 in
	--cache) cache=${2:?}; shift 2 ;;
	--cache=*) cache=${1#*=}; shift ;;
	--jobs) jobs=${2:?}; shift 2 ;;
	--jobs=*) jobs=${1#*=}; shift ;;
	--force) force=1; shift ;;
	-h|--help) sed -n '2,19s/^# \{0,1\}//p' "$0"; exit 0 ;;
	*) die "unknown argument '$1'" ;;
	esac
done
case $jobs in ''|*[!0-9]*|0) die "bad --jobs '$jobs'" ;; esac
[ -r "$fragment" ] || die "$fragment not found"

# A make above us (make check-debug VAR=...) must not leak its variables
# or its jobserver into the kernel build.
unset MAKEFLAGS MFLAGS MAKELEVEL MAKEOVERRIDES

# --- build dependencies ----------------------------------------------------
apt_install() {
	if [ "$(id -u)" != 0 ]; then
		die "missing $*: apt-get install $* (as root)"
	fi
	say "installing $*"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
		"$@" < /dev/null >&2 ||
		{ apt-get -q update < /dev/null >&2 &&
		  DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
			--no-install-recommends "$@" < /dev/null >&2; } ||
		die "cannot install $*"
}

missing=()
for t in gcc make flex bison bc perl xz depmod; do
	command -v "$t" >/dev/null || missing+=("$t")
done
[ -r /usr/include/gelf.h ] || missing+=(libelf-dev)
[ -r /usr/include/openssl/opensslv.h ] || missing+=(libssl-dev)
if [ ${#missing[@]} -gt 0 ]; then
	pkgs=()
	for t in "${missing[@]}"; do
		case $t in
		gcc|make) pkgs+=(build-essential) ;;
		xz) pkgs+=(xz-utils) ;;
		depmod) pkgs+=(kmod) ;;
		*) pkgs+=("$t") ;;
		esac
	done
	apt_install "${pkgs[@]}"
fi
if [ ! -r "$tarball" ]; then
	[ -z "${LINUX_SOURCE:-}" ] || die "$tarball not found"
	apt_install linux-source-6.1
	[ -r "$tarball" ] || die "$tarball not found after installing linux-source-6.1"
fi

mkdir -p "$cache" || die "cannot create $cache"
cache=$(cd "$cache" && pwd -P)
case $cache in *[[:space:],]*) die "cache path must not contain spaces or commas: $cache" ;; esac
tree=$cache/linux
modroot=$cache/modules
envfile=$cache/kernel.env
log=$cache/build.log

exec 9> "$cache/.lock" || die "cannot open $cache/.lock"
if ! flock -n 9; then
	say "waiting for another build in $cache"
	flock 9 || die "flock failed"
fi

# --- the stamp ---------------------------------------------------------------
say "hashing $tarball"
srcid=$( {
	dpkg-query -W -f='${Package} ${Version}\n' linux-source-6.1 2>/dev/null
	sha256sum < "$tarball"
} | sha256sum | cut -d' ' -f1) || die "cannot hash $tarball"
stamp=$( {
	echo "src $srcid"
	sha256sum < "$fragment"
	sha256sum < "$self"
	gcc --version | head -n1
	ld --version | head -n1
} | sha256sum | cut -d' ' -f1) || die "cannot compute the stamp"

if [ -z "$force" ] && [ "$(cat "$cache/stamp" 2>/dev/null)" = "$stamp" ] &&
	[ -s "$envfile" ]; then
	# shellcheck source=/dev/null
	. "$envfile"
	if [ -s "${PTB_DEBUG_KERNEL:-}" ] &&
		[ -d "$modroot/lib/modules/${PTB_DEBUG_KVER:-}" ]; then
		say "up to date: $PTB_DEBUG_KVER (built in ${PTB_DEBUG_BUILD_SECONDS:-?}s, $cache)"
		exit 0
	fi
fi
rm -f "$cache/stamp"

# --- source tree: extracted once per tarball, then built incrementally ------
if [ -n "$force" ] || [ "$(cat "$cache/linux.srcid" 2>/dev/null)" != "$srcid" ] ||
	[ ! -f "$tree/Makefile" ]; then
	say "extracting $tarball into $tree"
	rm -rf "$tree" "$cache/linux.srcid" "$cache/extract.tmp"
	mkdir -p "$cache/extract.tmp" || die "cannot create $cache/extract.tmp"
	tar -xJf "$tarball" -C "$cache/extract.tmp" || die "cannot extract $tarball"
	top=$(find "$cache/extract.tmp" -mindepth 1 -maxdepth 1 -type d)
	[ -f "$top/Makefile" ] || die "unexpected tarball layout"
	mv "$top" "$tree" || die "cannot move the tree"
	rmdir "$cache/extract.tmp"
	echo "$srcid" > "$cache/linux.srcid"
fi

# --- configuration: allnoconfig + fragment, checked symbol by symbol ------
say "configuring (allnoconfig + ${fragment#"$here"/})"
start=$(date +%s)
: > "$log"
(cd "$tree" && rm -f .config &&
	scripts/kconfig/merge_config.sh -n "$fragment" &&
	make olddefconfig) >> "$log" 2>&1 || { tail -n 30 "$log" >&2; die "configuration failed (log $log)"; }

bad=0
while IFS= read -r line; do
	case $line in
	CONFIG_*=*)
		grep -qxF -- "$line" "$tree/.config" && continue
		sym=${line%%=*}
		got=$(grep -E "^(# )?${sym}[= ]" "$tree/.config")
		say "fragment wants '$line', .config has '${got:-nothing}'"
		bad=1 ;;
	"# CONFIG_"*" is not set")
		sym=${line#"# "}; sym=${sym%% *}
		got=$(grep -E "^$sym=" "$tree/.config") || continue
		say "fragment wants '$line', .config has '$got'"
		bad=1 ;;
	esac
done < "$fragment"
[ "$bad" = 0 ] || die "the configuration does not match $fragment (unmet dependencies?)"

# --- build ---------------------------------------------------------------
kver=$(make -s -C "$tree" kernelrelease 2>>"$log") || die "cannot get the kernel release"
[ -n "$kver" ] || die "empty kernel release"
say "building $kver with -j$jobs (log $log)"
if ! (cd "$tree" && make -j"$jobs" bzImage modules) >> "$log" 2>&1; then
	grep -E 'error|Error' "$log" | tail -n 20 >&2
	tail -n 30 "$log" >&2
	die "kernel build failed (log $log)"
fi
rm -rf "$modroot"
if ! (cd "$tree" && make INSTALL_MOD_PATH="$modroot" modules_install) >> "$log" 2>&1; then
	tail -n 30 "$log" >&2
	die "modules_install failed (log $log)"
fi
# The tree's own build/source links are not needed in the guest.
rm -f "$modroot/lib/modules/$kver/build" "$modroot/lib/modules/$kver/source"
end=$(date +%s)
secs=$((end - start))

cat > "$envfile" <<ENV
PTB_DEBUG_KVER=$kver
PTB_DEBUG_KDIR=$tree
PTB_DEBUG_KERNEL=$tree/arch/x86/boot/bzImage
PTB_DEBUG_MODROOT=$modroot
PTB_DEBUG_BUILD_SECONDS=$secs
ENV
echo "$stamp" > "$cache/stamp"
say "built $kver in $((secs / 60))m$((secs % 60))s with -j$jobs ($cache)"
