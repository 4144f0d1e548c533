/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * dm-ptbackup view target (ptb-view.c): `ptbackup-view', a read-only
 * device showing a running job's image at its point in time.  Registered
 * by the module's init with the ptbackup target (ptb-target.c).
 */
#ifndef DM_PTBACKUP_VIEW_H
#define DM_PTBACKUP_VIEW_H

#include <linux/device-mapper.h>

extern struct target_type ptbackup_view_target;

#endif /* DM_PTBACKUP_VIEW_H */
