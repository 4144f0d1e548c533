/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * dm-ptbackup write gate (ptb-gate.c): write accounting and the write hold.
 * The bottom of the write path: it calls nothing above it but the two
 * callbacks its owner (the device) registers.
 *
 * Contexts: ptb_account_write() and ptb_write_done() any context (map,
 * end_io); the hold functions process context, may sleep.  A hold nests
 * in the task that owns it; while it is held, the owner's allocations are
 * GFP_NOIO (memalloc_noio_save()).
 */
#ifndef DM_PTBACKUP_GATE_H
#define DM_PTBACKUP_GATE_H

#include <linux/wait.h>

#include "ptb.h"

struct ptb_gate {
	/* Writes parked by a hold that was just lifted (process context). */
	void (*released)(struct ptb_gate *g, struct bio_list *bios);
	/* A hold was lifted (process context). */
	void (*hold_released)(struct ptb_gate *g);

	struct mutex hold_lock;		/* one hold at a time */
	struct task_struct *hold_owner;	/* under hold_lock */
	unsigned int hold_depth;
	unsigned int hold_noio;		/* memalloc_noio_save() of the holder */
	/*
	 * Writes in flight, counted up on the CPU that maps a write and down
	 * on the CPU that completes it: only the sum over CPUs means anything.
	 */
	unsigned long __percpu *writes;
	wait_queue_head_t drain_wait;	/* a hold waits for the sum to be 0 */
	int hold_writes;		/* smp_load_acquire/smp_store_release */
	/* Guards held_bios and the raising and lifting of hold_writes. */
	spinlock_t lock;
	struct bio_list held_bios;	/* arrived while hold_writes was set */
};

int ptb_gate_init(struct ptb_gate *g,
		  void (*released)(struct ptb_gate *g, struct bio_list *bios),
		  void (*hold_released)(struct ptb_gate *g));
void ptb_gate_exit(struct ptb_gate *g);
/* Count a write; false: parked until the hold is lifted. */
bool ptb_account_write(struct ptb_gate *g, struct ptb_bio *pb,
		       struct bio *bio);
void ptb_write_done(struct ptb_gate *g, struct ptb_bio *pb);
/* ptb_hold_writes() takes g->hold_lock, ptb_release_writes() drops it. */
void ptb_hold_writes(struct ptb_gate *g);
bool ptb_try_hold_writes(struct ptb_gate *g);	/* never nested */
void ptb_release_writes(struct ptb_gate *g);

#endif /* DM_PTBACKUP_GATE_H */
