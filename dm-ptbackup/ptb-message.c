// SPDX-License-Identifier: GPL-2.0-only
/*
 * dm-ptbackup message parsing and dispatch.
 *
 * Every message is checked in full before anything changes; a refused
 * message logs one DMERR line saying what is wrong and returns an error.
 * Messages work on a suspended device.
 */

#include <linux/ctype.h>
#include <linux/kernel.h>
#include <linux/string.h>

#include "ptb.h"
#include "ptb-bitmap.h"

#define DM_MSG_PREFIX "ptbackup"

struct ptb_message_handler {
	const char *verb;
	const char *object;
	unsigned int min_args;		/* after verb and object */
	unsigned int max_args;
	int (*fn)(struct ptb_target *pt, unsigned int argc, char **argv,
		  char *result, unsigned int maxlen);
};

struct ptb_choice {
	const char *name;
	int value;
};

static const struct ptb_choice ptb_sync_choices[] = {
	{ "full", PTB_SYNC_FULL },
	{ "none", PTB_SYNC_NONE },
	{ "incremental", PTB_SYNC_INCREMENTAL },
	{ }
};

static const struct ptb_choice ptb_bitmap_mode_choices[] = {
	{ "on-success", PTB_BITMAP_ON_SUCCESS },
	{ "always", PTB_BITMAP_ALWAYS },
	{ "never", PTB_BITMAP_NEVER },
	{ }
};

static const struct ptb_choice ptb_error_choices[] = {
	{ "report", PTB_ERR_REPORT },
	{ "ignore", PTB_ERR_IGNORE },
	{ "stop", PTB_ERR_STOP },
	{ }
};

static const struct ptb_choice ptb_cbw_choices[] = {
	{ "break-snapshot", PTB_CBW_BREAK_SNAPSHOT },
	{ "break-guest-write", PTB_CBW_BREAK_GUEST_WRITE },
	{ }
};

/*
 * Parse a byte count: decimal digits with an optional K, M or G suffix
 * (powers of 1024).  Rejects empty strings, signs, trailing garbage and
 * overflow.
 */
int ptb_parse_size(const char *s, u64 *out)
{
	unsigned int shift = 0;
	char digits[24];
	size_t len = strlen(s);
	u64 v;

	if (!len || !isdigit(s[0]))
		return -EINVAL;
	switch (s[len - 1]) {
	case 'k': case 'K':
		shift = 10;
		break;
	case 'm': case 'M':
		shift = 20;
		break;
	case 'g': case 'G':
		shift = 30;
		break;
	}
	if (shift)
		len--;
	if (len >= sizeof(digits))
		return -ERANGE;
	memcpy(digits, s, len);
	digits[len] = '\0';
	if (kstrtou64(digits, 10, &v))
		return -EINVAL;
	if (shift && v > (U64_MAX >> shift))
		return -ERANGE;
	*out = v << shift;
	return 0;
}

static int ptb_parse_choice(const struct ptb_choice *choices, const char *s,
			    int *out)
{
	for (; choices->name; choices++) {
		if (!strcmp(choices->name, s)) {
			*out = choices->value;
			return 0;
		}
	}
	return -EINVAL;
}

static bool ptb_valid_name(const char *id)
{
	size_t len = strlen(id);
	size_t i;

	if (!len || len > PTB_JOB_ID_MAX || id[0] == '-')
		return false;
	for (i = 0; i < len; i++)
		if (!isalnum(id[i]) && !strchr("._-:", id[i]))
			return false;
	return true;
}

/*----------------------------------------------------------------*/

/* backup start <id> <target> [key=value ...] */

enum ptb_option {
	PTB_OPT_SYNC,
	PTB_OPT_SPEED,
	PTB_OPT_SOURCE_ERROR,
	PTB_OPT_TARGET_ERROR,
	PTB_OPT_CBW_ERROR,
	PTB_OPT_BITMAP,
	PTB_OPT_BITMAP_MODE,
	PTB_NR_OPTS,
};

static const char * const ptb_option_names[PTB_NR_OPTS] = {
	[PTB_OPT_SYNC] = "sync",
	[PTB_OPT_SPEED] = "speed",
	[PTB_OPT_SOURCE_ERROR] = "on_source_error",
	[PTB_OPT_TARGET_ERROR] = "on_target_error",
	[PTB_OPT_CBW_ERROR] = "on_cbw_error",
	[PTB_OPT_BITMAP] = "bitmap",
	[PTB_OPT_BITMAP_MODE] = "bitmap_mode",
};

static int ptb_parse_option(const char *dev, struct ptb_job_params *p,
			    char *arg, unsigned long *seen)
{
	char *value = strchr(arg, '=');
	int opt, v, r;

	if (!value) {
		DMERR("%s: backup start %s: option `%s' is not of the form key=value",
		      dev, p->id, arg);
		return -EINVAL;
	}
	*value++ = '\0';
	for (opt = 0; opt < PTB_NR_OPTS; opt++)
		if (!strcmp(arg, ptb_option_names[opt]))
			break;
	if (opt == PTB_NR_OPTS) {
		DMERR("%s: backup start %s: unknown option `%s'", dev, p->id, arg);
		return -EINVAL;
	}
	if (__test_and_set_bit(opt, seen)) {
		DMERR("%s: backup start %s: option `%s' given twice", dev, p->id, arg);
		return -EINVAL;
	}

	switch (opt) {
	case PTB_OPT_SYNC:
		r = ptb_parse_choice(ptb_sync_choices, value, &v);
		p->sync = v;
		break;
	case PTB_OPT_SPEED:
		r = ptb_parse_size(value, &p->speed);
		break;
	case PTB_OPT_SOURCE_ERROR:
		r = ptb_parse_choice(ptb_error_choices, value, &v);
		p->on_source_error = v;
		break;
	case PTB_OPT_TARGET_ERROR:
		r = ptb_parse_choice(ptb_error_choices, value, &v);
		p->on_target_error = v;
		break;
	case PTB_OPT_CBW_ERROR:
		r = ptb_parse_choice(ptb_cbw_choices, value, &v);
		p->on_cbw_error = v;
		break;
	case PTB_OPT_BITMAP:
		r = *value ? 0 : -EINVAL;
		p->bitmap = value;
		break;
	default:
		r = ptb_parse_choice(ptb_bitmap_mode_choices, value, &v);
		p->bitmap_mode = v;
		break;
	}
	if (r)
		DMERR("%s: backup start %s: invalid value `%s' for %s", dev, p->id,
		      value, arg);
	return r;
}

static int ptb_msg_backup_start(struct ptb_target *pt, unsigned int argc,
				char **argv, char *result, unsigned int maxlen)
{
	const char *dev = ptb_device_name(pt->pd);
	struct ptb_job_params p = {
		.sync = PTB_SYNC_FULL,
		.on_source_error = PTB_ERR_REPORT,
		.on_target_error = PTB_ERR_REPORT,
		.on_cbw_error = PTB_CBW_BREAK_SNAPSHOT,
	};
	unsigned long seen = 0;
	unsigned int i;
	int r;

	if (!ptb_valid_name(argv[0])) {
		DMERR("%s: backup start: invalid job id `%s': use 1 to %u of [A-Za-z0-9._:-]",
		      dev, argv[0], PTB_JOB_ID_MAX);
		return -EINVAL;
	}
	strscpy(p.id, argv[0], sizeof(p.id));
	p.target_path = argv[1];
	for (i = 2; i < argc; i++) {
		r = ptb_parse_option(dev, &p, argv[i], &seen);
		if (r)
			return r;
	}
	if (test_bit(PTB_OPT_BITMAP_MODE, &seen) && !p.bitmap) {
		DMERR("%s: backup start %s: bitmap_mode needs bitmap=<name>", dev, p.id);
		return -EINVAL;
	}
	return ptb_job_start(pt, &p);
}

/*----------------------------------------------------------------*/

/* job <verb> <id> ... */

static struct ptb_job *ptb_msg_find_job(struct ptb_target *pt, const char *verb,
					const char *id)
{
	struct ptb_job *job = ptb_job_find(pt->pd, id);

	if (!job)
		DMERR("%s: job %s: no job `%s'", ptb_device_name(pt->pd), verb, id);
	return job;
}

static int ptb_msg_job_result(struct ptb_target *pt, const char *verb,
			      struct ptb_job *job, int r)
{
	if (r)
		DMERR("%s: job %s %s: job is %s", ptb_device_name(pt->pd), verb,
		      job->id, ptb_job_state_name(READ_ONCE(job->state)));
	return r;
}

static int ptb_msg_job_cancel(struct ptb_target *pt, unsigned int argc,
			      char **argv, char *result, unsigned int maxlen)
{
	struct ptb_job *job = ptb_msg_find_job(pt, "cancel", argv[0]);

	return job ? ptb_msg_job_result(pt, "cancel", job, ptb_job_cancel(job)) : -ENOENT;
}

static int ptb_msg_job_pause(struct ptb_target *pt, unsigned int argc,
			     char **argv, char *result, unsigned int maxlen)
{
	struct ptb_job *job = ptb_msg_find_job(pt, "pause", argv[0]);

	return job ? ptb_msg_job_result(pt, "pause", job, ptb_job_pause(job)) : -ENOENT;
}

static int ptb_msg_job_resume(struct ptb_target *pt, unsigned int argc,
			      char **argv, char *result, unsigned int maxlen)
{
	struct ptb_job *job = ptb_msg_find_job(pt, "resume", argv[0]);

	return job ? ptb_msg_job_result(pt, "resume", job, ptb_job_resume(job)) : -ENOENT;
}

static int ptb_msg_job_dismiss(struct ptb_target *pt, unsigned int argc,
			       char **argv, char *result, unsigned int maxlen)
{
	struct ptb_job *job = ptb_msg_find_job(pt, "dismiss", argv[0]);

	return job ? ptb_msg_job_result(pt, "dismiss", job, ptb_job_dismiss(job)) : -ENOENT;
}

static int ptb_msg_job_set_speed(struct ptb_target *pt, unsigned int argc,
				 char **argv, char *result, unsigned int maxlen)
{
	struct ptb_job *job;
	u64 speed;

	if (ptb_parse_size(argv[1], &speed)) {
		DMERR("%s: job set_speed %s: invalid speed `%s' (bytes/s, K/M/G suffix)",
		      ptb_device_name(pt->pd), argv[0], argv[1]);
		return -EINVAL;
	}
	job = ptb_msg_find_job(pt, "set_speed", argv[0]);
	if (!job)
		return -ENOENT;
	ptb_job_set_speed(job, speed);
	return 0;
}

static int ptb_msg_job_list(struct ptb_target *pt, unsigned int argc,
			    char **argv, char *result, unsigned int maxlen)
{
	struct ptb_job *job;
	unsigned int sz = 0;

	list_for_each_entry(job, &pt->pd->jobs, node)
		sz = ptb_job_emit(job, result, maxlen, sz, true);
	if (!sz)
		result[0] = '\0';
	return 1;
}

/*----------------------------------------------------------------*/

/* bitmap <verb> <name> ... */

static struct ptb_bitmap *ptb_msg_find_bitmap(struct ptb_target *pt,
					      const char *verb, const char *name)
{
	struct ptb_bitmap *b = ptb_bitmap_find(pt->pd, name);

	if (!b)
		DMERR("%s: bitmap %s: no bitmap `%s'", ptb_device_name(pt->pd),
		      verb, name);
	return b;
}

static int ptb_msg_bitmap_add(struct ptb_target *pt, unsigned int argc,
			      char **argv, char *result, unsigned int maxlen)
{
	const char *dev = ptb_device_name(pt->pd);
	bool transient = false, disabled = false, gran_set = false;
	u64 granularity = 0;
	unsigned int i;

	if (!ptb_valid_name(argv[0])) {
		DMERR("%s: bitmap add: invalid bitmap name `%s': use 1 to %u of [A-Za-z0-9._:-]",
		      dev, argv[0], PTB_BITMAP_NAME_MAX);
		return -EINVAL;
	}
	for (i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "transient") && !transient) {
			transient = true;
		} else if (!strcmp(argv[i], "disabled") && !disabled) {
			disabled = true;
		} else if (!strncmp(argv[i], "granularity=", 12) && !gran_set) {
			gran_set = true;
			if (ptb_parse_size(argv[i] + 12, &granularity) || !granularity) {
				DMERR("%s: bitmap add %s: invalid granularity `%s'",
				      dev, argv[0], argv[i] + 12);
				return -EINVAL;
			}
		} else {
			DMERR("%s: bitmap add %s: unknown or repeated option `%s'",
			      dev, argv[0], argv[i]);
			return -EINVAL;
		}
	}
	return ptb_bitmap_add(pt, argv[0], granularity, transient, disabled);
}

static int ptb_msg_bitmap_remove(struct ptb_target *pt, unsigned int argc,
				 char **argv, char *result, unsigned int maxlen)
{
	struct ptb_bitmap *b = ptb_msg_find_bitmap(pt, "remove", argv[0]);

	return b ? ptb_bitmap_remove(pt->pd, b) : -ENOENT;
}

static int ptb_msg_bitmap_clear(struct ptb_target *pt, unsigned int argc,
				char **argv, char *result, unsigned int maxlen)
{
	struct ptb_bitmap *b = ptb_msg_find_bitmap(pt, "clear", argv[0]);

	return b ? ptb_bitmap_clear(pt->pd, b) : -ENOENT;
}

static int ptb_msg_bitmap_enable(struct ptb_target *pt, unsigned int argc,
				 char **argv, char *result, unsigned int maxlen)
{
	struct ptb_bitmap *b = ptb_msg_find_bitmap(pt, "enable", argv[0]);

	return b ? ptb_bitmap_enable(pt->pd, b, true) : -ENOENT;
}

static int ptb_msg_bitmap_disable(struct ptb_target *pt, unsigned int argc,
				  char **argv, char *result, unsigned int maxlen)
{
	struct ptb_bitmap *b = ptb_msg_find_bitmap(pt, "disable", argv[0]);

	return b ? ptb_bitmap_enable(pt->pd, b, false) : -ENOENT;
}

static int ptb_msg_bitmap_merge(struct ptb_target *pt, unsigned int argc,
				char **argv, char *result, unsigned int maxlen)
{
	struct ptb_bitmap *src = ptb_msg_find_bitmap(pt, "merge", argv[0]);
	struct ptb_bitmap *dst = ptb_msg_find_bitmap(pt, "merge", argv[1]);

	if (!src || !dst)
		return -ENOENT;
	if (src == dst) {
		DMERR("%s: bitmap merge: source and destination are both %s",
		      ptb_device_name(pt->pd), src->name);
		return -EINVAL;
	}
	return ptb_bitmap_merge(pt->pd, src, dst);
}

static int ptb_msg_bitmap_list(struct ptb_target *pt, unsigned int argc,
			       char **argv, char *result, unsigned int maxlen)
{
	return ptb_bitmap_list(pt->pd, result, maxlen);
}

static int ptb_msg_bitmap_dump(struct ptb_target *pt, unsigned int argc,
			       char **argv, char *result, unsigned int maxlen)
{
	struct ptb_bitmap *b = ptb_msg_find_bitmap(pt, "dump", argv[0]);
	u64 start = 0;

	if (!b)
		return -ENOENT;
	if (argc > 1 && kstrtou64(argv[1], 10, &start)) {
		DMERR("%s: bitmap dump %s: invalid start byte `%s'",
		      ptb_device_name(pt->pd), b->name, argv[1]);
		return -EINVAL;
	}
	return ptb_bitmap_dump(pt->pd, b, start, result, maxlen);
}

/*----------------------------------------------------------------*/

static const struct ptb_message_handler ptb_handlers[] = {
	{ "backup", "start", 2, 2 + PTB_NR_OPTS, ptb_msg_backup_start },
	{ "job", "cancel", 1, 1, ptb_msg_job_cancel },
	{ "job", "pause", 1, 1, ptb_msg_job_pause },
	{ "job", "resume", 1, 1, ptb_msg_job_resume },
	{ "job", "dismiss", 1, 1, ptb_msg_job_dismiss },
	{ "job", "set_speed", 2, 2, ptb_msg_job_set_speed },
	{ "job", "list", 0, 0, ptb_msg_job_list },
	{ "bitmap", "add", 1, 4, ptb_msg_bitmap_add },
	{ "bitmap", "remove", 1, 1, ptb_msg_bitmap_remove },
	{ "bitmap", "clear", 1, 1, ptb_msg_bitmap_clear },
	{ "bitmap", "enable", 1, 1, ptb_msg_bitmap_enable },
	{ "bitmap", "disable", 1, 1, ptb_msg_bitmap_disable },
	{ "bitmap", "merge", 2, 2, ptb_msg_bitmap_merge },
	{ "bitmap", "list", 0, 0, ptb_msg_bitmap_list },
	{ "bitmap", "dump", 1, 2, ptb_msg_bitmap_dump },
};

int ptb_message(struct ptb_target *pt, unsigned int argc, char **argv,
		char *result, unsigned int maxlen)
{
	const char *dev = ptb_device_name(pt->pd);
	const struct ptb_message_handler *h;
	unsigned int i;
	int r;

	if (argc < 2) {
		DMERR("%s: message needs a verb and an object, e.g. `backup start' or `job list'",
		      dev);
		return -EINVAL;
	}
	for (i = 0; i < ARRAY_SIZE(ptb_handlers); i++) {
		h = &ptb_handlers[i];
		if (strcasecmp(argv[0], h->verb) || strcasecmp(argv[1], h->object))
			continue;
		if (argc - 2 < h->min_args || argc - 2 > h->max_args) {
			DMERR("%s: `%s %s' takes %u to %u arguments, got %u", dev,
			      h->verb, h->object, h->min_args, h->max_args, argc - 2);
			return -EINVAL;
		}
		mutex_lock(&pt->pd->lock);
		r = h->fn(pt, argc - 2, argv + 2, result, maxlen);
		mutex_unlock(&pt->pd->lock);
		return r;
	}
	DMERR("%s: unsupported message `%s %s'", dev, argv[0], argv[1]);
	return -EINVAL;
}
