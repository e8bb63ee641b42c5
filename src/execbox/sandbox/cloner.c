/*
 * The cloner's loop (cloner.py says what the cloner is), and the check that a kept network
 * namespace still reads as a new one (netns.py says why namespaces are kept).
 *
 * Why C and not Python: after each clone, every page of the cloner's memory is shared
 * copy-on-write with the new sandbox, so each page the loop writes before the next clone
 * costs the cloner a fault and a page copy, and the sandbox then holds a page of its own.
 * The Python loop (receive the request, clone, read the kept namespace's files, reply) wrote
 * dozens of pages per clone through reference counts and frames alone, and ran the
 * interpreter's fork hooks around each clone. Here it writes its stack and one buffer.
 * What no library does: this is execbox's own request protocol around clone(2).
 *
 * The policy stays in Python: the clone flags, the request's shape, what a new namespace
 * reads as. A new sandbox returns from execbox_cloner_serve into Python, which runs the
 * interpreter's after-fork work (PyOS_AfterFork_Child) before anything else.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#define CLONER_MAX_FDS 64
#define NETNS_BUF 16384
/* in a template: one or more decimal digits (the host-wide counts in sockstat) */
#define ANY_NUMBER '\x01'

/* What each of a namespace's files reads as when it is new (netns.py: `_OBSERVED`). */
struct execbox_netns_template {
    int nfiles;
    const char *const *paths;
    const char *const *expected;
    const uint32_t *lengths;
};

struct execbox_cloner {
    int sock;               /* the zygote's end of our line */
    int home;               /* the cloner's own network namespace */
    uint64_t flags_new;     /* clone flags: into a new network namespace */
    uint64_t flags_into;    /* clone flags: staying in the one entered */
    void *tid;              /* where glibc keeps this thread's tid (CLONE_CHILD_SETTID), or NULL */
    int sandbox_fds;        /* a request's own fds, at least */
    int max_fds;            /* and at most (a kept namespace's comes after them) */
    const struct execbox_netns_template *pristine;
};

/* What a new sandbox gets: the fds of its request, in the order they were sent. The caller
 * makes room for max_fds + 1 of them. */
struct execbox_clone_request {
    int nfds;
    int fds[];
};

static int matches(const char *want, size_t wn, const char *got, size_t gn) {
    size_t i = 0, j = 0;
    while (i < wn) {
        if (want[i] == ANY_NUMBER) {
            size_t k = j;
            while (k < gn && got[k] >= '0' && got[k] <= '9')
                k++;
            if (k == j)
                return 0;
            j = k;
        } else if (j >= gn || got[j++] != want[i]) {
            return 0;
        }
        i++;
    }
    return j == gn;
}

/* Read a file whole into buf: its length, or -1 (unreadable, or larger than buf). */
static ssize_t read_whole(const char *path, char *buf, size_t size) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    size_t n = 0;
    for (;;) {
        ssize_t r = read(fd, buf + n, size - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            close(fd);
            return r < 0 ? -1 : (ssize_t)n;
        }
        n += (size_t)r;
        if (n == size) {
            close(fd);
            return -1;
        }
    }
}

/* 1 if the calling thread's network namespace reads as the template, else 0. */
int execbox_netns_is_new(const struct execbox_netns_template *t) {
    /* static: the loop's one buffer, not 16 KiB of stack to fault in */
    static char buf[NETNS_BUF];
    for (int i = 0; i < t->nfiles; i++) {
        ssize_t n = read_whole(t->paths[i], buf, sizeof buf);
        if (n < 0 || !matches(t->expected[i], t->lengths[i], buf, (size_t)n))
            return 0;
    }
    return 1;
}

static long do_clone(uint64_t flags, void *tid) {
    /* no new stack: the child returns from here on its copy of this one, as from fork() */
    long pid = syscall(SYS_clone, (unsigned long)flags, NULL, NULL, tid, NULL);
    return pid < 0 ? -errno : pid;
}

/* Enter namespace `kept` and stay if it reads as new; else come home. -errno if the way
 * home failed (a bug: the cloner must then stop). */
static int enter_if_new(const struct execbox_cloner *c, int kept) {
    if (setns(kept, CLONE_NEWNET) != 0)
        return 0;
    if (execbox_netns_is_new(c->pristine))
        return 1;
    return setns(c->home, CLONE_NEWNET) != 0 ? -errno : 0;
}

static void close_all(const int *fds, int n) {
    for (int i = 0; i < n; i++)
        close(fds[i]);
}

/*
 * Serve clone requests until the zygote goes. Each request is a byte ('C', or 'N' when its
 * last fd is a kept network namespace) with the new sandbox's fds; each is answered, in
 * order, with the new pid (or minus the errno of the refusal) and whether the sandbox's
 * network namespace is a new one, as cloner.py's Reply.
 *
 * Returns 0 in a new sandbox, with `out` holding its fds (and nothing else of the
 * cloner's open); 1 in the cloner once the zygote has closed its end; minus an errno if
 * the cloner cannot go on.
 */
int execbox_cloner_serve(const struct execbox_cloner *c, struct execbox_clone_request *out) {
    int max = c->max_fds + 1 < CLONER_MAX_FDS ? c->max_fds + 1 : CLONER_MAX_FDS;
    for (;;) {
        char kind = 0;
        union {
            struct cmsghdr align;
            char buf[CMSG_SPACE(sizeof(int) * CLONER_MAX_FDS)];
        } ctl;
        struct iovec iov = {.iov_base = &kind, .iov_len = 1};
        struct msghdr msg = {
            .msg_iov = &iov,
            .msg_iovlen = 1,
            .msg_control = ctl.buf,
            .msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)max),
        };
        ssize_t got = recvmsg(c->sock, &msg, 0);
        if (got < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        int n = 0;
        for (struct cmsghdr *h = CMSG_FIRSTHDR(&msg); h; h = CMSG_NXTHDR(&msg, h)) {
            if (h->cmsg_level != SOL_SOCKET || h->cmsg_type != SCM_RIGHTS)
                continue;
            int k = (int)((h->cmsg_len - CMSG_LEN(0)) / sizeof(int));
            if (k > max - n)
                k = max - n;
            memcpy(out->fds + n, CMSG_DATA(h), sizeof(int) * (size_t)k);
            n += k;
        }
        if (n == 0)
            return 1; /* the end of the line, or a message without fds: the zygote is gone */
        int kept = kind == 'N' && n > c->sandbox_fds ? out->fds[--n] : -1;
        long pid = -EINVAL; /* not a request this loop understands */
        int fresh = 0;
        if (n >= c->sandbox_fds) {
            int entered = kept >= 0 ? enter_if_new(c, kept) : 0;
            if (entered < 0)
                return entered;
            fresh = !entered;
            pid = do_clone(entered ? c->flags_into : c->flags_new, c->tid);
            if (entered && pid != 0 && setns(c->home, CLONE_NEWNET) != 0)
                return -errno;
        }
        if (pid == 0) {
            /* the sandbox must not hold the zygote's line to the cloner: then the cloner's
             * death would not show as its end */
            close(c->sock);
            close(c->home);
            if (kept >= 0)
                close(kept);
            out->nfds = n;
            return 0;
        }
        close_all(out->fds, n);
        if (kept >= 0)
            close(kept);
        char reply[sizeof(int32_t) + 1];
        int32_t p = (int32_t)pid;
        memcpy(reply, &p, sizeof p);
        reply[sizeof p] = (char)fresh;
        while (send(c->sock, reply, sizeof reply, 0) < 0) {
            if (errno != EINTR)
                return -errno;
        }
    }
}
