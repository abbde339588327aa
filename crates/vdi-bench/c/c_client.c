/*
 * The C client's serving loop: what a backup application written in C does for each
 * device, over libvdi's exported entry points (vdi_client_device_get_command and
 * vdi_client_device_complete_command, resolved from libvdi.so by the bench: see
 * src/libvdi.rs). Compiled by build.rs with the system's C compiler, against the
 * checked-in header include/vdi/vdi_c.h, so the calls are typed exactly as a C caller's.
 *
 * The consumer's work (checksum every byte of a Write's buffer and compare it with what
 * the chunk's pattern implies) is the bench's own `work::checksum`, called back through
 * `check`: both clients then do the same work, and the rows differ only by the
 * interface they call.
 */
#define _POSIX_C_SOURCE 200809L
#include <vdi/vdi_c.h>

#include <time.h>

/* The two libvdi functions on the per-command path, as the bench resolved them. The
 * types come from the header's declarations, so a change there breaks this build. */
struct vdi_bench_libvdi {
    __typeof__(vdi_client_device_get_command) *get_command;
    __typeof__(vdi_client_device_complete_command) *complete_command;
};

/* What one device's loop saw. */
struct vdi_bench_served {
    uint64_t end_ns;
    uint64_t bytes;
    uint64_t commands;
    uint64_t bad;
};

/* Returns 1 if the chunk at `position` (its data, `len` bytes) is wrong, else 0. */
typedef uint32_t (*vdi_bench_check_fn)(void *ctx, uint64_t position, const uint8_t *data,
                                       uint32_t len);

int32_t vdi_bench_serve_device(const struct vdi_bench_libvdi *vdi, VdiClientDevice *dev,
                               uint64_t want, vdi_bench_check_fn check, void *ctx,
                               struct vdi_bench_served *out);

static uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

/* Serves `dev` until the server closes it: each Write's buffer is checked in place and
 * completed with all its bytes; any other command is completed at once. Returns NOERROR
 * after VD_E_CLOSE (the normal end), else the code of the call that failed (the reason
 * is in vdi_last_error on this thread). `out->end_ns` is stamped when `want` bytes have
 * arrived. */
int32_t vdi_bench_serve_device(const struct vdi_bench_libvdi *vdi, VdiClientDevice *dev,
                               uint64_t want, vdi_bench_check_fn check, void *ctx,
                               struct vdi_bench_served *out) {
    VDC_Command *cmd;
    int32_t rc;
    while ((rc = vdi->get_command(dev, -1, &cmd)) == NOERROR) {
        if (cmd->commandCode != VDC_Write) {
            rc = vdi->complete_command(dev, cmd, ERROR_SUCCESS, 0, 0);
            if (rc != NOERROR) return rc;
            continue;
        }
        uint32_t n = (uint32_t)cmd->size;
        out->bad += check(ctx, (uint64_t)cmd->position, cmd->buffer, n);
        rc = vdi->complete_command(dev, cmd, ERROR_SUCCESS, n, 0);
        if (rc != NOERROR) return rc;
        out->bytes += n;
        out->commands++;
        if (out->bytes >= want && out->end_ns == 0) out->end_ns = now_ns();
    }
    return rc == VD_E_CLOSE ? NOERROR : rc;
}

int32_t vdi_bench_serve_queued(const struct vdi_bench_libvdi *vdi, VdiClientDevice *dev,
                               uint32_t n);

/* Fetches (polling: the commands are already queued) and completes `n` commands: the
 * client's per-command cost without any wait, for benches/c_abi.rs. */
int32_t vdi_bench_serve_queued(const struct vdi_bench_libvdi *vdi, VdiClientDevice *dev,
                               uint32_t n) {
    for (uint32_t i = 0; i < n; i++) {
        VDC_Command *cmd;
        int32_t rc = vdi->get_command(dev, 0, &cmd);
        if (rc != NOERROR) return rc;
        rc = vdi->complete_command(dev, cmd, ERROR_SUCCESS, 0, 0);
        if (rc != NOERROR) return rc;
    }
    return NOERROR;
}
