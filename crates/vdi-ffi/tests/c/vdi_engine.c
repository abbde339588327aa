/*
 * An engine (the VDI server role) in C, over libvdi, with completion routines: it backs
 * FILE up through every device of the set, or restores FILE from them.
 *
 *   vdi_engine backup|restore SET FILE [--depth K] [--chunk BYTES] [--abort-after N]
 *              [--stall-after N]
 *
 * Chunk k of FILE (CHUNK bytes, the last one short) goes to device k % N, so each device
 * carries its chunks in order; K commands are outstanding on each device, and each
 * completion routine (on the completion agent's thread) sends that device's next
 * command from the same VDS_Command block. Backup: Writes, then Flush, then Complete if
 * the client asked for it, then CloseDevice. Restore: Reads of CHUNK bytes until the
 * client answers ERROR_HANDLE_EOF, then ClearError, then CloseDevice.
 * --abort-after N calls SignalAbort after N completions; --stall-after N stops sending
 * after N completions and waits (for a test to kill the client or this process).
 * QueryAvailableBuffers is asked in every state the set passes through (refused before
 * BeginConfiguration and after the end; in Configurable and Initializing every requested
 * buffer is available, once they are allocated none is).
 * Prints "result=NAME callbacks=N aborted=N twice=N bytes=N
 * query=DNE,CONNECTED,CONFIGURABLE,INITIALIZING,ACTIVE,ENDED" (codes, or counts where
 * the call is allowed) and exits 0 on success.
 */
#define _POSIX_C_SOURCE 200809L
#include <vdi/vdi_c.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

struct block {
    VDS_Command cmd; /* first: the routine's VDS_Command* is the block */
    unsigned device;
    uint64_t chunk;
    atomic_int in_flight;
};

struct device {
    VdiServerDevice *dev;
    uint64_t next; /* the next chunk number of this device to send (in steps of N) */
    unsigned live; /* blocks still carrying data commands */
    int eof;
    int done;
};

static VdiServerSet *set;
static int backup;
static int fd = -1;
static unsigned devices;
static unsigned depth = 3;
static uint32_t chunk = 256 * 1024;
static uint64_t total_chunks;
static off_t file_size;
static long abort_after = -1;
static long stall_after = -1;
static int complete_enabled;
static struct device *devs;
static struct block *blocks;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t all_done = PTHREAD_COND_INITIALIZER;
static unsigned devices_done;
static atomic_long callbacks, aborted, twice, bytes_moved;
static atomic_int failed;

static void fail(const char *what, int32_t rc) {
    char msg[512];
    vdi_last_error(msg, sizeof msg);
    fprintf(stderr, "vdi_engine: %s: %s (0x%08X): %s\n", what, vdi_error_name(rc),
            (unsigned)rc, msg);
    atomic_store(&failed, 1);
}

static void routine(VDS_Command *cmd);

/* QueryAvailableBuffers in each state the engine passes through: its code, and in the
 * states where it is allowed (Configurable, Initializing, Active) the count. */
static int32_t query_rc[6];
static uint32_t query_count[6];
enum { Q_DNE, Q_CONNECTED, Q_CONFIGURABLE, Q_INITIALIZING, Q_ACTIVE, Q_ENDED };

static void query(int state) {
    uint32_t n = 0xFFFFFFFFu;
    query_rc[state] = vdi_server_set_query_available_buffers(set, chunk, 0, &n);
    query_count[state] = n;
}

static void check_query(int state, int32_t want_rc, uint32_t want_count) {
    static const char *names[] = {"DNE", "Connected", "Configurable", "Initializing",
                                  "Active", "ended"};
    int ok = query_rc[state] == want_rc && (want_rc != NOERROR || query_count[state] == want_count);
    if (!ok) {
        fprintf(stderr, "vdi_engine: QueryAvailableBuffers while %s gave %s and %u, not %s and %u\n",
                names[state], vdi_error_name(query_rc[state]), query_count[state],
                vdi_error_name(want_rc), want_count);
        atomic_store(&failed, 1);
    }
}

/* Sends cmd (already filled); a failed send has run the routine already. */
static void send(struct block *b, int32_t code, int32_t size) {
    b->cmd.commandCode = code;
    b->cmd.size = size;
    b->cmd.inPosition = 0;
    b->cmd.completionRoutine = routine;
    b->cmd.completionContext = b;
    if (code != VDC_Read && code != VDC_Write) b->cmd.size = 0;
    atomic_store(&b->in_flight, 1);
    struct device *d = &devs[b->device];
    vdi_server_device_send_command(d->dev, &b->cmd);
}

static void device_finished(struct device *d) {
    int32_t rc = vdi_server_device_close_device(d->dev);
    if (rc != NOERROR && rc != VD_E_ABORT) fail("CloseDevice", rc);
    pthread_mutex_lock(&lock);
    d->done = 1;
    devices_done++;
    pthread_cond_broadcast(&all_done);
    pthread_mutex_unlock(&lock);
}

/* The next data command for block b, or the device's closing sequence. */
static void next(struct block *b) {
    struct device *d = &devs[b->device];
    long n = atomic_load(&callbacks);
    if (stall_after >= 0 && n >= stall_after) { /* the test kills someone now */
        static atomic_int said;
        if (!atomic_exchange(&said, 1)) {
            printf("stalled\n");
            fflush(stdout);
        }
        return;
    }
    pthread_mutex_lock(&lock);
    int more = backup ? d->next < total_chunks : !d->eof;
    uint64_t k = d->next;
    if (more) d->next += devices;
    int last_block = 0;
    if (!more) last_block = --d->live == 0;
    pthread_mutex_unlock(&lock);
    if (more) {
        b->chunk = k;
        if (backup) {
            uint64_t off = k * chunk;
            size_t len = (uint64_t)file_size - off < chunk ? (size_t)(file_size - off) : chunk;
            ssize_t r = pread(fd, b->cmd.buffer, len, (off_t)off);
            if (r != (ssize_t)len) {
                fprintf(stderr, "vdi_engine: reading the source: %s\n", strerror(errno));
                atomic_store(&failed, 1);
                vdi_server_set_signal_abort(set);
                return;
            }
            send(b, VDC_Write, (int32_t)len);
        } else {
            send(b, VDC_Read, (int32_t)chunk);
        }
    } else {
        /* Nothing more for this block: its buffer goes back while the set is Active
         * (after the normal end FreeBuffer is a protocol error, and Close releases
         * whatever is left). */
        int32_t f = vdi_server_set_free_buffer(set, b->cmd.buffer, chunk);
        if (f != NOERROR) fail("FreeBuffer", f);
        b->cmd.buffer = NULL;
        /* The last block carries the device's closing sequence. */
        if (last_block) send(b, backup ? VDC_Flush : VDC_ClearError, 0);
    }
}

static void routine(VDS_Command *cmd) {
    struct block *b = (struct block *)cmd;
    if (cmd->completionContext != b || !atomic_exchange(&b->in_flight, 0)) {
        atomic_fetch_add(&twice, 1);
        return;
    }
    long n = atomic_fetch_add(&callbacks, 1) + 1;
    struct device *d = &devs[b->device];
    if (cmd->completionCode == ERROR_OPERATION_ABORTED) {
        atomic_fetch_add(&aborted, 1);
        return;
    }
    if (abort_after >= 0 && n == abort_after) {
        vdi_server_set_signal_abort(set);
        return;
    }
    switch (cmd->commandCode) {
    case VDC_Write:
        if (cmd->completionCode != ERROR_SUCCESS || cmd->bytesTransferred != cmd->size) {
            fprintf(stderr, "vdi_engine: a Write completed with %d (%d of %d bytes)\n",
                    cmd->completionCode, cmd->bytesTransferred, cmd->size);
            atomic_store(&failed, 1);
            vdi_server_set_signal_abort(set);
            return;
        }
        atomic_fetch_add(&bytes_moved, cmd->bytesTransferred);
        next(b);
        break;
    case VDC_Read:
        if (cmd->completionCode == ERROR_SUCCESS || cmd->completionCode == ERROR_HANDLE_EOF) {
            if (cmd->bytesTransferred > 0) {
                ssize_t w = pwrite(fd, cmd->buffer, (size_t)cmd->bytesTransferred,
                                   (off_t)(b->chunk * chunk));
                if (w != cmd->bytesTransferred) {
                    fprintf(stderr, "vdi_engine: writing the target: %s\n", strerror(errno));
                    atomic_store(&failed, 1);
                    vdi_server_set_signal_abort(set);
                    return;
                }
                atomic_fetch_add(&bytes_moved, cmd->bytesTransferred);
            }
            if (cmd->completionCode == ERROR_HANDLE_EOF) {
                pthread_mutex_lock(&lock);
                d->eof = 1;
                pthread_mutex_unlock(&lock);
            }
            next(b);
        } else if (cmd->completionCode == ERROR_IO_DEVICE) {
            /* A Read queued (or sent) behind the end of the data: expected after EOF. The
               device is in IO-ERROR until ClearError: send no more Reads. */
            pthread_mutex_lock(&lock);
            d->eof = 1;
            pthread_mutex_unlock(&lock);
            next(b);
        } else {
            fprintf(stderr, "vdi_engine: a Read completed with %d\n", cmd->completionCode);
            atomic_store(&failed, 1);
            vdi_server_set_signal_abort(set);
        }
        break;
    case VDC_Flush:
        if (cmd->completionCode != ERROR_SUCCESS) {
            atomic_store(&failed, 1);
            vdi_server_set_signal_abort(set);
        } else if (complete_enabled) {
            send(b, VDC_Complete, 0);
        } else {
            device_finished(d);
        }
        break;
    case VDC_Complete:
    case VDC_ClearError:
        if (cmd->completionCode != ERROR_SUCCESS) {
            atomic_store(&failed, 1);
            vdi_server_set_signal_abort(set);
        } else {
            device_finished(d);
        }
        break;
    default:
        atomic_store(&failed, 1);
    }
}

static void *agent(void *arg) {
    int32_t *rc = arg;
    *rc = vdi_server_set_execute_completion_agent(set);
    /* After an abort nothing more will finish: wake the main thread. */
    pthread_mutex_lock(&lock);
    devices_done = devices;
    pthread_cond_broadcast(&all_done);
    pthread_mutex_unlock(&lock);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: vdi_engine backup|restore SET FILE [options]\n");
        return 2;
    }
    backup = strcmp(argv[1], "backup") == 0;
    const char *name = argv[2];
    for (int i = 4; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--depth") == 0) depth = (unsigned)atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--chunk") == 0) chunk = (uint32_t)atol(argv[i + 1]);
        else if (strcmp(argv[i], "--abort-after") == 0) abort_after = atol(argv[i + 1]);
        else if (strcmp(argv[i], "--stall-after") == 0) stall_after = atol(argv[i + 1]);
        else {
            fprintf(stderr, "vdi_engine: unknown option %s\n", argv[i]);
            return 2;
        }
    }
    fd = backup ? open(argv[3], O_RDONLY) : open(argv[3], O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) {
        fprintf(stderr, "vdi_engine: %s: %s\n", argv[3], strerror(errno));
        return 1;
    }
    struct stat st;
    fstat(fd, &st);
    file_size = st.st_size;
    total_chunks = ((uint64_t)file_size + chunk - 1) / chunk;

    set = vdi_server_set_new();
    query(Q_DNE);
    int32_t rc = VD_E_INVALID;
    /* The client creates the set first; give it a few seconds to appear. */
    for (int tries = 0; tries < 100; tries++) {
        rc = vdi_server_set_open(set, NULL, name);
        if (rc != VD_E_INVALID) break;
        struct timespec pause = {0, 50 * 1000 * 1000};
        nanosleep(&pause, NULL);
    }
    if (rc != NOERROR) {
        fail("Open", rc);
        vdi_server_set_free(set);
        return 1;
    }
    query(Q_CONNECTED);
    VDConfig cfg;
    rc = vdi_server_set_get_configuration(set, &cfg);
    if (rc != NOERROR) {
        fail("GetConfiguration", rc);
        return 1;
    }
    devices = cfg.deviceCount;
    complete_enabled = backup && (cfg.features & VDF_RequestComplete);
    uint32_t features = backup ? VDF_WriteMedia : VDF_ReadMedia;
    if (complete_enabled) features |= VDF_CompleteEnabled;
    uint32_t max_transfer = (chunk + 65535) / 65536 * 65536;
    rc = vdi_server_set_begin_configuration(set, features, 512, 0, max_transfer, 10000);
    if (rc == NOERROR) rc = vdi_server_set_request_buffers(set, chunk, 0, devices * depth);
    if (rc == NOERROR) {
        query(Q_CONFIGURABLE);
        /* Bad arguments: no count to write, a zero size. */
        uint32_t n;
        if (vdi_server_set_query_available_buffers(set, chunk, 0, NULL) != VD_E_INVALID ||
            vdi_server_set_query_available_buffers(set, 0, 0, &n) != VD_E_INVALID) {
            fprintf(stderr, "vdi_engine: QueryAvailableBuffers took a bad argument\n");
            atomic_store(&failed, 1);
        }
    }
    if (rc == NOERROR) rc = vdi_server_set_end_configuration(set);
    if (rc == NOERROR) query(Q_INITIALIZING);
    if (rc != NOERROR) {
        fail("configuration", rc);
        vdi_server_set_free(set);
        return 1;
    }
    int32_t agent_rc = NOERROR;
    pthread_t agent_thread;
    pthread_create(&agent_thread, NULL, agent, &agent_rc);
    devs = calloc(devices, sizeof *devs);
    blocks = calloc((size_t)devices * depth, sizeof *blocks);
    for (unsigned i = 0; i < devices && rc == NOERROR; i++) {
        char dname[160];
        if (i == 0) snprintf(dname, sizeof dname, "%s", name);
        else snprintf(dname, sizeof dname, "%s#%u", name, i);
        rc = vdi_server_set_open_device(set, dname, &devs[i].dev);
        if (rc != NOERROR) fail("OpenDevice", rc);
        devs[i].next = i;
        devs[i].live = depth;
    }
    for (unsigned i = 0; i < devices * depth && rc == NOERROR; i++) {
        blocks[i].device = i % devices;
        rc = vdi_server_set_allocate_buffer(set, &blocks[i].cmd.buffer, chunk, 0);
        if (rc != NOERROR) fail("AllocateBuffer", rc);
        else if (!vdi_server_set_is_shared_buffer(set, blocks[i].cmd.buffer)) {
            fprintf(stderr, "vdi_engine: IsSharedBuffer denies a buffer it allocated\n");
            atomic_store(&failed, 1);
        }
    }
    if (rc != NOERROR) vdi_server_set_signal_abort(set);
    else {
        query(Q_ACTIVE); /* every requested buffer allocated: none left */
        for (unsigned i = 0; i < devices * depth; i++) next(&blocks[i]);
    }
    pthread_mutex_lock(&lock);
    while (devices_done < devices) pthread_cond_wait(&all_done, &lock);
    pthread_mutex_unlock(&lock);
    pthread_join(agent_thread, NULL);
    query(Q_ENDED); /* Normally or Abnormally Terminated: refused either way */
    uint32_t requested = devices * depth;
    check_query(Q_DNE, VD_E_PROTOCOL, 0);
    check_query(Q_CONNECTED, VD_E_PROTOCOL, 0);
    check_query(Q_CONFIGURABLE, NOERROR, requested);
    check_query(Q_INITIALIZING, NOERROR, requested);
    if (rc == NOERROR) check_query(Q_ACTIVE, NOERROR, 0);
    check_query(Q_ENDED, VD_E_PROTOCOL, 0);
    /* Buffers still held here belong to an aborted run: FreeBuffer answers VD_E_ABORT
     * (the state table's Abnormally Terminated cell) and Close releases them. */
    for (unsigned i = 0; i < devices * depth; i++)
        if (blocks[i].cmd.buffer) {
            int32_t f = vdi_server_set_free_buffer(set, blocks[i].cmd.buffer, chunk);
            if (f != VD_E_ABORT) fail("FreeBuffer after an abort", f);
        }
    int32_t crc = vdi_server_set_close(set);
    if (crc != NOERROR && agent_rc == NOERROR) fail("Close", crc);
    uint32_t after_close = 0;
    if (vdi_server_set_query_available_buffers(set, chunk, 0, &after_close) != VD_E_PROTOCOL) {
        fprintf(stderr, "vdi_engine: QueryAvailableBuffers after Close was not VD_E_PROTOCOL\n");
        atomic_store(&failed, 1);
    }
    int32_t frc = vdi_server_set_free(set);
    if (frc != NOERROR) fail("vdi_server_set_free", frc);
    if (fsync(fd) != 0 || close(fd) != 0) atomic_store(&failed, 1);
    long in_flight = 0;
    for (unsigned i = 0; i < devices * depth; i++) in_flight += atomic_load(&blocks[i].in_flight);
    printf("result=%s callbacks=%ld aborted=%ld twice=%ld in_flight=%ld bytes=%ld "
           "query=%s,%s,%u,%u,%u,%s\n",
           vdi_error_name(agent_rc), atomic_load(&callbacks), atomic_load(&aborted),
           atomic_load(&twice), in_flight, atomic_load(&bytes_moved),
           vdi_error_name(query_rc[Q_DNE]), vdi_error_name(query_rc[Q_CONNECTED]),
           query_count[Q_CONFIGURABLE], query_count[Q_INITIALIZING], query_count[Q_ACTIVE],
           vdi_error_name(query_rc[Q_ENDED]));
    fflush(stdout);
    free(devs);
    free(blocks);
    return (agent_rc == NOERROR && !atomic_load(&failed) && atomic_load(&twice) == 0) ? 0 : 1;
}
