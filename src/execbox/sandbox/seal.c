/*
 * What a freshly cloned sandbox does to seal itself, in one call: its own cgroup namespace
 * and process group, its mounts and pivot, hostname, no core dumps, every capability and the
 * uid dropped, Landlock, then seccomp. child.py says why in this order.
 *
 * Why C and not Python: a sandbox is a copy of the zygote, and every page of the zygote's
 * memory the sandbox writes costs a copy-on-write fault (~2.5 us on these hosts). Python
 * writes a page for nearly every object it touches (its reference count), and these steps
 * were ~40 ctypes calls: measured, ~1 ms of cpu and ~150 faults per sandbox, on every
 * execution. Here they are only their syscalls. No library does this: it is the sandbox's
 * own sequence, which libseccomp (the filter), the kernel's Landlock ABI and mount(2) are
 * the parts of.
 *
 * The policy stays in Python (seal.py, landlock.py, seccomp.py): paths, rights, the filter,
 * ids. Each function returns 0, or an errno with `err` naming the step that failed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef SYS_landlock_create_ruleset
#define SYS_landlock_create_ruleset 444
#define SYS_landlock_add_rule 445
#define SYS_landlock_restrict_self 446
#endif
#ifndef PR_CAP_AMBIENT
#define PR_CAP_AMBIENT 47
#define PR_CAP_AMBIENT_CLEAR_ALL 4
#endif
#define LANDLOCK_RULE_PATH_BENEATH 1

/* The kernel's structs, declared here: Debian 12's headers predate the `scoped` field. */
struct ll_ruleset_attr {
    uint64_t handled_access_fs;
    uint64_t handled_access_net;
    uint64_t scoped;
};

struct ll_path_beneath {
    uint64_t allowed_access;
    int32_t parent_fd;
} __attribute__((packed));

/* One Landlock rule: what may be done beneath `path` (less on a file: see file_rights). */
struct execbox_rule {
    const char *path;
    uint64_t rights;
};

struct execbox_landlock {
    uint64_t handled_fs; /* 0: the kernel has no Landlock; nothing is done */
    uint64_t scoped;     /* ABI 6: abstract unix sockets and signals */
    uint64_t file_rights; /* the rights that apply to a file (a rule on one keeps only these) */
    const struct execbox_rule *rules;
    int nrules;
};

struct execbox_seal {
    const char *root;        /* the read-only tree the zygote built */
    const char *tmp_target;  /* its tmp, workspace and proc directories */
    const char *tmp_options;
    const char *work_target;
    const char *work_options;
    const char *proc_target;
    const char *workdir; /* where the sandbox starts, after the pivot */
    const char *hostname;
    int cap_last_cap;
    unsigned int uid;
    unsigned int gid;
    struct execbox_landlock landlock;
    const struct sock_filter *bpf;
    unsigned short bpf_len; /* instructions */
};

static int fail(char *err, size_t errlen, const char *step, const char *what) {
    int saved = errno ? errno : EINVAL;
    snprintf(err, errlen, "%s%s%s", step, what ? " " : "", what ? what : "");
    return saved;
}

int execbox_landlock(const struct execbox_landlock *ll, char *err, size_t errlen) {
    if (ll->handled_fs == 0)
        return 0;
    struct ll_ruleset_attr attr = {ll->handled_fs, 0, ll->scoped};
    size_t size = ll->scoped ? sizeof(attr) : sizeof(attr.handled_access_fs);
    int ruleset = (int)syscall(SYS_landlock_create_ruleset, &attr, size, 0);
    if (ruleset < 0)
        return fail(err, errlen, "landlock ruleset", NULL);
    for (int i = 0; i < ll->nrules; i++) {
        int fd = open(ll->rules[i].path, O_PATH | O_CLOEXEC);
        if (fd < 0) {
            if (errno == ENOENT)
                continue; /* a path that does not exist gets no access at all */
            int rc = fail(err, errlen, "landlock open", ll->rules[i].path);
            close(ruleset);
            return rc;
        }
        struct stat st;
        struct ll_path_beneath rule = {ll->rules[i].rights, fd};
        int rc = fstat(fd, &st);
        if (rc == 0 && !S_ISDIR(st.st_mode))
            rule.allowed_access &= ll->file_rights;
        if (rc == 0)
            rc = (int)syscall(SYS_landlock_add_rule, ruleset, LANDLOCK_RULE_PATH_BENEATH, &rule, 0);
        if (rc < 0) {
            rc = fail(err, errlen, "landlock rule", ll->rules[i].path);
            close(fd);
            close(ruleset);
            return rc;
        }
        close(fd);
    }
    if (syscall(SYS_landlock_restrict_self, ruleset, 0) < 0) {
        int rc = fail(err, errlen, "landlock restrict_self", NULL);
        close(ruleset);
        return rc;
    }
    close(ruleset);
    return 0;
}

/* Private /tmp, working directory and /proc, then pivot into the tree. Mounts copied into a
 * less privileged namespace are locked, and pivot_root refuses a locked root: binding the
 * tree onto itself first gives a root this namespace owns. A session's workspace is bound
 * instead of a fresh tmpfs; the bind keeps the host mount's nosuid and nodev, which this
 * namespace could not clear anyway (they are locked). */
static int enter_root(const struct execbox_seal *s, const char *workspace, char *err, size_t n) {
    unsigned long flags = MS_NOSUID | MS_NODEV;
    if (mount(s->root, s->root, NULL, MS_BIND | MS_REC, NULL) < 0)
        return fail(err, n, "mount", s->root);
    if (mount("tmp", s->tmp_target, "tmpfs", flags, s->tmp_options) < 0)
        return fail(err, n, "mount", s->tmp_target);
    if (workspace ? mount(workspace, s->work_target, NULL, MS_BIND, NULL)
                  : mount("workspace", s->work_target, "tmpfs", flags, s->work_options))
        return fail(err, n, "mount", s->work_target);
    if (mount("proc", s->proc_target, "proc", flags | MS_NOEXEC, NULL) < 0)
        return fail(err, n, "mount", s->proc_target);
    if (chdir(s->root) < 0)
        return fail(err, n, "chdir", s->root);
    if (syscall(SYS_pivot_root, ".", ".") < 0)
        return fail(err, n, "pivot_root", NULL);
    if (umount2(".", MNT_DETACH) < 0)
        return fail(err, n, "umount", "the old root");
    if (chdir(s->workdir) < 0)
        return fail(err, n, "chdir", s->workdir);
    return 0;
}

/* Empty the bounding and ambient sets (this needs CAP_SETPCAP, so before the uid change),
 * the supplementary groups, then the gid and uid, then the effective, permitted and
 * inheritable sets: a uid change clears those only when the old uid was the namespace's
 * root, and ours is unmapped (the zygote's). */
static int drop_privileges(const struct execbox_seal *s, char *err, size_t n) {
    for (int cap = 0; cap <= s->cap_last_cap; cap++)
        if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0)
            return fail(err, n, "prctl", "PR_CAPBSET_DROP");
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0)
        return fail(err, n, "prctl", "PR_CAP_AMBIENT");
    if (setgroups(0, NULL) < 0)
        return fail(err, n, "setgroups", NULL);
    if (setresgid(s->gid, s->gid, s->gid) < 0)
        return fail(err, n, "setresgid", NULL);
    if (setresuid(s->uid, s->uid, s->uid) < 0)
        return fail(err, n, "setresuid", NULL);
    struct __user_cap_header_struct header = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct data[2];
    memset(data, 0, sizeof(data));
    if (syscall(SYS_capset, &header, data) < 0)
        return fail(err, n, "capset", NULL);
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
        return fail(err, n, "prctl", "PR_SET_NO_NEW_PRIVS");
    /* the parent-death signal is reset by a uid change, so it is set after it */
    if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) < 0)
        return fail(err, n, "prctl", "PR_SET_PDEATHSIG");
    return 0;
}

int execbox_seal(const struct execbox_seal *s, const char *workspace, char *err, size_t n) {
    /* after the cgroup attach (child.py), so our cgroup is the namespace's root */
    if (unshare(CLONE_NEWCGROUP) < 0)
        return fail(err, n, "unshare", "CLONE_NEWCGROUP");
    /* A process group of its own: a signal or priority sent to "my group" covers this
     * sandbox, not the zygote's group of all sandboxes. Not a session: with autogroup
     * scheduling, setsid() costs a scheduler group per sandbox and makes each weigh as
     * much as the whole server (measured: +0.5 ms p50 in bench). */
    if (setpgid(0, 0) < 0)
        return fail(err, n, "setpgid", NULL);
    int rc = enter_root(s, workspace, err, n);
    if (rc)
        return rc;
    if (sethostname(s->hostname, strlen(s->hostname)) < 0)
        return fail(err, n, "sethostname", NULL);
    struct rlimit none = {0, 0};
    if (setrlimit(RLIMIT_CORE, &none) < 0)
        return fail(err, n, "setrlimit", "RLIMIT_CORE");
    rc = drop_privileges(s, err, n);
    if (rc)
        return rc;
    rc = execbox_landlock(&s->landlock, err, n);
    if (rc)
        return rc;
    /* last: the filter refuses what the steps above call */
    struct sock_fprog prog = {s->bpf_len, (struct sock_filter *)s->bpf};
    if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog) < 0)
        return fail(err, n, "seccomp", NULL);
    return 0;
}
