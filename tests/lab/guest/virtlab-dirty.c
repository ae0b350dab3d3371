/*
 * virtlab-dirty: the memory-dirtying workload of a virtlab guest (`virtlab dirty VM --mib N`).
 *
 * One process rewrites MIB MiB of its own anonymous memory at most RATE times a second (0: as fast
 * as it can), every byte of every page changing on every pass. It does not fork, allocate or touch
 * files while it runs, so the guest kernel stays nearly idle and the memory traffic is the
 * workload's own.
 *
 * Each page starts with the number of the pass that last wrote it. Before rewriting a page the
 * workload checks that number: a page that holds an older pass lost a write (its newer content never
 * reached the host the guest now runs on). The totals go to DIR/passes and DIR/lost once a second.
 *
 * A second process makes the guest CPU flush its TLB every FLUSH_US microseconds (0: never). QEMU 7.2 under TCG
 * (Debian 12) does not mark guest pages dirty for migration when they are written through TLB entries
 * made before the last dirty-bitmap sync; the fix is QEMU commit 03bfc2188f ("physmem: Fix migration
 * dirty bitmap coherency with TCG memory access", QEMU 9.0). Until a TLB entry is dropped, writes
 * through it never reach the destination, and a busy guest crashes there. Frequent flushes keep that
 * window short; the lost count above measures what is left of it. KVM guests are not affected.
 *
 * usage: virtlab-dirty MIB RATE DIR [FLUSH_US]   (FLUSH_US default 1000)
 * The parent allocates and fills the memory, starts the worker (a session leader: kill its process
 * group to stop both processes), prints the worker's PID and exits 0; it exits 1 with a message when
 * the memory cannot be had.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096
#define WORDS (PAGE / sizeof(uint64_t))
/* More pages than Linux flushes one by one (tlb_single_page_flush_ceiling, 33): a full flush. */
#define FLUSH_PAGES 64

static void flush_forever(long flush_us)
{
    char *pages = mmap(NULL, FLUSH_PAGES * PAGE, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    struct timespec pause = {flush_us / 1000000, (flush_us % 1000000) * 1000L};

    if (pages == MAP_FAILED)
        _exit(1);
    memset(pages, 1, FLUSH_PAGES * PAGE);
    for (;;) {
        /* Changing the protection of present pages makes the kernel flush the TLB. */
        mprotect(pages, FLUSH_PAGES * PAGE, PROT_READ);
        mprotect(pages, FLUSH_PAGES * PAGE, PROT_READ | PROT_WRITE);
        nanosleep(&pause, NULL);
    }
}

static void write_count(const char *dir, const char *name, uint64_t value)
{
    char path[512], tmp[520], text[32];
    int fd, len;

    snprintf(path, sizeof(path), "%s/%s", dir, name);
    snprintf(tmp, sizeof(tmp), "%s.new", path);
    len = snprintf(text, sizeof(text), "%llu\n", (unsigned long long)value);
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0)
        return;
    if (write(fd, text, len) == len)
        rename(tmp, path);
    close(fd);
}

static double now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    uint64_t *memory, pass = 0, lost = 0, pages, page, word;
    double rate, next, last_report = 0;
    unsigned long mib;
    long flush_us = 1000;
    char *end;
    pid_t pid;

    if (argc != 4 && argc != 5) {
        fprintf(stderr, "usage: virtlab-dirty MIB RATE DIR [FLUSH_US]\n");
        return 2;
    }
    mib = strtoul(argv[1], &end, 10);
    if (*end || mib == 0) {
        fprintf(stderr, "virtlab-dirty: MIB must be a positive whole number, got %s\n", argv[1]);
        return 2;
    }
    rate = strtod(argv[2], &end);
    if (*end || rate < 0) {
        fprintf(stderr, "virtlab-dirty: RATE must be zero or more, got %s\n", argv[2]);
        return 2;
    }
    if (argc == 5) {
        flush_us = strtol(argv[4], &end, 10);
        if (*end || flush_us < 0) {
            fprintf(stderr, "virtlab-dirty: FLUSH_US must be zero or more, got %s\n", argv[4]);
            return 2;
        }
    }
    pages = (uint64_t)mib * 1024 * 1024 / PAGE;
    memory = mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (memory == MAP_FAILED || mlock(memory, pages * PAGE) != 0) {
        fprintf(stderr, "virtlab-dirty: cannot have %lu MiB of guest memory: %s\n", mib, strerror(errno));
        return 1;
    }
    /* Pass 0: every page holds 0 in its first word, as the first pass expects. */
    memset(memory, 0, pages * PAGE);
    write_count(argv[3], "passes", 0);
    write_count(argv[3], "lost", 0);

    pid = fork();
    if (pid < 0) {
        fprintf(stderr, "virtlab-dirty: fork: %s\n", strerror(errno));
        return 1;
    }
    if (pid > 0) {
        printf("%d\n", (int)pid);
        return 0;
    }
    setsid();
    close(STDIN_FILENO);
    close(STDOUT_FILENO);
    close(STDERR_FILENO);
    signal(SIGHUP, SIG_IGN);
    if (flush_us > 0 && fork() == 0)
        flush_forever(flush_us);

    next = now();
    for (;;) {
        uint64_t fill;

        pass++;
        fill = pass * 0x0101010101010101ULL;
        for (page = 0; page < pages; page++) {
            uint64_t *p = memory + page * WORDS;

            if (p[0] != pass - 1)
                lost++;
            p[0] = pass;
            for (word = 1; word < WORDS; word++)
                p[word] = fill ^ word;
        }
        if (now() - last_report >= 1.0) {
            write_count(argv[3], "passes", pass);
            write_count(argv[3], "lost", lost);
            last_report = now();
        }
        if (rate > 0) {
            double wait;

            next += 1.0 / rate;
            wait = next - now();
            if (wait > 0) {
                struct timespec ts = {(time_t)wait, (long)((wait - (time_t)wait) * 1e9)};
                nanosleep(&ts, NULL);
            } else {
                next = now();
            }
        }
    }
}
