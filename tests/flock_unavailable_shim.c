/* LD_PRELOAD shim for tests/test_locking.py: flock() fails as it does on filesystems that
 * cannot lock (NFS mounted with nolock, some Lustre and FUSE mounts). The errno is
 * $RECORDKIT_SHIM_FLOCK_ERRNO (a number), ENOLCK by default. Nothing else changes. */
#include <errno.h>
#include <stdlib.h>
#include <sys/file.h>

int flock(int fd, int operation) {
    (void)fd;
    (void)operation;
    const char *chosen = getenv("RECORDKIT_SHIM_FLOCK_ERRNO");
    errno = chosen != NULL && *chosen != '\0' ? atoi(chosen) : ENOLCK;
    return -1;
}
