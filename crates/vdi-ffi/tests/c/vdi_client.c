/*
 * A backup application (the VDI client role) in C, over libvdi: the shape of Microsoft's
 * Linux sample (create the set, start the engine, get the configuration, open the
 * device, serve Read/Write/Flush/ClearError until VD_E_CLOSE, close), with one thread
 * per device.
 *
 *   vdi_client backup|restore SET FILE DEVICES [options] [-- ENGINE ARGV...]
 *
 * Device i's stream is FILE (one device) or FILE.i. After Create, the engine command
 * (if any) is started, as the sample starts sqlcmd; its exit status is part of ours.
 * Options: --timeout MS (GetCommand's time-out, default INFINITE), --abort-after N (call
 * SignalAbort after N commands: tests), --stall-after N (after N commands, hold the
 * next one and wait: for a test to kill this process), --request-complete (ask for
 * VDC_Complete).
 * Prints one line "result=NAME commands=N max_gap_us=U" and exits 0 only if every device
 * ended with VD_E_CLOSE and the engine succeeded.
 */
#define _POSIX_C_SOURCE 200809L
#include <vdi/vdi_c.h>

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <spawn.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

static VdiClientSet *set;
static const char *set_name;
static const char *file_base;
static int backup;
static unsigned devices;
static int64_t timeout_ms = -1;
static long abort_after = -1;
static long stall_after = -1;
static atomic_long commands;
static atomic_int failed;
static atomic_llong max_gap_ns;

static void fail(const char *what, int32_t rc) {
    char msg[512];
    vdi_last_error(msg, sizeof msg);
    fprintf(stderr, "vdi_client: %s: %s (0x%08X): %s\n", what, vdi_error_name(rc),
            (unsigned)rc, msg);
    atomic_store(&failed, 1);
}

static int64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

struct job {
    unsigned index;
    char name[160];
    char path[4096];
    int32_t result;
};

static void *serve(void *arg) {
    struct job *j = arg;
    VdiClientDevice *dev = NULL;
    int32_t rc = vdi_client_set_open_device(set, j->name, &dev);
    if (rc != NOERROR) {
        fail("OpenDevice", rc);
        vdi_client_set_signal_abort(set);
        j->result = rc;
        return NULL;
    }
    FILE *f = fopen(j->path, backup ? "wb" : "rb");
    if (!f) {
        fprintf(stderr, "vdi_client: %s: %s\n", j->path, strerror(errno));
        atomic_store(&failed, 1);
        vdi_client_set_signal_abort(set);
        j->result = VD_E_ABORT;
        return NULL;
    }
    VDC_Command *cmd;
    int64_t last = now_ns();
    int first = 1;
    while ((rc = vdi_client_device_get_command(dev, timeout_ms, &cmd)) == NOERROR) {
        if (stall_after >= 0 && atomic_load(&commands) >= stall_after) {
            printf("stalled\n");
            fflush(stdout);
            for (;;) pause();
        }
        int64_t t = now_ns();
        long long gap = first ? 0 : (long long)(t - last);
        long long seen = atomic_load(&max_gap_ns);
        while (gap > seen && !atomic_compare_exchange_weak(&max_gap_ns, &seen, gap)) {
        }
        first = 0;
        uint32_t code = ERROR_SUCCESS;
        uint32_t bytes = 0;
        switch (cmd->commandCode) {
        case VDC_Read:
            bytes = (uint32_t)fread(cmd->buffer, 1, (size_t)cmd->size, f);
            if (bytes != (uint32_t)cmd->size) code = ERROR_HANDLE_EOF;
            break;
        case VDC_Write:
            bytes = (uint32_t)fwrite(cmd->buffer, 1, (size_t)cmd->size, f);
            if (bytes != (uint32_t)cmd->size) code = ERROR_DISK_FULL;
            break;
        case VDC_Flush:
            if (fflush(f) != 0) code = ERROR_DISK_FULL;
            break;
        case VDC_ClearError:
        case VDC_Complete:
            break;
        default:
            code = ERROR_NOT_SUPPORTED;
        }
        rc = vdi_client_device_complete_command(dev, cmd, code, bytes, 0);
        if (rc != NOERROR) {
            fail("CompleteCommand", rc);
            break;
        }
        /* The block stays readable after CompleteCommand until this device's next
           GetCommand (the Linux sample prints it here). */
        if (cmd->commandCode < VDC_Read || cmd->commandCode > VDC_Complete) {
            fprintf(stderr, "vdi_client: the completed command reads %d\n", cmd->commandCode);
            atomic_store(&failed, 1);
        }
        long n = atomic_fetch_add(&commands, 1) + 1;
        if (abort_after >= 0 && n == abort_after) vdi_client_set_signal_abort(set);
        last = now_ns();
    }
    if (rc != VD_E_CLOSE && rc != NOERROR) {
        if (rc != VD_E_ABORT || abort_after < 0) fail("GetCommand", rc);
        else atomic_store(&failed, 1);
    }
    j->result = rc;
    if (fclose(f) != 0) atomic_store(&failed, 1);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: vdi_client backup|restore SET FILE DEVICES [options] [-- ENGINE...]\n");
        return 2;
    }
    backup = strcmp(argv[1], "backup") == 0;
    set_name = argv[2];
    file_base = argv[3];
    devices = (unsigned)atoi(argv[4]);
    int request_complete = 0;
    char **engine = NULL;
    for (int i = 5; i < argc; i++) {
        if (strcmp(argv[i], "--") == 0) {
            engine = &argv[i + 1];
            break;
        } else if (strcmp(argv[i], "--timeout") == 0 && i + 1 < argc) {
            timeout_ms = atoll(argv[++i]);
        } else if (strcmp(argv[i], "--abort-after") == 0 && i + 1 < argc) {
            abort_after = atol(argv[++i]);
        } else if (strcmp(argv[i], "--stall-after") == 0 && i + 1 < argc) {
            stall_after = atol(argv[++i]);
        } else if (strcmp(argv[i], "--request-complete") == 0) {
            request_complete = 1;
        } else {
            fprintf(stderr, "vdi_client: unknown option %s\n", argv[i]);
            return 2;
        }
    }

    set = vdi_client_set_new();
    if (!set) {
        fail("vdi_client_set_new", VD_E_MEMORY);
        return 1;
    }
    VDConfig cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.deviceCount = devices;
    if (request_complete) cfg.features = VDF_RequestComplete;
    int32_t rc = vdi_client_set_create(set, set_name, &cfg);
    if (rc != NOERROR) {
        fail("Create", rc);
        return 1;
    }
    pid_t pid = 0;
    if (engine && engine[0]) {
        int e = posix_spawn(&pid, engine[0], NULL, NULL, engine, environ);
        if (e != 0) {
            fprintf(stderr, "vdi_client: starting %s: %s\n", engine[0], strerror(e));
            vdi_client_set_free(set);
            return 1;
        }
    }
    rc = vdi_client_set_get_configuration(set, 30000, &cfg);
    if (rc != NOERROR) {
        fail("GetConfiguration", rc);
    } else {
        int want = backup ? VDF_WriteMedia : VDF_ReadMedia;
        if (!(cfg.features & (uint32_t)want)) {
            fprintf(stderr, "vdi_client: the engine configured features 0x%X, not a %s\n",
                    cfg.features, backup ? "backup" : "restore");
            atomic_store(&failed, 1);
            vdi_client_set_signal_abort(set);
        } else {
            struct job *jobs = calloc(devices, sizeof *jobs);
            pthread_t *threads = calloc(devices, sizeof *threads);
            for (unsigned i = 0; i < devices; i++) {
                jobs[i].index = i;
                if (i == 0) snprintf(jobs[i].name, sizeof jobs[i].name, "%s", set_name);
                else snprintf(jobs[i].name, sizeof jobs[i].name, "%s#%u", set_name, i);
                if (devices == 1) snprintf(jobs[i].path, sizeof jobs[i].path, "%s", file_base);
                else snprintf(jobs[i].path, sizeof jobs[i].path, "%s.%u", file_base, i);
                pthread_create(&threads[i], NULL, serve, &jobs[i]);
            }
            for (unsigned i = 0; i < devices; i++) {
                pthread_join(threads[i], NULL);
                if (jobs[i].result != VD_E_CLOSE) {
                    rc = jobs[i].result;
                    atomic_store(&failed, 1);
                }
            }
            if (rc == NOERROR) rc = VD_E_CLOSE;
            free(jobs);
            free(threads);
        }
    }
    int32_t crc = vdi_client_set_close(set);
    if (crc != NOERROR && !atomic_load(&failed)) fail("Close", crc);
    int32_t frc = vdi_client_set_free(set);
    if (frc != NOERROR) fail("vdi_client_set_free", frc);
    int engine_ok = 1;
    if (pid > 0) {
        int status = 0;
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
        }
        engine_ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
        if (!engine_ok) fprintf(stderr, "vdi_client: the engine failed (status 0x%x)\n", status);
    }
    printf("result=%s commands=%ld max_gap_us=%lld\n", vdi_error_name(rc),
           atomic_load(&commands), (long long)(atomic_load(&max_gap_ns) / 1000));
    fflush(stdout);
    return (!atomic_load(&failed) && engine_ok && rc == VD_E_CLOSE) ? 0 : 1;
}
