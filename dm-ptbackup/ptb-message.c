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

#include "ptb-device.h"
#include "ptb-bitmap.h"
#include "ptb-cow.h"
#include "ptb-gate.h"
#include "ptb-job.h"
#include "ptb-message.h"
#include "ptb-mirror.h"

#define DM_MSG_PREFIX "ptbackup"

/* What a transaction needs to know about a message. */
enum ptb_msg_kind {
	PTB_MSG_OTHER,			/* not allowed in a transaction */
	PTB_MSG_BACKUP_START,
	PTB_MSG_BITMAP_ADD,
	PTB_MSG_BITMAP_REMOVE,
	PTB_MSG_BITMAP_CLEAR,
	PTB_MSG_BITMAP_ENABLE,
	PTB_MSG_BITMAP_DISABLE,
	PTB_MSG_BITMAP_MERGE,
};

struct ptb_message_handler {
	const char *verb;
	const char *object;
	enum ptb_msg_kind kind;
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
	PTB_OPT_CBW_TIMEOUT,
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
	[PTB_OPT_CBW_TIMEOUT] = "cbw_timeout",
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
	case PTB_OPT_CBW_TIMEOUT:
		r = kstrtouint(value, 10, &p->cbw_timeout);
		if (!r && p->cbw_timeout > PTB_CBW_TIMEOUT_MAX)
			r = -ERANGE;
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

/* Parse `backup start' arguments (argv is modified). */
static int ptb_parse_backup_start(const char *dev, unsigned int argc,
				  char **argv, struct ptb_job_params *p)
{
	unsigned long seen = 0;
	unsigned int i;
	int r;

	memset(p, 0, sizeof(*p));
	p->type = &ptb_backup_job;
	p->sync = PTB_SYNC_FULL;
	p->on_source_error = PTB_ERR_REPORT;
	p->on_target_error = PTB_ERR_REPORT;
	p->on_cbw_error = PTB_CBW_BREAK_SNAPSHOT;
	if (!ptb_valid_name(argv[0])) {
		DMERR("%s: backup start: invalid job id `%s': use 1 to %u of [A-Za-z0-9._:-]",
		      dev, argv[0], PTB_JOB_ID_MAX);
		return -EINVAL;
	}
	strscpy(p->id, argv[0], sizeof(p->id));
	p->target_path = argv[1];
	for (i = 2; i < argc; i++) {
		r = ptb_parse_option(dev, p, argv[i], &seen);
		if (r)
			return r;
	}
	if (test_bit(PTB_OPT_BITMAP_MODE, &seen) && !p->bitmap) {
		DMERR("%s: backup start %s: bitmap_mode needs bitmap=<name>", dev, p->id);
		return -EINVAL;
	}
	return 0;
}

static int ptb_msg_backup_start(struct ptb_target *pt, unsigned int argc,
				char **argv, char *result, unsigned int maxlen)
{
	struct ptb_job_params p;
	int r = ptb_parse_backup_start(ptb_device_name(pt->pd), argc, argv, &p);

	return r ? r : ptb_job_start(pt, &p);
}

/*----------------------------------------------------------------*/

/* mirror start <id> <target> [sync=full|none] [speed=R] [on_target_error=P] */

static const struct ptb_choice ptb_mirror_sync_choices[] = {
	{ "full", PTB_SYNC_FULL },
	{ "none", PTB_SYNC_NONE },
	{ }
};

static int ptb_parse_mirror_option(const char *dev, struct ptb_mirror_params *p,
				   char *arg, unsigned long *seen)
{
	static const char * const names[] = { "sync", "speed", "on_target_error" };
	char *value = strchr(arg, '=');
	int opt, v = 0, r;

	if (value)
		*value++ = '\0';
	for (opt = 0; opt < ARRAY_SIZE(names); opt++)
		if (!strcmp(arg, names[opt]))
			break;
	if (!value || opt == ARRAY_SIZE(names)) {
		DMERR("%s: mirror start %s: unknown option `%s' (known: sync=full|none, speed=<bytes/s>, on_target_error=report|ignore|stop)",
		      dev, p->id, arg);
		return -EINVAL;
	}
	if (__test_and_set_bit(opt, seen)) {
		DMERR("%s: mirror start %s: option `%s' given twice", dev, p->id, arg);
		return -EINVAL;
	}
	if (opt == 0)
		r = ptb_parse_choice(ptb_mirror_sync_choices, value, &v);
	else if (opt == 1)
		r = ptb_parse_size(value, &p->speed);
	else
		r = ptb_parse_choice(ptb_error_choices, value, &v);
	if (r) {
		DMERR("%s: mirror start %s: invalid value `%s' for %s", dev, p->id,
		      value, arg);
		return r;
	}
	if (opt == 0)
		p->sync = v;
	else if (opt == 2)
		p->on_target_error = v;
	return 0;
}

static int ptb_msg_mirror_start(struct ptb_target *pt, unsigned int argc,
				char **argv, char *result, unsigned int maxlen)
{
	const char *dev = ptb_device_name(pt->pd);
	struct ptb_mirror_params p = {
		.target_path = argv[1],
		.sync = PTB_SYNC_FULL,
		.on_target_error = PTB_ERR_REPORT,
	};
	unsigned long seen = 0;
	unsigned int i;
	int r;

	if (!ptb_valid_name(argv[0])) {
		DMERR("%s: mirror start: invalid job id `%s': use 1 to %u of [A-Za-z0-9._:-]",
		      dev, argv[0], PTB_JOB_ID_MAX);
		return -EINVAL;
	}
	strscpy(p.id, argv[0], sizeof(p.id));
	for (i = 2; i < argc; i++) {
		r = ptb_parse_mirror_option(dev, &p, argv[i], &seen);
		if (r)
			return r;
	}
	return ptb_mirror_start(pt, &p);
}

/*----------------------------------------------------------------*/

/* job <verb> <id> ... */

/* The backup job (*jobp) or mirror job (*mp) of that id; -ENOENT: none. */
static int ptb_msg_find_job(struct ptb_target *pt, const char *verb, const char *id,
			    struct ptb_job **jobp, struct ptb_mirror **mp)
{
	*jobp = ptb_job_find(pt->pd, id);
	*mp = *jobp ? NULL : ptb_mirror_find(pt->pd, id);
	if (*jobp || *mp)
		return 0;
	DMERR("%s: job %s: no job `%s'", ptb_device_name(pt->pd), verb, id);
	return -ENOENT;
}

static int ptb_msg_job_result(struct ptb_target *pt, const char *verb,
			      struct ptb_job *job, int r)
{
	if (r)
		DMERR("%s: job %s %s: job is %s", ptb_device_name(pt->pd), verb,
		      job->id, ptb_job_state_log_name(READ_ONCE(job->state)));
	return r;
}

static int ptb_msg_job_cancel(struct ptb_target *pt, unsigned int argc,
			      char **argv, char *result, unsigned int maxlen)
{
	struct ptb_mirror *m;
	struct ptb_job *job;
	int r = ptb_msg_find_job(pt, "cancel", argv[0], &job, &m);

	if (r)
		return r;
	if (m)
		return ptb_mirror_cancel(m);
	return ptb_msg_job_result(pt, "cancel", job, ptb_job_cancel(job));
}

static int ptb_msg_job_complete(struct ptb_target *pt, unsigned int argc,
				char **argv, char *result, unsigned int maxlen)
{
	struct ptb_mirror *m;
	struct ptb_job *job;
	int r = ptb_msg_find_job(pt, "complete", argv[0], &job, &m);

	if (r)
		return r;
	if (job) {
		DMERR("%s: job complete %s: a backup job completes by itself; only mirror jobs take `job complete'",
		      ptb_device_name(pt->pd), job->id);
		return -EINVAL;
	}
	return ptb_mirror_complete(m);
}

static int ptb_msg_job_pause(struct ptb_target *pt, unsigned int argc,
			     char **argv, char *result, unsigned int maxlen)
{
	struct ptb_mirror *m;
	struct ptb_job *job;
	int r = ptb_msg_find_job(pt, "pause", argv[0], &job, &m);

	if (r)
		return r;
	if (m) {
		DMERR("%s: job pause %s: a mirror job cannot be paused: set_speed slows its copy",
		      ptb_device_name(pt->pd), argv[0]);
		return -EINVAL;
	}
	return ptb_msg_job_result(pt, "pause", job, ptb_job_pause(job));
}

static int ptb_msg_job_resume(struct ptb_target *pt, unsigned int argc,
			      char **argv, char *result, unsigned int maxlen)
{
	struct ptb_mirror *m;
	struct ptb_job *job;
	int r = ptb_msg_find_job(pt, "resume", argv[0], &job, &m);

	if (r)
		return r;
	if (m)
		return ptb_mirror_resume(m);
	return ptb_msg_job_result(pt, "resume", job, ptb_job_resume(job));
}

static int ptb_msg_job_dismiss(struct ptb_target *pt, unsigned int argc,
			       char **argv, char *result, unsigned int maxlen)
{
	struct ptb_mirror *m;
	struct ptb_job *job;
	int r = ptb_msg_find_job(pt, "dismiss", argv[0], &job, &m);

	if (r)
		return r;
	if (m)
		return ptb_mirror_dismiss(m);
	if (job->nr_views) {
		DMERR("%s: job dismiss %s: %u view(s) of the job are open: remove them first",
		      ptb_device_name(pt->pd), job->id, job->nr_views);
		return -EBUSY;
	}
	return ptb_msg_job_result(pt, "dismiss", job, ptb_job_dismiss(job));
}

static int ptb_msg_job_set_speed(struct ptb_target *pt, unsigned int argc,
				 char **argv, char *result, unsigned int maxlen)
{
	struct ptb_mirror *m;
	struct ptb_job *job;
	u64 speed;
	int r;

	if (ptb_parse_size(argv[1], &speed)) {
		DMERR("%s: job set_speed %s: invalid speed `%s' (bytes/s, K/M/G suffix)",
		      ptb_device_name(pt->pd), argv[0], argv[1]);
		return -EINVAL;
	}
	r = ptb_msg_find_job(pt, "set_speed", argv[0], &job, &m);
	if (r)
		return r;
	if (m)
		ptb_mirror_set_speed(m, speed);
	else
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
	sz = ptb_mirrors_emit(pt->pd, result, maxlen, sz, true);
	if (!sz)
		result[0] = '\0';
	return 1;
}

/*----------------------------------------------------------------*/

/* bitmap <verb> <name> ... */

/* The live table, as the bitmap layer needs to know it. */
static struct ptb_table_geom ptb_msg_geom(const struct ptb_target *pt)
{
	return (struct ptb_table_geom) {
		.dev_sectors = pt->ti->len,
		.chunk_sectors = pt->chunk_sectors,
	};
}

static struct ptb_bitmap *ptb_msg_find_bitmap(struct ptb_target *pt,
					      const char *verb, const char *name)
{
	struct ptb_bitmap *b = ptb_bitmap_find(&pt->pd->trk, name);

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
	struct ptb_table_geom g;
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
	g = ptb_msg_geom(pt);
	return ptb_bitmap_add(&pt->pd->trk, &g, argv[0], granularity, transient,
			      disabled);
}

static int ptb_msg_bitmap_remove(struct ptb_target *pt, unsigned int argc,
				 char **argv, char *result, unsigned int maxlen)
{
	struct ptb_bitmap *b = ptb_msg_find_bitmap(pt, "remove", argv[0]);

	return b ? ptb_bitmap_remove(&pt->pd->trk, b) : -ENOENT;
}

static int ptb_msg_bitmap_clear(struct ptb_target *pt, unsigned int argc,
				char **argv, char *result, unsigned int maxlen)
{
	struct ptb_bitmap *b = ptb_msg_find_bitmap(pt, "clear", argv[0]);

	return b ? ptb_bitmap_clear(&pt->pd->trk, b) : -ENOENT;
}

static int ptb_msg_bitmap_enable(struct ptb_target *pt, unsigned int argc,
				 char **argv, char *result, unsigned int maxlen)
{
	struct ptb_bitmap *b = ptb_msg_find_bitmap(pt, "enable", argv[0]);

	return b ? ptb_bitmap_enable(&pt->pd->trk, b, true) : -ENOENT;
}

static int ptb_msg_bitmap_disable(struct ptb_target *pt, unsigned int argc,
				  char **argv, char *result, unsigned int maxlen)
{
	struct ptb_bitmap *b = ptb_msg_find_bitmap(pt, "disable", argv[0]);

	return b ? ptb_bitmap_enable(&pt->pd->trk, b, false) : -ENOENT;
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
	return ptb_bitmap_merge(&pt->pd->trk, src, dst);
}

static int ptb_msg_bitmap_list(struct ptb_target *pt, unsigned int argc,
			       char **argv, char *result, unsigned int maxlen)
{
	return ptb_bitmap_list(&pt->pd->trk, pt->ti->len, result, maxlen);
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
	return ptb_bitmap_dump(&pt->pd->trk, b, pt->ti->len, start, result, maxlen);
}

/*----------------------------------------------------------------*/

static const struct ptb_message_handler ptb_handlers[] = {
	{ "backup", "start", PTB_MSG_BACKUP_START, 2, 2 + PTB_NR_OPTS,
	  ptb_msg_backup_start },
	{ "mirror", "start", PTB_MSG_OTHER, 2, 5, ptb_msg_mirror_start },
	{ "job", "cancel", PTB_MSG_OTHER, 1, 1, ptb_msg_job_cancel },
	{ "job", "complete", PTB_MSG_OTHER, 1, 1, ptb_msg_job_complete },
	{ "job", "pause", PTB_MSG_OTHER, 1, 1, ptb_msg_job_pause },
	{ "job", "resume", PTB_MSG_OTHER, 1, 1, ptb_msg_job_resume },
	{ "job", "dismiss", PTB_MSG_OTHER, 1, 1, ptb_msg_job_dismiss },
	{ "job", "set_speed", PTB_MSG_OTHER, 2, 2, ptb_msg_job_set_speed },
	{ "job", "list", PTB_MSG_OTHER, 0, 0, ptb_msg_job_list },
	{ "bitmap", "add", PTB_MSG_BITMAP_ADD, 1, 4, ptb_msg_bitmap_add },
	{ "bitmap", "remove", PTB_MSG_BITMAP_REMOVE, 1, 1, ptb_msg_bitmap_remove },
	{ "bitmap", "clear", PTB_MSG_BITMAP_CLEAR, 1, 1, ptb_msg_bitmap_clear },
	{ "bitmap", "enable", PTB_MSG_BITMAP_ENABLE, 1, 1, ptb_msg_bitmap_enable },
	{ "bitmap", "disable", PTB_MSG_BITMAP_DISABLE, 1, 1, ptb_msg_bitmap_disable },
	{ "bitmap", "merge", PTB_MSG_BITMAP_MERGE, 2, 2, ptb_msg_bitmap_merge },
	{ "bitmap", "list", PTB_MSG_OTHER, 0, 0, ptb_msg_bitmap_list },
	{ "bitmap", "dump", PTB_MSG_OTHER, 1, 2, ptb_msg_bitmap_dump },
};

static const struct ptb_message_handler *
ptb_find_handler(const char *dev, unsigned int argc, char **argv)
{
	const struct ptb_message_handler *h;
	unsigned int i;

	if (argc < 2) {
		DMERR("%s: message needs a verb and an object, e.g. `backup start' or `job list'",
		      dev);
		return NULL;
	}
	for (i = 0; i < ARRAY_SIZE(ptb_handlers); i++) {
		h = &ptb_handlers[i];
		if (strcasecmp(argv[0], h->verb) || strcasecmp(argv[1], h->object))
			continue;
		if (argc - 2 < h->min_args || argc - 2 > h->max_args) {
			DMERR("%s: `%s %s' takes %u to %u arguments, got %u", dev,
			      h->verb, h->object, h->min_args, h->max_args, argc - 2);
			return NULL;
		}
		return h;
	}
	DMERR("%s: unsupported message `%s %s'", dev, argv[0], argv[1]);
	return NULL;
}

/*----------------------------------------------------------------*/

/*
 * transaction <msg> ; <msg> ; ...
 *
 * Every element is checked first against the device as the earlier
 * elements will have left it; then all are applied with writes held, so
 * they take effect at one instant.  If an element still fails while being
 * applied (out of memory, a target that became busy, a metadata error),
 * the earlier ones are undone: added bitmaps removed, enabled or disabled
 * ones switched back, cleared, merged-into or removed ones put back as they
 * were (a copy is taken before each is applied), started jobs cancelled
 * and dismissed.
 */

#define PTB_TXN_MAX	16

struct ptb_txn_elem {
	const struct ptb_message_handler *h;
	unsigned int argc;		/* after verb and object */
	char **argv;
	struct ptb_job_params p;	/* backup start */
	struct ptb_bitmap_copy saved;	/* clear, merge, remove */
	bool was_enabled;		/* enable, disable */
};

/* Names whose state the transaction changes; the latest entry wins. */
struct ptb_txn_view {
	struct ptb_device *pd;
	unsigned int nr;
	struct {
		const char *name;
		bool is_job;
		bool exists;
		bool busy;
	} ov[PTB_TXN_MAX * 2];
};

static int ptb_view_find(struct ptb_txn_view *v, const char *name, bool is_job)
{
	int i;

	for (i = v->nr - 1; i >= 0; i--)
		if (v->ov[i].is_job == is_job && !strcmp(v->ov[i].name, name))
			return i;
	return -1;
}

static bool ptb_view_bitmap(struct ptb_txn_view *v, const char *name, bool *busy)
{
	int i = ptb_view_find(v, name, false);
	struct ptb_bitmap *b;

	if (i >= 0) {
		*busy = v->ov[i].busy;
		return v->ov[i].exists;
	}
	b = ptb_bitmap_find(&v->pd->trk, name);
	*busy = b && READ_ONCE(b->busy);
	return b;
}

static void ptb_view_set(struct ptb_txn_view *v, const char *name, bool is_job,
			 bool exists, bool busy)
{
	v->ov[v->nr].name = name;
	v->ov[v->nr].is_job = is_job;
	v->ov[v->nr].exists = exists;
	v->ov[v->nr].busy = busy;
	v->nr++;
}

static int ptb_txn_need_bitmap(struct ptb_txn_view *v, unsigned int n,
			       const char *name, bool idle)
{
	const char *dev = ptb_device_name(v->pd);
	bool busy;

	if (!ptb_view_bitmap(v, name, &busy)) {
		DMERR("%s: transaction element %u: no bitmap `%s'", dev, n, name);
		return -ENOENT;
	}
	if (idle && busy) {
		DMERR("%s: transaction element %u: bitmap %s is in use by a job",
		      dev, n, name);
		return -EBUSY;
	}
	return 0;
}

static int ptb_txn_check(struct ptb_target *pt, struct ptb_txn_view *v,
			 unsigned int n, struct ptb_txn_elem *e)
{
	const char *dev = ptb_device_name(pt->pd);
	char **argv = e->argv;
	bool busy;
	int r;

	switch (e->h->kind) {
	case PTB_MSG_BITMAP_ADD:
		if (ptb_view_bitmap(v, argv[0], &busy)) {
			DMERR("%s: transaction element %u: bitmap %s already exists",
			      dev, n, argv[0]);
			return -EEXIST;
		}
		ptb_view_set(v, argv[0], false, true, false);
		return 0;
	case PTB_MSG_BITMAP_REMOVE:
		r = ptb_txn_need_bitmap(v, n, argv[0], true);
		if (!r)
			ptb_view_set(v, argv[0], false, false, false);
		return r;
	case PTB_MSG_BITMAP_CLEAR:
	case PTB_MSG_BITMAP_DISABLE:
		return ptb_txn_need_bitmap(v, n, argv[0], true);
	case PTB_MSG_BITMAP_ENABLE:
		return ptb_txn_need_bitmap(v, n, argv[0], false);
	case PTB_MSG_BITMAP_MERGE:
		r = ptb_txn_need_bitmap(v, n, argv[0], false);
		return r ? r : ptb_txn_need_bitmap(v, n, argv[1], true);
	case PTB_MSG_BACKUP_START:
		r = ptb_parse_backup_start(dev, e->argc, argv, &e->p);
		if (r)
			return r;
		if (ptb_view_find(v, e->p.id, true) >= 0 ||
		    ptb_job_find(pt->pd, e->p.id) || ptb_mirror_find(pt->pd, e->p.id)) {
			DMERR("%s: transaction element %u: job %s already exists",
			      dev, n, e->p.id);
			return -EEXIST;
		}
		r = ptb_job_check_target(pt, "backup start", e->p.id, e->p.target_path);
		if (r)
			return r;
		if (e->p.bitmap) {
			r = ptb_txn_need_bitmap(v, n, e->p.bitmap, true);
			if (r)
				return r;
			ptb_view_set(v, e->p.bitmap, false, true, true);
		}
		ptb_view_set(v, e->p.id, true, true, false);
		return 0;
	default:
		DMERR("%s: transaction element %u: `%s %s' cannot be part of a transaction",
		      dev, n, e->h->verb, e->h->object);
		return -EINVAL;
	}
}

/* The bitmap an element changes in a way only a copy can undo. */
static const char *ptb_txn_saved_bitmap(const struct ptb_txn_elem *e)
{
	switch (e->h->kind) {
	case PTB_MSG_BITMAP_CLEAR:
	case PTB_MSG_BITMAP_REMOVE:
		return e->argv[0];
	case PTB_MSG_BITMAP_MERGE:
		return e->argv[1];
	default:
		return NULL;
	}
}

static int ptb_txn_apply(struct ptb_target *pt, struct ptb_txn_elem *e)
{
	const char *name = ptb_txn_saved_bitmap(e);
	struct ptb_bitmap *b = name ? ptb_bitmap_find(&pt->pd->trk, name) : NULL;
	int r;

	if (e->h->kind == PTB_MSG_BACKUP_START)
		return ptb_job_start(pt, &e->p);
	if (e->h->kind == PTB_MSG_BITMAP_ENABLE || e->h->kind == PTB_MSG_BITMAP_DISABLE) {
		b = ptb_bitmap_find(&pt->pd->trk, e->argv[0]);
		if (b)
			e->was_enabled = READ_ONCE(b->enabled);
	}
	if (b) {
		r = ptb_bitmap_save(b, &e->saved);
		if (r)
			return r;
	}
	return e->h->fn(pt, e->argc, e->argv, NULL, 0);
}

/* Undo elements [0, n) after element n failed.  Writes are held. */
static void ptb_txn_undo(struct ptb_target *pt, struct ptb_txn_elem *elems,
			 unsigned int n)
{
	struct ptb_table_geom g = ptb_msg_geom(pt);
	struct ptb_device *pd = pt->pd;
	struct ptb_txn_elem *e;
	struct ptb_bitmap *b;
	struct ptb_job *job;

	while (n--) {
		e = &elems[n];
		b = e->h->kind == PTB_MSG_BACKUP_START ? NULL :
			ptb_bitmap_find(&pd->trk, e->argv[0]);
		switch (e->h->kind) {
		case PTB_MSG_BITMAP_ADD:
			if (b)
				ptb_bitmap_remove(&pd->trk, b);
			break;
		case PTB_MSG_BITMAP_CLEAR:
		case PTB_MSG_BITMAP_MERGE:
		case PTB_MSG_BITMAP_REMOVE:
			if (e->saved.bits && ptb_bitmap_restore(&pd->trk, &g, &e->saved))
				DMERR("%s: transaction: cannot undo element %u (%s %s)",
				      ptb_device_name(pd), n, e->h->verb, e->h->object);
			break;
		case PTB_MSG_BITMAP_ENABLE:
		case PTB_MSG_BITMAP_DISABLE:
			if (b)
				ptb_bitmap_enable(&pd->trk, b, e->was_enabled);
			break;
		case PTB_MSG_BACKUP_START:
			job = ptb_job_find(pd, e->p.id);
			if (job) {
				ptb_job_undo_start(job);
				ptb_job_dismiss(job);
			}
			break;
		default:
			DMERR("%s: transaction: element %u (%s %s) cannot be undone",
			      ptb_device_name(pd), n, e->h->verb, e->h->object);
			break;
		}
	}
}

static int ptb_transaction(struct ptb_target *pt, unsigned int argc, char **argv)
{
	const char *dev = ptb_device_name(pt->pd);
	struct ptb_txn_view *v;
	struct ptb_txn_elem *elems;
	unsigned int i, start, n = 0;
	int r = 0;

	elems = kcalloc(PTB_TXN_MAX, sizeof(*elems), GFP_KERNEL);
	v = kzalloc(sizeof(*v), GFP_KERNEL);
	if (!elems || !v) {
		r = -ENOMEM;
		goto out;
	}
	v->pd = pt->pd;

	/* Split at `;' words. */
	for (start = i = 1; i <= argc; i++) {
		if (i < argc && strcmp(argv[i], ";"))
			continue;
		if (n == PTB_TXN_MAX) {
			DMERR("%s: transaction: more than %u elements", dev, PTB_TXN_MAX);
			r = -EINVAL;
			goto out;
		}
		elems[n].h = ptb_find_handler(dev, i - start, argv + start);
		if (!elems[n].h) {
			DMERR("%s: transaction element %u is invalid", dev, n);
			r = -EINVAL;
			goto out;
		}
		elems[n].argc = i - start - 2;
		elems[n].argv = argv + start + 2;
		n++;
		start = i + 1;
	}

	for (i = 0; i < n; i++) {
		r = ptb_txn_check(pt, v, i, &elems[i]);
		if (r) {
			DMERR("%s: transaction refused at element %u: nothing changed",
			      dev, i);
			goto out;
		}
	}

	ptb_hold_writes(&pt->pd->gate);
	for (i = 0; i < n; i++) {
		r = ptb_txn_apply(pt, &elems[i]);
		if (r) {
			DMERR("%s: transaction element %u failed (%d): undoing the earlier ones",
			      dev, i, r);
			ptb_txn_undo(pt, elems, i);
			break;
		}
	}
	ptb_release_writes(&pt->pd->gate);
out:
	for (i = 0; elems && i < n; i++)
		ptb_bitmap_copy_free(&elems[i].saved);
	kfree(v);
	kfree(elems);
	return r;
}

int ptb_message(struct ptb_target *pt, unsigned int argc, char **argv,
		char *result, unsigned int maxlen)
{
	const struct ptb_message_handler *h;
	int r;

	if (argc && !strcasecmp(argv[0], "transaction")) {
		mutex_lock(&pt->pd->lock);
		r = ptb_transaction(pt, argc, argv);
		mutex_unlock(&pt->pd->lock);
		return r;
	}
	h = ptb_find_handler(ptb_device_name(pt->pd), argc, argv);
	if (!h)
		return -EINVAL;
	mutex_lock(&pt->pd->lock);
	r = h->fn(pt, argc - 2, argv + 2, result, maxlen);
	mutex_unlock(&pt->pd->lock);
	return r;
}
