/* Crash points for tests/test_crashpoints.py: an LD_PRELOAD library that counts the
 * writes (write, pwrite, pwrite64, pwritev, pwritev64) a process makes to record files
 * (paths ending in ".h5" or ".h5.part"; the ".h5.lock" beside them is not counted) and
 * SIGKILLs the process just before the n-th of them, so that every write of a phase can be
 * the one a kill lands on. The file is then exactly as the first n - 1 writes left it.
 *
 * The writer arms it through ctypes (nothing happens until it does):
 *   long rk_writes(void)         writes to record files so far
 *   void rk_kill_after(long n)   SIGKILL before the n-th write from now (n >= 1; 0 disarms)
 *
 * RK_CRASHPOINT_TRACE=1 in the environment prints each counted write to stderr.
 *
 * Built by the test: cc -shared -fPIC -O2 -o crashpoint_shim.so crashpoint_shim.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

#define MAX_FDS 65536

static unsigned char watched[MAX_FDS];
static long writes;   /* writes to watched files so far */
static long kill_at;  /* the write to kill before; 0: none */

long rk_writes(void) { return __atomic_load_n(&writes, __ATOMIC_SEQ_CST); }

void rk_kill_after(long n) {
    __atomic_store_n(&kill_at, n > 0 ? rk_writes() + n : 0, __ATOMIC_SEQ_CST);
}

static int is_record(const char *path) {
    size_t len = path ? strlen(path) : 0;
    return (len >= 3 && strcmp(path + len - 3, ".h5") == 0)
        || (len >= 8 && strcmp(path + len - 8, ".h5.part") == 0);
}

static void opened(int fd, const char *path) {
    if (fd >= 0 && fd < MAX_FDS)
        watched[fd] = (unsigned char)is_record(path);
}

static void before_write(int fd, long offset, size_t count) {
    if (fd < 0 || fd >= MAX_FDS || !watched[fd])
        return;
    long n = __atomic_add_fetch(&writes, 1, __ATOMIC_SEQ_CST);
    if (getenv("RK_CRASHPOINT_TRACE"))  /* for a person reading the order of writes */
        fprintf(stderr, "rk-write %ld at %ld, %zu bytes\n", n, offset, count);
    long at = __atomic_load_n(&kill_at, __ATOMIC_SEQ_CST);
    if (at && n >= at)
        raise(SIGKILL);
}

/* the libc function this one wraps, looked up on first use */
#define REAL(name, ret, ...) static ret (*real_##name)(__VA_ARGS__); \
    if (!real_##name) *(void **)&real_##name = dlsym(RTLD_NEXT, #name)

static mode_t mode_of(int flags, va_list ap) {
    return (flags & (O_CREAT | O_TMPFILE)) ? (mode_t)va_arg(ap, int) : 0;
}

int open(const char *path, int flags, ...) {
    REAL(open, int, const char *, int, ...);
    va_list ap; va_start(ap, flags); mode_t mode = mode_of(flags, ap); va_end(ap);
    int fd = real_open(path, flags, mode);
    opened(fd, path);
    return fd;
}

int open64(const char *path, int flags, ...) {
    REAL(open64, int, const char *, int, ...);
    va_list ap; va_start(ap, flags); mode_t mode = mode_of(flags, ap); va_end(ap);
    int fd = real_open64(path, flags, mode);
    opened(fd, path);
    return fd;
}

int openat(int dirfd, const char *path, int flags, ...) {
    REAL(openat, int, int, const char *, int, ...);
    va_list ap; va_start(ap, flags); mode_t mode = mode_of(flags, ap); va_end(ap);
    int fd = real_openat(dirfd, path, flags, mode);
    opened(fd, path);
    return fd;
}

int openat64(int dirfd, const char *path, int flags, ...) {
    REAL(openat64, int, int, const char *, int, ...);
    va_list ap; va_start(ap, flags); mode_t mode = mode_of(flags, ap); va_end(ap);
    int fd = real_openat64(dirfd, path, flags, mode);
    opened(fd, path);
    return fd;
}

int close(int fd) {
    REAL(close, int, int);
    if (fd >= 0 && fd < MAX_FDS)
        watched[fd] = 0;
    return real_close(fd);
}

ssize_t write(int fd, const void *buf, size_t count) {
    REAL(write, ssize_t, int, const void *, size_t);
    before_write(fd, -1, count);
    return real_write(fd, buf, count);
}

ssize_t pwrite(int fd, const void *buf, size_t count, off_t offset) {
    REAL(pwrite, ssize_t, int, const void *, size_t, off_t);
    before_write(fd, (long)offset, count);
    return real_pwrite(fd, buf, count, offset);
}

ssize_t pwrite64(int fd, const void *buf, size_t count, off_t offset) {
    REAL(pwrite64, ssize_t, int, const void *, size_t, off_t);
    before_write(fd, (long)offset, count);
    return real_pwrite64(fd, buf, count, offset);
}

ssize_t pwritev(int fd, const struct iovec *iov, int iovcnt, off_t offset) {
    REAL(pwritev, ssize_t, int, const struct iovec *, int, off_t);
    before_write(fd, (long)offset, (size_t)iovcnt);
    return real_pwritev(fd, iov, iovcnt, offset);
}

ssize_t pwritev64(int fd, const struct iovec *iov, int iovcnt, off_t offset) {
    REAL(pwritev64, ssize_t, int, const struct iovec *, int, off_t);
    before_write(fd, (long)offset, (size_t)iovcnt);
    return real_pwritev64(fd, iov, iovcnt, offset);
}
