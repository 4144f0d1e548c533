# SPDX-License-Identifier: GPL-2.0-only
#
# dm-ptbackup top-level Makefile.
#
#   make                 build the module (and the userspace tool) for KVER
#   make check           install what is missing, build, boot a VM, run the suite
#   make demo            live backup demo in the VM
#   make check-debug     the suite on a debug kernel (KASAN, lockdep, kmemleak)
#   make check-debug-selftest  prove that lane catches a leak and a lock inversion
#   make bench           ratios against dm-linear, dm-era, dm-snapshot, dd:
#                        a table, bench/results.json and bench/results.png
#   make lint            W=1 and sparse build, checkpatch
#   make KVER=<release>  pick the kernel (default: newest installed Debian headers)
#
# The machine's own kernel may have no headers at all, so KDIR never comes
# from `uname -r'.

KVER ?= $(shell ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | \
	  sed 's|.*/linux-headers-||' | sort -V | tail -n 1)
KDIR ?= /usr/src/linux-headers-$(KVER)
MODDIR ?= /lib/modules/$(KVER)/updates/dm-ptbackup

.PHONY: all module tools install-module deps check check-vm check-debug check-debug-selftest bench bench-vm demo demo-vm lint clean

all: module tools

module:
	@test -d "$(KDIR)" || { echo "No kernel headers in '$(KDIR)': run 'make deps' or set KDIR=" >&2; exit 1; }
	$(MAKE) -C $(KDIR) M=$(CURDIR) modules

tools:
	@if [ -f userspace/Makefile ]; then $(MAKE) -C userspace; fi

# The VM mounts this machine's root, so installing here makes autoloading
# (`dmsetup create ... ptbackup') work inside the guest.
install-module: module
	install -D -m 0644 dm-ptbackup.ko $(MODDIR)/dm-ptbackup.ko
	depmod -a $(KVER)

deps:
	bash scripts/install-deps.sh $(if $(filter 6.12%,$(KVER)),--kver 6.12)

# After `deps' a sub-make works out KVER afresh: on a new machine the headers
# did not exist when this make started.
check: deps
	$(MAKE) check-vm

check-vm: install-module tools
	bash tests/vm/check.sh --kver $(KVER)

# The debug lane: a KASAN/lockdep/kmemleak/UBSAN kernel built from
# linux-source-6.1, cached outside the repo (tests/vm/build-debug-kernel.sh),
# the module built against its tree, the whole suite in the VM, then a
# kmemleak scan and a kernel-log check (tests/vm/check-debug.sh).
#   make check-debug PTB_TEST_FAULT=leak|lock-order   must fail (test-only)
#   make check-debug-selftest    passes only if both faults are caught
check-debug: deps
	bash tests/vm/check-debug.sh $(if $(PTB_TEST_FAULT),--fault $(PTB_TEST_FAULT))

check-debug-selftest: deps
	bash tests/vm/check-debug.sh --selftest

# Ratios against dm-linear, dm-era, dm-snapshot and dd, measured in one VM
# run (tests/bench/bench.sh; Documentation/performance.rst says what each
# figure is).  By default the guest runs on one CPU with -icount: its clock
# counts guest instructions, so the figures are exact path lengths and one
# round is enough.  BENCH_ICOUNT=0: wall-clock TCG on two CPUs with two fio
# jobs, the median of BENCH_ROUNDS (5) interleaved rounds and its spread,
# written to bench/results-wallclock.{json,png}.
bench: deps
	$(MAKE) bench-vm

bench-vm: install-module
	rm -rf bench/out && mkdir -p bench/out
	bash tests/vm/run-vm.sh --kver $(KVER) --timeout 5400 --mem 3584 --outdir bench/out \
		$(if $(filter 0,$(BENCH_ICOUNT)),--env BENCH_ICOUNT=0 --env BENCH_JOBS=2 --env BENCH_ROUNDS=$(or $(BENCH_ROUNDS),5),--smp 1 --icount 1 --env BENCH_ROUNDS=$(or $(BENCH_ROUNDS),1)) \
		$(foreach v,BENCH_SECS BENCH_MB BENCH_PARTS BENCH_CONFIGS,$(if $($(v)),--env "$(v)=$($(v))")) \
		-- tests/bench/bench.sh
	cp bench/out/results.json bench/results$(if $(filter 0,$(BENCH_ICOUNT)),-wallclock).json
	bash scripts/bench-chart.sh bench/results$(if $(filter 0,$(BENCH_ICOUNT)),-wallclock).json \
		bench/results$(if $(filter 0,$(BENCH_ICOUNT)),-wallclock).png

demo: deps
	$(MAKE) demo-vm

demo-vm: install-module tools
	bash tests/vm/run-vm.sh --kver $(KVER) -- tests/demo.sh

lint:
	$(MAKE) -C $(KDIR) M=$(CURDIR) W=1 C=2 modules
	@if [ -x "$(CHECKPATCH)" ]; then \
		$(CHECKPATCH) --no-tree --strict --quiet -f dm-ptbackup/*.[ch]; \
	else echo "checkpatch.pl not found: set CHECKPATCH=<path> (package linux-source)"; fi

clean:
	-$(MAKE) -C $(KDIR) M=$(CURDIR) clean
	rm -f dm-ptbackup/compat-gen.h
	@if [ -f userspace/Makefile ]; then $(MAKE) -C userspace clean; fi
