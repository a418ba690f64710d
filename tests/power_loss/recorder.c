/*
 * An LD_PRELOAD interposer that records, for files under one directory, every
 * call that can change what a power cut leaves on disk: opens (path, flags,
 * whether it is a directory), writes (offset, length, bytes), truncations,
 * sync barriers, renames, links and unlinks. tests/power_loss.rs replays the log to
 * build the images a power cut could leave.
 *
 *   VARVEDB_RECORD_ROOT  the directory whose files are recorded (a prefix of
 *                        absolute paths)
 *   VARVEDB_RECORD_LOG   the log: one line per call, "<op> <seq> ..."
 *   VARVEDB_RECORD_DATA  the bytes of every write, back to back; a write line
 *                        names its offset in this file
 *
 * A write is logged after it returns (its bytes are then in the page cache),
 * under one lock, with the next sequence number. A barrier takes a sequence
 * number when it starts and is logged when it returns with both numbers: it
 * makes durable the writes to its file logged before it started. Memory-mapped
 * writes are not recorded; a shared writable mapping of a recorded file is
 * logged as "X" so the replay refuses the recording.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

#define MAX_FD 65536
#define MAX_PATH 4096

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static char root[MAX_PATH];
static size_t root_len;
static int log_fd = -1;
static int data_fd = -1;
static uint64_t seq;
static uint64_t data_off;
static char *paths[MAX_FD]; /* tracked fd -> path (NULL: not tracked) */

static void raw_write_all(int fd, const void *buf, size_t len) {
    const char *p = buf;
    while (len > 0) {
        long n = syscall(SYS_write, fd, p, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            abort();
        }
        p += n;
        len -= (size_t)n;
    }
}

static void init(void) {
    static int done;
    if (done)
        return;
    done = 1;
    const char *r = getenv("VARVEDB_RECORD_ROOT");
    const char *l = getenv("VARVEDB_RECORD_LOG");
    const char *d = getenv("VARVEDB_RECORD_DATA");
    if (!r || !l || !d)
        return;
    snprintf(root, sizeof root, "%s", r);
    root_len = strlen(root);
    log_fd = (int)syscall(SYS_openat, AT_FDCWD, l, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    data_fd = (int)syscall(SYS_openat, AT_FDCWD, d, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (log_fd < 0 || data_fd < 0)
        abort();
}

__attribute__((constructor)) static void recorder_init(void) {
    pthread_mutex_lock(&lock);
    init();
    pthread_mutex_unlock(&lock);
}

static int under_root(const char *path) {
    return log_fd >= 0 && path && path[0] == '/' && strncmp(path, root, root_len) == 0 &&
           (path[root_len] == '/' || path[root_len] == 0);
}

/* Call with the lock held. */
static void logf_locked(const char *fmt, ...) {
    char line[MAX_PATH + 256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof line)
        abort();
    raw_write_all(log_fd, line, (size_t)n);
}

static int tracked(int fd) { return fd >= 0 && fd < MAX_FD && paths[fd] != NULL; }

#define REAL(ret, name, ...)                                                                       \
    static ret (*real_##name)(__VA_ARGS__);                                                        \
    if (!real_##name)                                                                              \
        real_##name = (ret(*)(__VA_ARGS__))dlsym(RTLD_NEXT, #name);

static void note_open(const char *path, int fd, int flags) {
    if (fd < 0 || fd >= MAX_FD)
        return;
    pthread_mutex_lock(&lock);
    free(paths[fd]);
    paths[fd] = NULL;
    if (under_root(path)) {
        struct stat st;
        int dir = fstat(fd, &st) == 0 && S_ISDIR(st.st_mode);
        paths[fd] = strdup(path);
        logf_locked("O %llu %d %d %d %s\n", (unsigned long long)++seq, fd, flags, dir, path);
    }
    pthread_mutex_unlock(&lock);
}

static int mode_arg(int flags, va_list ap) {
    return (flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE ? va_arg(ap, int) : 0;
}

int open(const char *path, int flags, ...) {
    REAL(int, open, const char *, int, ...);
    va_list ap;
    va_start(ap, flags);
    int mode = mode_arg(flags, ap);
    va_end(ap);
    int fd = real_open(path, flags, mode);
    note_open(path, fd, flags);
    return fd;
}

int open64(const char *path, int flags, ...) {
    REAL(int, open64, const char *, int, ...);
    va_list ap;
    va_start(ap, flags);
    int mode = mode_arg(flags, ap);
    va_end(ap);
    int fd = real_open64(path, flags, mode);
    note_open(path, fd, flags);
    return fd;
}

int openat(int dirfd, const char *path, int flags, ...) {
    REAL(int, openat, int, const char *, int, ...);
    va_list ap;
    va_start(ap, flags);
    int mode = mode_arg(flags, ap);
    va_end(ap);
    int fd = real_openat(dirfd, path, flags, mode);
    note_open(path, fd, flags);
    return fd;
}

int openat64(int dirfd, const char *path, int flags, ...) {
    REAL(int, openat64, int, const char *, int, ...);
    va_list ap;
    va_start(ap, flags);
    int mode = mode_arg(flags, ap);
    va_end(ap);
    int fd = real_openat64(dirfd, path, flags, mode);
    note_open(path, fd, flags);
    return fd;
}

int creat(const char *path, mode_t mode) { return open(path, O_CREAT | O_WRONLY | O_TRUNC, mode); }
int creat64(const char *path, mode_t mode) { return open(path, O_CREAT | O_WRONLY | O_TRUNC, mode); }

int close(int fd) {
    REAL(int, close, int);
    if (fd >= 0 && fd < MAX_FD) {
        pthread_mutex_lock(&lock);
        if (paths[fd]) {
            logf_locked("C %llu %d\n", (unsigned long long)++seq, fd);
            free(paths[fd]);
            paths[fd] = NULL;
        }
        pthread_mutex_unlock(&lock);
    }
    return real_close(fd);
}

/* Logs a completed write of `done` bytes at `off` (-1: at the end, O_APPEND). */
static void note_write(int fd, long long off, const struct iovec *iov, int iovcnt, ssize_t done,
                       int dsync) {
    if (done <= 0)
        return;
    pthread_mutex_lock(&lock);
    if (tracked(fd)) {
        logf_locked("W %llu %d %lld %lld %llu %d\n", (unsigned long long)++seq, fd, off,
                    (long long)done, (unsigned long long)data_off, dsync);
        size_t left = (size_t)done;
        for (int i = 0; i < iovcnt && left > 0; i++) {
            size_t n = iov[i].iov_len < left ? iov[i].iov_len : left;
            raw_write_all(data_fd, iov[i].iov_base, n);
            left -= n;
        }
        data_off += (uint64_t)done;
    }
    pthread_mutex_unlock(&lock);
}

static long long position(int fd) {
    if (!tracked(fd))
        return 0;
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0 && (fl & O_APPEND))
        return -1;
    return (long long)lseek(fd, 0, SEEK_CUR);
}

ssize_t write(int fd, const void *buf, size_t len) {
    REAL(ssize_t, write, int, const void *, size_t);
    long long off = position(fd);
    ssize_t done = real_write(fd, buf, len);
    struct iovec v = {(void *)buf, len};
    note_write(fd, off, &v, 1, done, 0);
    return done;
}

ssize_t pwrite(int fd, const void *buf, size_t len, off_t off) {
    REAL(ssize_t, pwrite, int, const void *, size_t, off_t);
    ssize_t done = real_pwrite(fd, buf, len, off);
    struct iovec v = {(void *)buf, len};
    note_write(fd, (long long)off, &v, 1, done, 0);
    return done;
}

ssize_t pwrite64(int fd, const void *buf, size_t len, off_t off) {
    REAL(ssize_t, pwrite64, int, const void *, size_t, off_t);
    ssize_t done = real_pwrite64(fd, buf, len, off);
    struct iovec v = {(void *)buf, len};
    note_write(fd, (long long)off, &v, 1, done, 0);
    return done;
}

ssize_t writev(int fd, const struct iovec *iov, int iovcnt) {
    REAL(ssize_t, writev, int, const struct iovec *, int);
    long long off = position(fd);
    ssize_t done = real_writev(fd, iov, iovcnt);
    note_write(fd, off, iov, iovcnt, done, 0);
    return done;
}

ssize_t pwritev(int fd, const struct iovec *iov, int iovcnt, off_t off) {
    REAL(ssize_t, pwritev, int, const struct iovec *, int, off_t);
    ssize_t done = real_pwritev(fd, iov, iovcnt, off);
    note_write(fd, (long long)off, iov, iovcnt, done, 0);
    return done;
}

ssize_t pwritev64(int fd, const struct iovec *iov, int iovcnt, off_t off) {
    REAL(ssize_t, pwritev64, int, const struct iovec *, int, off_t);
    ssize_t done = real_pwritev64(fd, iov, iovcnt, off);
    note_write(fd, (long long)off, iov, iovcnt, done, 0);
    return done;
}

ssize_t pwritev2(int fd, const struct iovec *iov, int iovcnt, off_t off, int flags) {
    REAL(ssize_t, pwritev2, int, const struct iovec *, int, off_t, int);
    long long at = off == -1 ? position(fd) : (long long)off;
    ssize_t done = real_pwritev2(fd, iov, iovcnt, off, flags);
    note_write(fd, at, iov, iovcnt, done, (flags & (RWF_DSYNC | RWF_SYNC)) != 0);
    return done;
}

static void note_truncate(int fd, long long len, int rc) {
    if (rc != 0)
        return;
    pthread_mutex_lock(&lock);
    if (tracked(fd))
        logf_locked("T %llu %d %lld\n", (unsigned long long)++seq, fd, len);
    pthread_mutex_unlock(&lock);
}

int ftruncate(int fd, off_t len) {
    REAL(int, ftruncate, int, off_t);
    int rc = real_ftruncate(fd, len);
    note_truncate(fd, (long long)len, rc);
    return rc;
}

int ftruncate64(int fd, off_t len) {
    REAL(int, ftruncate64, int, off_t);
    int rc = real_ftruncate64(fd, len);
    note_truncate(fd, (long long)len, rc);
    return rc;
}

/* A barrier: "S <seq> <fd> <begin seq> <kind>" for one file, "G ..." for all. */
static uint64_t barrier_begin(void) {
    pthread_mutex_lock(&lock);
    uint64_t begin = ++seq;
    pthread_mutex_unlock(&lock);
    return begin;
}

static void barrier_end(int fd, uint64_t begin, const char *kind, int rc) {
    if (rc != 0)
        return;
    pthread_mutex_lock(&lock);
    if (fd < 0)
        logf_locked("G %llu %llu %s\n", (unsigned long long)++seq, (unsigned long long)begin, kind);
    else if (tracked(fd))
        logf_locked("S %llu %d %llu %s\n", (unsigned long long)++seq, fd,
                    (unsigned long long)begin, kind);
    pthread_mutex_unlock(&lock);
}

int fsync(int fd) {
    REAL(int, fsync, int);
    uint64_t b = barrier_begin();
    int rc = real_fsync(fd);
    barrier_end(fd, b, "fsync", rc);
    return rc;
}

int fdatasync(int fd) {
    REAL(int, fdatasync, int);
    uint64_t b = barrier_begin();
    int rc = real_fdatasync(fd);
    barrier_end(fd, b, "fdatasync", rc);
    return rc;
}

int sync_file_range(int fd, off_t off, off_t n, unsigned int flags) {
    REAL(int, sync_file_range, int, off_t, off_t, unsigned int);
    int rc = real_sync_file_range(fd, off, n, flags);
    /* It never syncs metadata or the device cache: not a barrier, but say so. */
    pthread_mutex_lock(&lock);
    if (rc == 0 && tracked(fd))
        logf_locked("N %llu %d sync_file_range\n", (unsigned long long)++seq, fd);
    pthread_mutex_unlock(&lock);
    return rc;
}

int syncfs(int fd) {
    REAL(int, syncfs, int);
    uint64_t b = barrier_begin();
    int rc = real_syncfs(fd);
    barrier_end(-1, b, "syncfs", rc);
    return rc;
}

void sync(void) {
    REAL(void, sync, void);
    uint64_t b = barrier_begin();
    real_sync();
    barrier_end(-1, b, "sync", 0);
}

int msync(void *addr, size_t len, int flags) {
    REAL(int, msync, void *, size_t, int);
    int rc = real_msync(addr, len, flags);
    pthread_mutex_lock(&lock);
    if (log_fd >= 0)
        logf_locked("X %llu msync\n", (unsigned long long)++seq);
    pthread_mutex_unlock(&lock);
    return rc;
}

void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off) {
    REAL(void *, mmap, void *, size_t, int, int, int, off_t);
    void *p = real_mmap(addr, len, prot, flags, fd, off);
    if (p != MAP_FAILED && (prot & PROT_WRITE) && (flags & MAP_SHARED)) {
        pthread_mutex_lock(&lock);
        if (tracked(fd))
            logf_locked("X %llu mmap-shared-writable %d\n", (unsigned long long)++seq, fd);
        pthread_mutex_unlock(&lock);
    }
    return p;
}

static void note_rename(const char *from, const char *to, int rc) {
    if (rc != 0)
        return;
    pthread_mutex_lock(&lock);
    if (under_root(from) || under_root(to))
        logf_locked("R %llu %s\n%s\n", (unsigned long long)++seq, from, to);
    pthread_mutex_unlock(&lock);
}

int rename(const char *from, const char *to) {
    REAL(int, rename, const char *, const char *);
    int rc = real_rename(from, to);
    note_rename(from, to, rc);
    return rc;
}

int renameat(int fd1, const char *from, int fd2, const char *to) {
    REAL(int, renameat, int, const char *, int, const char *);
    int rc = real_renameat(fd1, from, fd2, to);
    note_rename(from, to, rc);
    return rc;
}

int renameat2(int fd1, const char *from, int fd2, const char *to, unsigned int flags) {
    REAL(int, renameat2, int, const char *, int, const char *, unsigned int);
    int rc = real_renameat2(fd1, from, fd2, to, flags);
    note_rename(from, to, rc);
    return rc;
}

static void note_link(const char *from, const char *to, int rc) {
    if (rc != 0)
        return;
    pthread_mutex_lock(&lock);
    if (under_root(from) || under_root(to))
        logf_locked("L %llu %s\n%s\n", (unsigned long long)++seq, from, to);
    pthread_mutex_unlock(&lock);
}

int link(const char *from, const char *to) {
    REAL(int, link, const char *, const char *);
    int rc = real_link(from, to);
    note_link(from, to, rc);
    return rc;
}

int linkat(int fd1, const char *from, int fd2, const char *to, int flags) {
    REAL(int, linkat, int, const char *, int, const char *, int);
    int rc = real_linkat(fd1, from, fd2, to, flags);
    note_link(from, to, rc);
    return rc;
}

static void note_unlink(const char *path, int rc) {
    if (rc != 0)
        return;
    pthread_mutex_lock(&lock);
    if (under_root(path))
        logf_locked("U %llu %s\n", (unsigned long long)++seq, path);
    pthread_mutex_unlock(&lock);
}

int unlink(const char *path) {
    REAL(int, unlink, const char *);
    int rc = real_unlink(path);
    note_unlink(path, rc);
    return rc;
}

int unlinkat(int dirfd, const char *path, int flags) {
    REAL(int, unlinkat, int, const char *, int);
    int rc = real_unlinkat(dirfd, path, flags);
    note_unlink(path, rc);
    return rc;
}
