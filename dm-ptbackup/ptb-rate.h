/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * dm-ptbackup rate limit of a background copy (backup sweeps, mirror
 * resyncs): a virtual clock.  Each copy moves next on by its length at
 * the job's speed, and the copier may run up to PTB_RATE_BURST_NS ahead
 * of real time.  Speed 0 means no limit.
 *
 * Contexts: the one worker that drives the copy; the speed may change
 * under it (READ_ONCE by the caller).
 */
#ifndef DM_PTBACKUP_RATE_H
#define DM_PTBACKUP_RATE_H

#include <linux/jiffies.h>
#include <linux/ktime.h>
#include <linux/math64.h>

#define PTB_RATE_BURST_NS	(50 * NSEC_PER_MSEC)

/* 0 if the copier may issue now, else the delay in jiffies until it may. */
static inline unsigned long ptb_rate_delay(ktime_t next, u64 speed, ktime_t now)
{
	s64 ahead = ktime_to_ns(ktime_sub(next, now));

	if (!speed || ahead <= PTB_RATE_BURST_NS)
		return 0;
	return max_t(unsigned long, 1, nsecs_to_jiffies(ahead - PTB_RATE_BURST_NS));
}

/* Charge bytes just issued to the clock. */
static inline void ptb_rate_charge(ktime_t *next, u64 speed, ktime_t now, u64 bytes)
{
	if (!speed)
		return;
	if (ktime_before(*next, now))
		*next = now;
	*next = ktime_add_ns(*next, div64_u64(bytes * NSEC_PER_SEC, speed));
}

/* The bytes one burst may copy at speed (0: no limit). */
static inline u64 ptb_rate_burst_bytes(u64 speed)
{
	return speed ? div64_u64(speed, NSEC_PER_SEC / PTB_RATE_BURST_NS) : U64_MAX;
}

#endif /* DM_PTBACKUP_RATE_H */
