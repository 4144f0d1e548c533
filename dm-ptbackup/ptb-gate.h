/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * dm-ptbackup write gate (ptb-gate.c): write accounting and the write hold.
 * The bottom of the write path: it calls nothing above it but the device's
 * write_ops, which the target registers.
 *
 * Contexts: ptb_account_write() and ptb_write_done() any context (map,
 * end_io); the hold functions process context, may sleep.  A hold nests
 * in the task that owns it; while it is held, the owner's allocations are
 * GFP_NOIO (memalloc_noio_save()).
 */
#ifndef DM_PTBACKUP_GATE_H
#define DM_PTBACKUP_GATE_H

#include "ptb.h"

void ptb_gate_init(struct ptb_device *pd);
/* Count a write; false: parked until the hold is lifted. */
bool ptb_account_write(struct ptb_device *pd, struct ptb_bio *pb,
		       struct bio *bio);
void ptb_write_done(struct ptb_device *pd, struct ptb_bio *pb);
/* ptb_hold_writes() takes pd->hold_lock, ptb_release_writes() drops it. */
void ptb_hold_writes(struct ptb_device *pd);
bool ptb_try_hold_writes(struct ptb_device *pd);	/* never nested */
void ptb_release_writes(struct ptb_device *pd);

#endif /* DM_PTBACKUP_GATE_H */
