/*
 * A backup application in two processes, in C over libvdi: the primary creates the set
 * and serves device 0; a secondary process (this program again) opens the set with
 * OpenInSecondary(Ex) and serves devices 1..N-1. Device 0's data pass between the two
 * by buffer handle: for each Read or Write the primary calls GetBufferHandle and sends
 * the handle to the secondary, which calls MapBufferHandle and stores (backup) or fills
 * (restore) the bytes through its own mapping; both hash the buffer and the primary
 * checks that they saw the same bytes before it completes the command.
 *
 *   secondary primary backup|restore SET DIR DEVICES [--ex] -- ENGINE ARGV...
 *   secondary probe SET                  (started by the primary: refusals)
 *   secondary serve backup|restore SET DIR DEVICES ex|plain   (started by the primary)
 *
 * Device i's stream is DIR/dev.i. --ex: the secondary opens with OpenInSecondaryEx (an
 * empty instance name), else with OpenInSecondary.
 * The primary prints "result=NAME handles=N secondary_commands=N failures=N" and exits 0
 * only if every device ended with VD_E_CLOSE, every code was the expected one, every hash
 * matched and the engine and the secondary succeeded.
 */
#define _POSIX_C_SOURCE 200809L
#include <vdi/vdi_c.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <spawn.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

static atomic_int failures;

#define EXPECT(expr, want)                                                                 \
    do {                                                                                   \
        int32_t got_ = (expr);                                                             \
        if (got_ != (int32_t)(want)) {                                                     \
            char m_[300];                                                                  \
            vdi_last_error(m_, sizeof m_);                                                 \
            fprintf(stderr, "%s line %d: %s gave %s, not %s (%s)\n", role, __LINE__,       \
                    #expr, vdi_error_name(got_), vdi_error_name(want), m_);                \
            atomic_fetch_add(&failures, 1);                                                \
        }                                                                                  \
    } while (0)

#define TRUE_(cond)                                                                        \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            fprintf(stderr, "%s line %d: not true: %s\n", role, __LINE__, #cond);          \
            atomic_fetch_add(&failures, 1);                                                \
        }                                                                                  \
    } while (0)

static const char *role = "secondary";
static VdiClientSet *set;
static int backup;
static const char *dir;
static const char *set_name;

static uint64_t fnv1a(const uint8_t *p, size_t n) {
    uint64_t h = 0xcbf29ce484222325u;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001b3u;
    return h;
}

static void device_name(char *out, size_t len, unsigned i) {
    if (i == 0) snprintf(out, len, "%s", set_name);
    else snprintf(out, len, "%s#%u", set_name, i);
}

static FILE *open_stream(unsigned i) {
    char path[4096];
    snprintf(path, sizeof path, "%s/dev.%u", dir, i);
    FILE *f = fopen(path, backup ? "wb" : "rb");
    if (!f) {
        fprintf(stderr, "%s: %s: %s\n", role, path, strerror(errno));
        atomic_fetch_add(&failures, 1);
    }
    return f;
}

/* Completes a command that moves no data, or refuses one it does not know. */
static int32_t complete_other(VdiClientDevice *dev, VDC_Command *cmd, FILE *f) {
    uint32_t code = ERROR_SUCCESS;
    switch (cmd->commandCode) {
    case VDC_Flush:
        if (f && fflush(f) != 0) code = ERROR_DISK_FULL;
        break;
    case VDC_ClearError:
    case VDC_Complete:
        break;
    default:
        code = ERROR_NOT_SUPPORTED;
    }
    return vdi_client_device_complete_command(dev, cmd, code, 0, 0);
}

/* ---- the secondary ---------------------------------------------------------------- */

static atomic_long secondary_commands;

/* Serves one device of the set from this process, with its own stream file. */
static void *serve_own(void *arg) {
    unsigned i = (unsigned)(uintptr_t)arg;
    char name[160];
    device_name(name, sizeof name, i);
    VdiClientDevice *dev = NULL;
    EXPECT(vdi_client_set_open_device(set, name, &dev), NOERROR);
    if (!dev) return NULL;
    FILE *f = open_stream(i);
    if (!f) {
        vdi_client_set_signal_abort(set);
        return NULL;
    }
    VDC_Command *cmd;
    int32_t rc;
    while ((rc = vdi_client_device_get_command(dev, 60000, &cmd)) == NOERROR) {
        if (cmd->commandCode == VDC_Write || cmd->commandCode == VDC_Read) {
            size_t want = (size_t)cmd->size;
            size_t n = cmd->commandCode == VDC_Write ? fwrite(cmd->buffer, 1, want, f)
                                                     : fread(cmd->buffer, 1, want, f);
            uint32_t code = ERROR_SUCCESS;
            if (n != want) code = cmd->commandCode == VDC_Write ? ERROR_DISK_FULL : ERROR_HANDLE_EOF;
            rc = vdi_client_device_complete_command(dev, cmd, code, (uint32_t)n, 0);
        } else {
            rc = complete_other(dev, cmd, f);
        }
        EXPECT(rc, NOERROR);
        if (rc != NOERROR) break;
        atomic_fetch_add(&secondary_commands, 1);
    }
    EXPECT(rc, VD_E_CLOSE);
    if (fclose(f) != 0) atomic_fetch_add(&failures, 1);
    return NULL;
}

/* Requests on stdin, one a line: "map HANDLE SIZE" (backup: store SIZE bytes of the
 * buffer behind HANDLE as device 0's stream; restore: fill up to SIZE bytes of it from
 * that stream) or "quit". Each answer on stdout: "ok HASH BYTES". */
static int secondary_main(int argc, char **argv) {
    if (argc < 7) return 2;
    backup = strcmp(argv[2], "backup") == 0;
    set_name = argv[3];
    dir = argv[4];
    unsigned devices = (unsigned)atoi(argv[5]);
    int ex = strcmp(argv[6], "ex") == 0;

    set = vdi_client_set_new();
    if (ex) EXPECT(vdi_client_set_open_in_secondary_ex(set, "", set_name), NOERROR);
    else EXPECT(vdi_client_set_open_in_secondary(set, set_name), NOERROR);
    /* Once opened, the object is taken. */
    EXPECT(vdi_client_set_open_in_secondary(set, set_name), VD_E_PROTOCOL);
    EXPECT(vdi_client_set_open_in_secondary_ex(set, NULL, set_name), VD_E_PROTOCOL);
    /* The configuration is the primary's. */
    VDConfig cfg;
    EXPECT(vdi_client_set_get_configuration(set, 0, &cfg), NOERROR);
    TRUE_(cfg.deviceCount == devices);
    TRUE_(cfg.features & (backup ? VDF_WriteMedia : VDF_ReadMedia));
    /* Handles that are not this set's. */
    uint8_t *p = (uint8_t *)&cfg;
    EXPECT(vdi_client_set_map_buffer_handle(set, 0xFFFFFFFFu, &p), VD_E_INVALID);
    EXPECT(vdi_client_set_map_buffer_handle(set, 0, NULL), VD_E_INVALID);
    EXPECT(vdi_client_set_map_buffer_handle(NULL, 0, &p), VD_E_INVALID);

    FILE *f0 = open_stream(0);
    pthread_t *threads = calloc(devices, sizeof *threads);
    for (unsigned i = 1; i < devices; i++)
        pthread_create(&threads[i], NULL, serve_own, (void *)(uintptr_t)i);
    printf("ready\n");
    fflush(stdout);

    long mapped = 0;
    char line[256];
    while (fgets(line, sizeof line, stdin)) {
        unsigned handle;
        unsigned size;
        if (strncmp(line, "quit", 4) == 0) break;
        if (sscanf(line, "map %u %u", &handle, &size) != 2) {
            fprintf(stderr, "secondary: bad request %s", line);
            atomic_fetch_add(&failures, 1);
            break;
        }
        uint8_t *buf = NULL;
        int32_t rc = vdi_client_set_map_buffer_handle(set, handle, &buf);
        EXPECT(rc, NOERROR);
        size_t n = 0;
        if (rc == NOERROR && buf && f0) {
            if (backup) {
                n = fwrite(buf, 1, size, f0);
            } else {
                n = fread(buf, 1, size, f0);
            }
        }
        printf("ok %" PRIu64 " %zu\n", buf ? fnv1a(buf, n) : 0, n);
        fflush(stdout);
        mapped++;
    }
    for (unsigned i = 1; i < devices; i++) pthread_join(threads[i], NULL);
    free(threads);
    if (f0 && fclose(f0) != 0) atomic_fetch_add(&failures, 1);
    EXPECT(vdi_client_set_close(set), NOERROR);
    EXPECT(vdi_client_set_free(set), NOERROR);
    fprintf(stderr, "secondary: mapped=%ld commands=%ld failures=%d\n", mapped,
            atomic_load(&secondary_commands), atomic_load(&failures));
    return atomic_load(&failures) == 0 ? 0 : 1;
}

/* ---- the probe: what a secondary is refused before the primary is ready ------------ */

static int probe_main(int argc, char **argv) {
    role = "probe";
    if (argc < 3) return 2;
    const char *name = argv[2];
    char none[200];
    snprintf(none, sizeof none, "%s-none", name);
    VdiClientSet *s = vdi_client_set_new();
    uint8_t *p = NULL;
    uint32_t h = 0;
    /* No set on the object yet. */
    EXPECT(vdi_client_set_map_buffer_handle(s, 0, &p), VD_E_PROTOCOL);
    EXPECT(vdi_client_set_get_buffer_handle(s, (const uint8_t *)&h, &h), VD_E_PROTOCOL);
    /* The primary has not returned from GetConfiguration. */
    EXPECT(vdi_client_set_open_in_secondary(s, name), VD_E_PROTOCOL);
    EXPECT(vdi_client_set_open_in_secondary_ex(s, NULL, name), VD_E_PROTOCOL);
    /* Named instances do not exist; no set of that name; bad arguments. */
    EXPECT(vdi_client_set_open_in_secondary_ex(s, "SQL2", name), VD_E_INSTANCE_NAME);
    EXPECT(vdi_client_set_open_in_secondary(s, none), VD_E_PROTOCOL);
    EXPECT(vdi_client_set_open_in_secondary(s, NULL), VD_E_INVALID);
    EXPECT(vdi_client_set_open_in_secondary(NULL, name), VD_E_INVALID);
    EXPECT(vdi_client_set_free(s), NOERROR);
    return atomic_load(&failures) == 0 ? 0 : 1;
}

/* ---- the primary --------------------------------------------------------------------- */

static FILE *to_secondary, *from_secondary;
static long handles_passed;

/* Device 0: every buffer goes to the secondary by handle. */
static int32_t serve_by_handle(void) {
    VdiClientDevice *dev = NULL;
    EXPECT(vdi_client_set_open_device(set, set_name, &dev), NOERROR);
    if (!dev) return VD_E_INVALID;
    VDC_Command *cmd;
    int32_t rc;
    while ((rc = vdi_client_device_get_command(dev, 60000, &cmd)) == NOERROR) {
        if (cmd->commandCode != VDC_Write && cmd->commandCode != VDC_Read) {
            rc = complete_other(dev, cmd, NULL);
            EXPECT(rc, NOERROR);
            if (rc != NOERROR) break;
            continue;
        }
        uint32_t h = 0;
        EXPECT(vdi_client_set_get_buffer_handle(set, cmd->buffer, &h), NOERROR);
        /* Only a buffer's start has a handle; here the handle maps back to the address. */
        uint32_t h2 = 0;
        EXPECT(vdi_client_set_get_buffer_handle(set, cmd->buffer + 1, &h2), VD_E_INVALID);
        EXPECT(vdi_client_set_get_buffer_handle(set, cmd->buffer, NULL), VD_E_INVALID);
        uint8_t *same = NULL;
        EXPECT(vdi_client_set_map_buffer_handle(set, h, &same), NOERROR);
        TRUE_(same == cmd->buffer);
        /* The secondary stores or fills the bytes through its own mapping. */
        uint64_t their_hash = 0;
        size_t n = 0;
        fprintf(to_secondary, "map %u %d\n", h, cmd->size);
        fflush(to_secondary);
        char line[256];
        if (!fgets(line, sizeof line, from_secondary) ||
            sscanf(line, "ok %" SCNu64 " %zu", &their_hash, &n) != 2) {
            fprintf(stderr, "primary: the secondary did not answer\n");
            atomic_fetch_add(&failures, 1);
            vdi_client_set_signal_abort(set);
            return VD_E_ABORT;
        }
        handles_passed++;
        uint64_t mine = fnv1a(cmd->buffer, n);
        if (mine != their_hash) {
            fprintf(stderr, "primary: the secondary saw other bytes (%" PRIx64 " != %" PRIx64
                            ", %zu bytes)\n", their_hash, mine, n);
            atomic_fetch_add(&failures, 1);
        }
        uint32_t code = ERROR_SUCCESS;
        if (n != (size_t)cmd->size)
            code = cmd->commandCode == VDC_Write ? ERROR_DISK_FULL : ERROR_HANDLE_EOF;
        rc = vdi_client_device_complete_command(dev, cmd, code, (uint32_t)n, 0);
        EXPECT(rc, NOERROR);
        if (rc != NOERROR) break;
    }
    EXPECT(rc, VD_E_CLOSE);
    return rc;
}

static pid_t spawn(char **argv, int in_fd, int out_fd) {
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    if (in_fd >= 0) posix_spawn_file_actions_adddup2(&fa, in_fd, 0);
    if (out_fd >= 0) posix_spawn_file_actions_adddup2(&fa, out_fd, 1);
    pid_t pid = 0;
    int e = posix_spawn(&pid, argv[0], &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (e != 0) {
        fprintf(stderr, "primary: starting %s: %s\n", argv[0], strerror(e));
        return -1;
    }
    return pid;
}

static int exited_ok(pid_t pid, const char *what) {
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    int ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
    if (!ok) fprintf(stderr, "primary: %s failed (status 0x%x)\n", what, status);
    return ok;
}

static int primary_main(int argc, char **argv, char *self) {
    role = "primary";
    if (argc < 6) return 2;
    backup = strcmp(argv[2], "backup") == 0;
    set_name = argv[3];
    dir = argv[4];
    unsigned devices = (unsigned)atoi(argv[5]);
    int ex = 0;
    char **engine = NULL;
    for (int i = 6; i < argc; i++) {
        if (strcmp(argv[i], "--") == 0) {
            engine = &argv[i + 1];
            break;
        } else if (strcmp(argv[i], "--ex") == 0) {
            ex = 1;
        }
    }
    if (!engine || !engine[0] || devices < 2) return 2;

    set = vdi_client_set_new();
    VDConfig cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.deviceCount = devices;
    EXPECT(vdi_client_set_create(set, set_name, &cfg), NOERROR);
    /* Before GetConfiguration: a secondary is refused (and another process checks). */
    char *probe[] = {self, "probe", (char *)set_name, NULL};
    pid_t pp = spawn(probe, -1, -1);
    TRUE_(pp > 0 && exited_ok(pp, "the probe"));

    pid_t engine_pid = spawn(engine, -1, -1);
    EXPECT(vdi_client_set_get_configuration(set, 30000, &cfg), NOERROR);
    TRUE_(cfg.features & (backup ? VDF_WriteMedia : VDF_ReadMedia));

    int to[2], from[2];
    if (pipe(to) != 0 || pipe(from) != 0) return 1;
    /* Only the secondary's own ends reach it (as its stdin and stdout). */
    for (int i = 0; i < 2; i++) {
        fcntl(to[i], F_SETFD, FD_CLOEXEC);
        fcntl(from[i], F_SETFD, FD_CLOEXEC);
    }
    char count[16];
    snprintf(count, sizeof count, "%u", devices);
    char *sec[] = {self,  "serve", backup ? "backup" : "restore", (char *)set_name,
                   (char *)dir, count, ex ? "ex" : "plain", NULL};
    pid_t sp = spawn(sec, to[0], from[1]);
    close(to[0]);
    close(from[1]);
    to_secondary = fdopen(to[1], "w");
    from_secondary = fdopen(from[0], "r");
    char line[64];
    int ready = sp > 0 && fgets(line, sizeof line, from_secondary) &&
                strcmp(line, "ready\n") == 0;
    TRUE_(ready);
    int32_t rc = ready ? serve_by_handle() : VD_E_ABORT;
    if (!ready) vdi_client_set_signal_abort(set);
    fprintf(to_secondary, "quit\n");
    fclose(to_secondary);
    int secondary_ok = sp > 0 && exited_ok(sp, "the secondary");
    fclose(from_secondary);
    /* The secondary has closed its side: every device of the set has ended. */
    EXPECT(vdi_client_set_close(set), NOERROR);
    EXPECT(vdi_client_set_free(set), NOERROR);
    int engine_ok = engine_pid > 0 && exited_ok(engine_pid, "the engine");
    printf("result=%s handles=%ld secondary=%s failures=%d\n", vdi_error_name(rc),
           handles_passed, secondary_ok ? "ok" : "failed", atomic_load(&failures));
    fflush(stdout);
    return (rc == VD_E_CLOSE && secondary_ok && engine_ok && atomic_load(&failures) == 0) ? 0
                                                                                         : 1;
}

int main(int argc, char **argv) {
    if (argc >= 2 && strcmp(argv[1], "primary") == 0) {
        /* The children are this program: found through /proc, as argv[0] may be relative. */
        char self[4096];
        ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
        if (n <= 0) return 1;
        self[n] = 0;
        return primary_main(argc, argv, self);
    }
    if (argc >= 2 && strcmp(argv[1], "serve") == 0) return secondary_main(argc, argv);
    if (argc >= 2 && strcmp(argv[1], "probe") == 0) return probe_main(argc, argv);
    fprintf(stderr, "usage: secondary primary|serve|probe ...\n");
    return 2;
}
