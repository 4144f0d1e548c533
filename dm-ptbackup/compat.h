/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * Shims over the kernel interfaces that differ between the kernels
 * dm-ptbackup supports (Debian 12's 6.1 and the 6.12 series).  Which branch
 * is taken is decided by compile probes (scripts/gen-compat.sh), never by
 * version numbers.
 */
#ifndef DM_PTBACKUP_COMPAT_H
#define DM_PTBACKUP_COMPAT_H

#include <linux/blkdev.h>
#include <linux/device-mapper.h>
#include <linux/dm-io.h>
#include <linux/fs.h>
#include <linux/ioprio.h>

#include "compat-gen.h"

static inline int ptb_dm_io(struct dm_io_request *req, unsigned int num_regions,
			    struct dm_io_region *where)
{
#ifdef PTB_HAVE_DM_IO_IOPRIO
	return dm_io(req, num_regions, where, NULL, IOPRIO_DEFAULT);
#else
	return dm_io(req, num_regions, where, NULL);
#endif
}

/* A table's open mode without write access. */
#ifdef BLK_OPEN_WRITE
#define ptb_mode_read_only(mode)	((mode) & ~BLK_OPEN_WRITE)
#else
#define ptb_mode_read_only(mode)	((mode) & ~FMODE_WRITE)
#endif

/* A block device opened read-write and exclusively, by path. */
struct ptb_bdev {
	struct block_device *bdev;
#ifdef PTB_HAVE_BDEV_FILE_OPEN_BY_PATH
	struct file *file;
#endif
};

static inline int ptb_bdev_open_excl(const char *path, void *holder,
				     struct ptb_bdev *b)
{
#if defined(PTB_HAVE_BDEV_FILE_OPEN_BY_PATH)
	struct file *f = bdev_file_open_by_path(path, BLK_OPEN_READ | BLK_OPEN_WRITE,
						holder, NULL);

	if (IS_ERR(f))
		return PTR_ERR(f);
	b->file = f;
	b->bdev = file_bdev(f);
	return 0;
#elif defined(PTB_HAVE_BLKDEV_GET_BY_PATH_FMODE)
	struct block_device *bdev;

	bdev = blkdev_get_by_path(path, FMODE_READ | FMODE_WRITE | FMODE_EXCL,
				  holder);
	if (IS_ERR(bdev))
		return PTR_ERR(bdev);
	b->bdev = bdev;
	return 0;
#else
#error "no known way to open a block device exclusively on this kernel"
#endif
}

static inline void ptb_bdev_close(struct ptb_bdev *b, void *holder)
{
	if (!b->bdev)
		return;
#if defined(PTB_HAVE_BDEV_FILE_OPEN_BY_PATH)
#ifdef PTB_HAVE_BDEV_FPUT
	bdev_fput(b->file);
#else
	fput(b->file);
#endif
	b->file = NULL;
#else
	blkdev_put(b->bdev, FMODE_READ | FMODE_WRITE | FMODE_EXCL);
#endif
	b->bdev = NULL;
}

#endif /* DM_PTBACKUP_COMPAT_H */
