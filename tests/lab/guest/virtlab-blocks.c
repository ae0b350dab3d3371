/*
 * virtlab-blocks: the disk workload of a virtlab guest, for tests that move a VM with its local disk
 * (`virtlab add-vm --disk SIZE`): a writer of numbered, checksummed blocks and their verifier.
 *
 * usage: virtlab-blocks write DEVICE [--rate MIB_PER_S] [--count N] [--background] [--done FILE]
 *        virtlab-blocks verify DEVICE
 *        virtlab-blocks status [--done FILE]
 *        virtlab-blocks stop [--done FILE]
 *
 * DEVICE is a block device or a plain file. A block is 4096 bytes, little-endian:
 *   bytes 0-7     the magic "VLBLOCK1"
 *   bytes 8-15    its sequence number (block I holds sequence I: the writer starts at block 0)
 *   bytes 16-19   the CRC-32 (IEEE 802.3, as zlib's crc32) of bytes 24-4095
 *   bytes 20-23   zero
 *   bytes 24-4095 the payload: 509 words, word J = mix(S + (J + 1) * GOLDEN), S = SEQUENCE ^ SEED
 *                 (mix is splitmix64's finaliser), so the payload follows from the sequence number.
 *
 * write: writes blocks 0, 1, 2, ... each with O_DIRECT|O_DSYNC (O_DSYNC alone where the file system
 * refuses O_DIRECT), at most MIB_PER_S MiB a second (default 1; 0: as fast as the device goes), and
 * stops after N blocks or at the end of the device (it never wraps). Once a block's write has
 * returned (the block is durable), its sequence number replaces the content of the done file
 * (default /run/virtlab-blocks.done; written to FILE.tmp, then renamed): the last acknowledged
 * block. The writer's PID goes to the pid file and, when it stops, a JSON line to the result file
 * (the done file's name with ".pid" and ".result" for ".done"): {"written": N, "last": SEQ|null,
 * "stopped": "count"|"end of device"|"signal"|"error", "error": null|TEXT, "direct": BOOL}, also
 * printed on stdout. SIGTERM or SIGINT stops it after the block it is writing. With --background
 * it opens DEVICE, starts the writer as a session leader with its standard streams on /dev/null
 * (so a guest agent's guest-exec returns at once), prints the writer's PID and exits 0.
 * Exit: 0 when stopped by count, end of device or signal; 1 on a write error or when a writer
 * runs already; 2 on a usage error; 3 when DEVICE cannot be opened.
 *
 * verify: reads the whole device from block 0 and prints one JSON line {"blocks": K, "bad": [...],
 * "bad_count": B, "gap_at": null|I, "beyond_gap": G, "device_blocks": D, "direct": BOOL}: K valid
 * blocks in a row from block 0 (valid: the magic, the right checksum, sequence == index, the
 * payload of that sequence), the indexes of bad blocks (the magic but a wrong checksum, sequence
 * or payload; the first 1000 listed, B in all), the first index without the magic (null if none),
 * and the number of valid blocks after it (0 on a healthy disk: a block past the first hole was
 * written after the hole's block, whose write was lost). Exit 0 only when there is no bad block
 * and G is 0; 1 otherwise; 2 on a usage error; 3 when DEVICE cannot be read.
 *
 * status: prints {"acked": SEQ|null, "running": BOOL, "pid": PID|null, "result": RESULT|null}.
 * stop: stops a running writer (SIGTERM; SIGKILL after 10 s), then prints the same; exit 3 when
 * no writer was ever started (no pid file).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define BLOCK 4096
#define HEADER 24
#define PAYLOAD_WORDS ((BLOCK - HEADER) / 8)
#define READ_BLOCKS 256
#define MAX_LISTED_BAD 1000
#define MAGIC "VLBLOCK1"
#define SEED 0x766c626c6f636b73ULL
#define GOLDEN 0x9e3779b97f4a7c15ULL
#define DEFAULT_DONE "/run/virtlab-blocks.done"
#define STOP_WAIT_S 10
#define PATH_SIZE 4200

static volatile sig_atomic_t stop_requested;
static uint32_t crc_table[256];

static void crc_init(void)
{
    uint32_t n, c;
    int k;

    for (n = 0; n < 256; n++) {
        c = n;
        for (k = 0; k < 8; k++)
            c = c & 1 ? 0xedb88320U ^ (c >> 1) : c >> 1;
        crc_table[n] = c;
    }
}

static uint32_t crc32_of(const unsigned char *data, size_t len)
{
    uint32_t c = 0xffffffffU;

    while (len--)
        c = crc_table[(c ^ *data++) & 0xff] ^ (c >> 8);
    return c ^ 0xffffffffU;
}

static uint64_t mix(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static void put64(unsigned char *p, uint64_t v)
{
    int i;

    for (i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static uint64_t get64(const unsigned char *p)
{
    uint64_t v = 0;
    int i;

    for (i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static void payload_of(unsigned char *payload, uint64_t seq)
{
    uint64_t s = seq ^ SEED;
    int j;

    for (j = 0; j < PAYLOAD_WORDS; j++)
        put64(payload + 8 * j, mix(s + (uint64_t)(j + 1) * GOLDEN));
}

static void fill_block(unsigned char *block, uint64_t seq)
{
    uint32_t crc;

    memcpy(block, MAGIC, 8);
    put64(block + 8, seq);
    payload_of(block + HEADER, seq);
    crc = crc32_of(block + HEADER, BLOCK - HEADER);
    memset(block + 16, 0, 8);
    block[16] = crc & 0xff;
    block[17] = (crc >> 8) & 0xff;
    block[18] = (crc >> 16) & 0xff;
    block[19] = (crc >> 24) & 0xff;
}

/* 0: no magic; 1: a valid block INDEX; -1: the magic but not block INDEX (checksum, sequence or payload). */
static int check_block(const unsigned char *block, uint64_t index, unsigned char *scratch)
{
    uint32_t crc;

    if (memcmp(block, MAGIC, 8) != 0)
        return 0;
    crc = (uint32_t)block[16] | (uint32_t)block[17] << 8 | (uint32_t)block[18] << 16 | (uint32_t)block[19] << 24;
    if (crc32_of(block + HEADER, BLOCK - HEADER) != crc || get64(block + 8) != index)
        return -1;
    payload_of(scratch, index);
    return memcmp(block + HEADER, scratch, BLOCK - HEADER) == 0 ? 1 : -1;
}

static double now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void on_signal(int signum)
{
    (void)signum;
    stop_requested = 1;
}

static int usage(const char *message)
{
    if (message)
        fprintf(stderr, "virtlab-blocks: %s\n", message);
    fprintf(stderr,
            "usage: virtlab-blocks write DEVICE [--rate MIB_PER_S] [--count N] [--background] [--done FILE]\n"
            "       virtlab-blocks verify DEVICE\n"
            "       virtlab-blocks status [--done FILE]\n"
            "       virtlab-blocks stop [--done FILE]\n");
    return 2;
}

/* The pid and result files that go with the done file: its name with .pid and .result for .done. */
static void sibling(char *out, size_t size, const char *done, const char *suffix)
{
    size_t len = strlen(done);

    if (len > 5 && strcmp(done + len - 5, ".done") == 0)
        len -= 5;
    snprintf(out, size, "%.*s%s", (int)len, done, suffix);
}

/* Replace PATH's content with TEXT: written to PATH.tmp, then renamed (readers never see half of it). */
static int write_atomic(const char *path, const char *text)
{
    char tmp[PATH_SIZE];
    size_t len = strlen(text);
    int fd, ok;

    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0)
        return -1;
    ok = write(fd, text, len) == (ssize_t)len;
    if (close(fd) != 0 || !ok || rename(tmp, path) != 0) {
        unlink(tmp);
        return -1;
    }
    return 0;
}

/* The first line of PATH (without its newline) in BUF; 0 if it cannot be read or is empty. */
static int read_line(const char *path, char *buf, size_t size)
{
    FILE *f = fopen(path, "r");
    int ok;

    if (!f)
        return 0;
    ok = fgets(buf, (int)size, f) != NULL;
    fclose(f);
    if (ok)
        buf[strcspn(buf, "\n")] = '\0';
    return ok && buf[0];
}

/* Whether PID runs (a zombie does not) and is a virtlab-blocks process. */
static int writer_alive(int pid)
{
    char path[64], buf[512], *close_paren;
    FILE *f;
    size_t n;

    if (pid <= 0)
        return 0;
    snprintf(path, sizeof(path), "/proc/%d/stat", pid);
    f = fopen(path, "r");
    if (!f)
        return 0;
    n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    close_paren = strrchr(buf, ')');
    if (!close_paren || close_paren[1] != ' ' || close_paren[2] == 'Z' || close_paren[2] == 'X')
        return 0;
    return strstr(buf, "(virtlab-blocks)") != NULL;
}

static int read_pid(const char *done)
{
    char pid_path[PATH_SIZE], line[64];

    sibling(pid_path, sizeof(pid_path), done, ".pid");
    return read_line(pid_path, line, sizeof(line)) ? atoi(line) : 0;
}

/* Open DEVICE with O_DIRECT added, or without it where the file system refuses it (tmpfs, ...). */
static int open_device(const char *device, int flags, int *direct)
{
    int fd = open(device, flags | O_DIRECT);

    *direct = fd >= 0;
    if (fd < 0 && errno == EINVAL)
        fd = open(device, flags);
    return fd;
}

static int parse_count(const char *text, unsigned long long *value)
{
    char *end;

    if (!text || *text < '0' || *text > '9')
        return -1;
    errno = 0;
    *value = strtoull(text, &end, 10);
    return errno || *end || *value == 0 ? -1 : 0;
}

static int parse_rate(const char *text, double *value)
{
    char *end;

    if (!text || ((*text < '0' || *text > '9') && *text != '.'))
        return -1;
    errno = 0;
    *value = strtod(text, &end);
    return errno || *end || !(*value >= 0) || *value > 1e6 ? -1 : 0;
}

static void pace(double interval, double *next)
{
    double wait;

    if (interval <= 0)
        return;
    *next += interval;
    wait = *next - now();
    if (wait > 0) {
        struct timespec ts = {(time_t)wait, (long)((wait - (time_t)wait) * 1e9)};

        nanosleep(&ts, NULL);
    } else {
        *next = now();
    }
}

static void detach(void)
{
    int null = open("/dev/null", O_RDWR);

    setsid();
    if (null >= 0) {
        dup2(null, STDIN_FILENO);
        dup2(null, STDOUT_FILENO);
        dup2(null, STDERR_FILENO);
        if (null > STDERR_FILENO)
            close(null);
    }
}

static int cmd_write(const char *device, double rate, unsigned long long count, int background, const char *done)
{
    char pid_path[PATH_SIZE], result_path[PATH_SIZE], text[600], error[300] = "";
    unsigned long long device_blocks, limit, seq, written = 0;
    const char *stopped = "count";
    unsigned char *block;
    double interval, next;
    struct sigaction action;
    int fd, direct, code = 0;
    off_t size;
    pid_t pid;

    sibling(pid_path, sizeof(pid_path), done, ".pid");
    sibling(result_path, sizeof(result_path), done, ".result");
    pid = read_pid(done);
    if (writer_alive(pid)) {
        fprintf(stderr, "virtlab-blocks: a writer runs already (pid %d): stop it first\n", (int)pid);
        return 1;
    }
    fd = open_device(device, O_WRONLY | O_DSYNC, &direct);
    if (fd < 0) {
        fprintf(stderr, "virtlab-blocks: cannot open %s: %s\n", device, strerror(errno));
        return 3;
    }
    size = lseek(fd, 0, SEEK_END);
    if (size < BLOCK) {
        fprintf(stderr, "virtlab-blocks: %s holds less than one block of %d bytes\n", device, BLOCK);
        return 3;
    }
    device_blocks = (unsigned long long)size / BLOCK;
    limit = count && count < device_blocks ? count : device_blocks;
    if (posix_memalign((void **)&block, BLOCK, BLOCK) != 0) {
        fprintf(stderr, "virtlab-blocks: out of memory\n");
        return 1;
    }
    unlink(done);
    unlink(result_path);
    if (background) {
        pid = fork();
        if (pid < 0) {
            fprintf(stderr, "virtlab-blocks: fork: %s\n", strerror(errno));
            return 1;
        }
        if (pid > 0) {
            snprintf(text, sizeof(text), "%d\n", (int)pid);
            if (write_atomic(pid_path, text) != 0)
                fprintf(stderr, "virtlab-blocks: cannot write %s: %s\n", pid_path, strerror(errno));
            printf("%d\n", (int)pid);
            return 0;
        }
        detach();
    } else {
        snprintf(text, sizeof(text), "%d\n", (int)getpid());
        write_atomic(pid_path, text);
    }
    memset(&action, 0, sizeof(action));
    action.sa_handler = on_signal;
    sigaction(SIGTERM, &action, NULL);
    sigaction(SIGINT, &action, NULL);
    signal(SIGHUP, SIG_IGN);

    interval = rate > 0 ? (double)BLOCK / (rate * 1048576.0) : 0;
    next = now();
    for (seq = 0; seq < limit; seq++) {
        ssize_t wrote;

        if (stop_requested) {
            stopped = "signal";
            break;
        }
        fill_block(block, seq);
        wrote = pwrite(fd, block, BLOCK, (off_t)(seq * BLOCK));
        if (wrote < 0 && errno == EINVAL && direct && seq == 0) {
            /* The file system accepted O_DIRECT at open but refuses it for writes. */
            int plain = open(device, O_WRONLY | O_DSYNC);

            if (plain >= 0) {
                close(fd);
                fd = plain;
                direct = 0;
                wrote = pwrite(fd, block, BLOCK, 0);
            }
        }
        if (wrote != BLOCK) {
            snprintf(error, sizeof(error), "writing block %llu: %s", seq, wrote < 0 ? strerror(errno) : "short write");
            stopped = "error";
            code = 1;
            break;
        }
        snprintf(text, sizeof(text), "%llu\n", seq);
        write_atomic(done, text);
        written++;
        pace(interval, &next);
    }
    if (seq == limit && !(count && count <= device_blocks))
        stopped = "end of device";
    close(fd);
    free(block);
    if (written)
        snprintf(text, sizeof(text), "{\"written\": %llu, \"last\": %llu, ", written, written - 1);
    else
        snprintf(text, sizeof(text), "{\"written\": 0, \"last\": null, ");
    snprintf(text + strlen(text), sizeof(text) - strlen(text), "\"stopped\": \"%s\", ", stopped);
    if (*error)
        snprintf(text + strlen(text), sizeof(text) - strlen(text), "\"error\": \"%s\", ", error);
    else
        snprintf(text + strlen(text), sizeof(text) - strlen(text), "\"error\": null, ");
    snprintf(text + strlen(text), sizeof(text) - strlen(text), "\"direct\": %s}\n", direct ? "true" : "false");
    write_atomic(result_path, text);
    fputs(text, stdout);
    return code;
}

static int cmd_verify(const char *device)
{
    unsigned long long index, blocks = 0, gap_at = 0, beyond = 0, bad_count = 0, total, *bad;
    unsigned char *buffer, scratch[BLOCK];
    int fd, direct, have_gap = 0, in_run = 1;
    off_t size;

    fd = open_device(device, O_RDONLY, &direct);
    if (fd < 0) {
        fprintf(stderr, "virtlab-blocks: cannot open %s: %s\n", device, strerror(errno));
        return 3;
    }
    size = lseek(fd, 0, SEEK_END);
    if (size < 0) {
        fprintf(stderr, "virtlab-blocks: cannot size %s: %s\n", device, strerror(errno));
        return 3;
    }
    total = (unsigned long long)size / BLOCK;
    bad = calloc(MAX_LISTED_BAD, sizeof(*bad));
    if (!bad || posix_memalign((void **)&buffer, BLOCK, (size_t)READ_BLOCKS * BLOCK) != 0) {
        fprintf(stderr, "virtlab-blocks: out of memory\n");
        return 3;
    }
    for (index = 0; index < total;) {
        unsigned long long want = total - index < READ_BLOCKS ? total - index : READ_BLOCKS, got, i;
        ssize_t n = pread(fd, buffer, want * BLOCK, (off_t)(index * BLOCK));

        if (n < 0 && errno == EINVAL && direct) {
            /* The file system accepted O_DIRECT at open but refuses it for reads. */
            int plain = open(device, O_RDONLY);

            if (plain >= 0) {
                close(fd);
                fd = plain;
                direct = 0;
                continue;
            }
        }
        got = n > 0 ? (unsigned long long)n / BLOCK : 0;
        if (got == 0) {
            fprintf(stderr, "virtlab-blocks: reading %s at block %llu: %s\n", device, index,
                    n < 0 ? strerror(errno) : "unexpected end");
            return 3;
        }
        for (i = 0; i < got; i++, index++) {
            int verdict = check_block(buffer + i * BLOCK, index, scratch);

            if (verdict == 0 && !have_gap) {
                have_gap = 1;
                gap_at = index;
            }
            if (verdict != 1)
                in_run = 0;
            if (verdict == 1 && in_run) {
                blocks++;
            } else if (verdict == 1 && have_gap) {
                beyond++;
            } else if (verdict < 0) {
                if (bad_count < MAX_LISTED_BAD)
                    bad[bad_count] = index;
                bad_count++;
            }
        }
    }
    close(fd);
    free(buffer);
    printf("{\"blocks\": %llu, \"bad\": [", blocks);
    for (index = 0; index < bad_count && index < MAX_LISTED_BAD; index++)
        printf("%s%llu", index ? ", " : "", bad[index]);
    printf("], \"bad_count\": %llu, ", bad_count);
    if (have_gap)
        printf("\"gap_at\": %llu, ", gap_at);
    else
        printf("\"gap_at\": null, ");
    printf("\"beyond_gap\": %llu, \"device_blocks\": %llu, \"direct\": %s}\n", beyond, total, direct ? "true" : "false");
    free(bad);
    return bad_count == 0 && beyond == 0 ? 0 : 1;
}

static void print_status(const char *done)
{
    char result_path[PATH_SIZE], acked[64], result[600];
    int pid = read_pid(done);

    sibling(result_path, sizeof(result_path), done, ".result");
    printf("{\"acked\": %s, \"running\": %s, ", read_line(done, acked, sizeof(acked)) ? acked : "null",
           writer_alive(pid) ? "true" : "false");
    if (pid > 0)
        printf("\"pid\": %d, ", pid);
    else
        printf("\"pid\": null, ");
    printf("\"result\": %s}\n", read_line(result_path, result, sizeof(result)) ? result : "null");
}

static int cmd_stop(const char *done)
{
    int pid = read_pid(done);
    double deadline;

    if (pid <= 0) {
        fprintf(stderr, "virtlab-blocks: no writer was started (no pid file next to %s)\n", done);
        return 3;
    }
    if (writer_alive(pid)) {
        kill(pid, SIGTERM);
        deadline = now() + STOP_WAIT_S;
        while (writer_alive(pid) && now() < deadline) {
            struct timespec ts = {0, 20000000L};

            nanosleep(&ts, NULL);
        }
        if (writer_alive(pid))
            kill(pid, SIGKILL);
    }
    print_status(done);
    return 0;
}

int main(int argc, char **argv)
{
    const char *command, *device = NULL, *done = DEFAULT_DONE;
    unsigned long long count = 0;
    double rate = 1.0;
    int i, background = 0, writes, verifies;

    if (argc < 2)
        return usage(NULL);
    command = argv[1];
    writes = strcmp(command, "write") == 0;
    verifies = strcmp(command, "verify") == 0;
    if (!writes && !verifies && strcmp(command, "status") != 0 && strcmp(command, "stop") != 0) {
        fprintf(stderr, "virtlab-blocks: unknown command %s\n", command);
        return usage(NULL);
    }
    crc_init();
    for (i = 2; i < argc; i++) {
        const char *arg = argv[i];

        if (writes && strcmp(arg, "--rate") == 0) {
            if (parse_rate(i + 1 < argc ? argv[++i] : NULL, &rate) != 0)
                return usage("--rate takes MiB per second, a number from 0 (no pause) to 1000000");
        } else if (writes && strcmp(arg, "--count") == 0) {
            if (parse_count(i + 1 < argc ? argv[++i] : NULL, &count) != 0)
                return usage("--count takes a whole number of blocks, at least 1");
        } else if (writes && strcmp(arg, "--background") == 0) {
            background = 1;
        } else if (!verifies && strcmp(arg, "--done") == 0) {
            if (i + 1 >= argc || !*argv[i + 1] || strlen(argv[i + 1]) > 4000)
                return usage("--done takes a file name");
            done = argv[++i];
        } else if (arg[0] == '-' && arg[1]) {
            fprintf(stderr, "virtlab-blocks: unknown option %s for %s\n", arg, command);
            return usage(NULL);
        } else if (!device && (writes || verifies)) {
            device = arg;
        } else {
            fprintf(stderr, "virtlab-blocks: unexpected argument %s\n", arg);
            return usage(NULL);
        }
    }
    if (writes || verifies) {
        if (!device)
            return usage("write and verify need a DEVICE");
        return writes ? cmd_write(device, rate, count, background, done) : cmd_verify(device);
    }
    if (strcmp(command, "stop") == 0)
        return cmd_stop(done);
    print_status(done);
    return 0;
}
