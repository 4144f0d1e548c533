/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * dm-ptbackup messages (ptb-message.c): parsing, dispatch, transactions.
 * Process context; takes pd->lock.
 */
#ifndef DM_PTBACKUP_MESSAGE_H
#define DM_PTBACKUP_MESSAGE_H

#include "ptb-device.h"

int ptb_message(struct ptb_target *pt, unsigned int argc, char **argv,
		char *result, unsigned int maxlen);
int ptb_parse_size(const char *s, u64 *out);

#endif /* DM_PTBACKUP_MESSAGE_H */
