/*
 * LD_PRELOAD shim for linux.uml (user-mode-linux 6.1): make its XSTATE ptrace calls
 * fit hosts whose XSAVE area is bigger than 832 bytes (AVX-512, AMX: 2696..11008 bytes).
 *
 * Why: UML keeps each guest task's FPU state in a fixed 832-byte struct _xstate and
 * moves it with ptrace(PTRACE_GETREGSET/PTRACE_SETREGSET, pid, NT_X86_XSTATE, &iov).
 * The host kernel accepts SETREGSET for XSTATE only with a buffer of exactly its full
 * XSAVE size, else EFAULT, and UML then dies on the first guest process with
 *   "userspace - ptrace set fp regs failed, errno = 14" / "Attempted to kill init!".
 * Making UML fall back to PTRACE_SETFPREGS (512-byte FXSAVE) is not enough: each guest
 * page fault runs a host signal handler in the guest's host process, which resets the
 * upper vector state (YMM/ZMM high halves, ZMM16-31, mask registers), and glibc's AVX2 /
 * EVEX string functions then return garbage (printf printing "%s", TLS reads of 0, ...).
 *
 * What: keep the full XSAVE image per traced host pid here.  A short GETREGSET reads the
 * full image into that pid's slot and hands UML its first bytes; a short SETREGSET
 * overlays UML's bytes on the slot and writes the full image back.  So the state
 * UML does not know about survives UML's save/restore around page faults.  Calls with
 * a full-size buffer and all other ptrace requests pass through unchanged; on a host
 * whose XSAVE area is 832 bytes the shim never changes anything.
 *
 * Limit: threads of one guest process share a host pid, hence a slot, so the part of the
 * state beyond 832 bytes is not switched between them (the rig's guest programs are
 * single-threaded).  UML is single-CPU, so the static buffers need no locking.
 *
 * Build: cc -O2 -shared -fPIC -o uml-xstate-shim.so uml-xstate-shim.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <elf.h>
#include <errno.h>
#include <stdarg.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/types.h>
#include <sys/uio.h>

#define MAX_XSAVE (16 * 1024)   /* AMX hosts: 11008 bytes */
#define SLOTS 256               /* host processes = guest address spaces alive at once */

typedef long (*ptrace_fn)(int, pid_t, void *, void *);

static struct slot { pid_t pid; unsigned char buf[MAX_XSAVE]; } slots[SLOTS];
static unsigned next_victim;
static size_t full_size;        /* host XSAVE size, learnt on the first XSTATE GETREGSET */

static long real(int req, pid_t pid, void *addr, void *data)
{
    static ptrace_fn fn;
    if (!fn)
        fn = (ptrace_fn)dlsym(RTLD_NEXT, "ptrace");
    return fn(req, pid, addr, data);
}

/* pid's slot; *fresh = 1 when it had none (the slot then holds nothing useful yet) */
static struct slot *slot_of(pid_t pid, int *fresh)
{
    *fresh = 0;
    for (unsigned i = 0; i < SLOTS; i++)
        if (slots[i].pid == pid)
            return &slots[i];
    struct slot *s = &slots[next_victim++ % SLOTS];   /* reuse the oldest slot */
    s->pid = pid;
    *fresh = 1;
    return s;
}

/* read pid's full XSAVE image into s->buf */
static long get_full(struct slot *s)
{
    struct iovec io = { s->buf, MAX_XSAVE };
    long r = real(PTRACE_GETREGSET, s->pid, (void *)NT_X86_XSTATE, &io);
    if (r == 0)
        full_size = io.iov_len;
    return r;
}

long ptrace(enum __ptrace_request req, ...)
{
    va_list ap;
    va_start(ap, req);
    pid_t pid = va_arg(ap, pid_t);
    void *addr = va_arg(ap, void *);
    void *data = va_arg(ap, void *);
    va_end(ap);

    struct iovec *uml = data;
    int xstate = (req == PTRACE_GETREGSET || req == PTRACE_SETREGSET) &&
                 (long)addr == NT_X86_XSTATE && uml != NULL;
    if (!xstate || (full_size && uml->iov_len >= full_size))
        return real(req, pid, addr, data);

    int fresh;
    struct slot *s = slot_of(pid, &fresh);
    long r;
    if (req == PTRACE_GETREGSET) {
        if ((r = get_full(s)) != 0)
            return r;
        if (uml->iov_len >= full_size)   /* first call told us the buffer was big enough */
            uml->iov_len = full_size;
        memcpy(uml->iov_base, s->buf, uml->iov_len);
        return 0;
    }
    /*
     * SETREGSET: overlay what UML knows on the image of UML's last GETREGSET of this pid,
     * NOT on the current one: between the two, UML may have run the guest's SIGSEGV stub
     * handler in that process, which reset the upper state we want back.  A pid UML never
     * read (a new process) starts from its current image.
     */
    if (fresh && (r = get_full(s)) != 0)
        return r;
    if (!full_size || uml->iov_len >= full_size)
        return real(req, pid, addr, data);
    memcpy(s->buf, uml->iov_base, uml->iov_len);
    struct iovec io = { s->buf, full_size };
    return real(PTRACE_SETREGSET, pid, (void *)NT_X86_XSTATE, &io);
}
