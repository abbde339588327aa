/*
 * Misuse at the C boundary, each case asserting the documented code: NULL, foreign and
 * wrong-kind handles, calls in the wrong state, a VDC_Command from another device or
 * made up, a command completed twice, a buffer freed twice, calls after Close and after
 * free, a set freed without Close, a set used from several threads; plus the sizes and
 * offsets of the structures. Both roles run in this process. Built and run plain and
 * with -fsanitize=address by tests/misuse.rs; prints "failures=N".
 */
#define _POSIX_C_SOURCE 200809L
#include <vdi/vdi_c.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

_Static_assert(sizeof(VDConfig) == 44, "VDConfig");
_Static_assert(sizeof(VDC_Command) == 24, "VDC_Command");
_Static_assert(offsetof(VDC_Command, position) == 8, "position");
_Static_assert(offsetof(VDC_Command, buffer) == 16, "buffer");
_Static_assert(sizeof(VDS_Command) == 56, "VDS_Command");
_Static_assert(offsetof(VDS_Command, outPosition) == 16, "outPosition");
_Static_assert(offsetof(VDS_Command, buffer) == 24, "buffer");
_Static_assert(offsetof(VDS_Command, completionRoutine) == 32, "completionRoutine");
_Static_assert(offsetof(VDS_Command, completionContext) == 40, "completionContext");
_Static_assert(offsetof(VDS_Command, completionCode) == 48, "completionCode");
_Static_assert(offsetof(VDS_Command, bytesTransferred) == 52, "bytesTransferred");

static int failures;

#define EXPECT(expr, want)                                                                 \
    do {                                                                                   \
        int32_t got_ = (expr);                                                             \
        if (got_ != (int32_t)(want)) {                                                     \
            char m_[300];                                                                  \
            vdi_last_error(m_, sizeof m_);                                                 \
            fprintf(stderr, "line %d: %s gave %s, not %s (%s)\n", __LINE__, #expr,         \
                    vdi_error_name(got_), vdi_error_name(want), m_);                       \
            failures++;                                                                    \
        }                                                                                  \
    } while (0)

#define TRUE_(cond)                                                                        \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            fprintf(stderr, "line %d: not true: %s\n", __LINE__, #cond);                   \
            failures++;                                                                    \
        }                                                                                  \
    } while (0)

static atomic_int calls, aborted_calls;

static void routine(VDS_Command *cmd) {
    atomic_fetch_add(&calls, 1);
    if (cmd->completionCode == ERROR_OPERATION_ABORTED) atomic_fetch_add(&aborted_calls, 1);
}

static void *agent(void *set) {
    static int32_t rc;
    rc = vdi_server_set_execute_completion_agent(set);
    return &rc;
}

static VdiClientSet *shared_set;
static atomic_int thread_errors;

static void *hammer(void *arg) {
    (void)arg;
    for (int i = 0; i < 2000; i++) {
        VDConfig c;
        if (vdi_client_set_get_configuration(shared_set, 0, &c) != NOERROR ||
            c.deviceCount != 2)
            atomic_fetch_add(&thread_errors, 1);
        uint32_t h;
        if (vdi_client_set_get_buffer_handle(shared_set, (const uint8_t *)&c, &h) !=
            VD_E_INVALID)
            atomic_fetch_add(&thread_errors, 1);
    }
    return NULL;
}

/* A client set and a server set joined and configured, devices open on both sides. */
struct pair {
    VdiClientSet *c;
    VdiServerSet *s;
    VdiClientDevice *cd[2];
    VdiServerDevice *sd[2];
    pthread_t agent;
    char name[64];
};

static void join(struct pair *p, const char *tag) {
    snprintf(p->name, sizeof p->name, "misuse-%s-%d", tag, (int)getpid());
    char dev1[80];
    snprintf(dev1, sizeof dev1, "%s#1", p->name);
    VDConfig cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.deviceCount = 2;
    p->c = vdi_client_set_new();
    EXPECT(vdi_client_set_create(p->c, p->name, &cfg), NOERROR);
    p->s = vdi_server_set_new();
    EXPECT(vdi_server_set_open(p->s, NULL, p->name), NOERROR);
    EXPECT(vdi_server_set_begin_configuration(p->s, VDF_WriteMedia, 512, 0, 65536, 1000),
           NOERROR);
    EXPECT(vdi_server_set_request_buffers(p->s, 65536, 0, 4), NOERROR);
    EXPECT(vdi_server_set_end_configuration(p->s), NOERROR);
    pthread_create(&p->agent, NULL, agent, p->s);
    EXPECT(vdi_client_set_get_configuration(p->c, 5000, &cfg), NOERROR);
    TRUE_(cfg.features & VDF_WriteMedia);
    EXPECT(vdi_server_set_open_device(p->s, p->name, &p->sd[0]), NOERROR);
    EXPECT(vdi_server_set_open_device(p->s, dev1, &p->sd[1]), NOERROR);
    EXPECT(vdi_client_set_open_device(p->c, p->name, &p->cd[0]), NOERROR);
    EXPECT(vdi_client_set_open_device(p->c, dev1, &p->cd[1]), NOERROR);
}

static int32_t agent_result(struct pair *p) {
    void *r;
    pthread_join(p->agent, &r);
    return *(int32_t *)r;
}

int main(void) {
    VDConfig cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.deviceCount = 1;
    int local = 0;
    VDC_Command *cmd = NULL;

    /* NULL, foreign and wrong-kind handles. */
    EXPECT(vdi_client_set_create(NULL, "x", &cfg), VD_E_INVALID);
    EXPECT(vdi_client_set_create((VdiClientSet *)&local, "x", &cfg), VD_E_INVALID);
    EXPECT(vdi_client_device_get_command(NULL, 0, &cmd), VD_E_INVALID);
    TRUE_(cmd == NULL);
    EXPECT(vdi_client_device_complete_command(NULL, NULL, 0, 0, 0), VD_E_INVALID);
    EXPECT(vdi_server_set_close(NULL), VD_E_INVALID);
    EXPECT(vdi_server_device_close_device((VdiServerDevice *)&local), VD_E_INVALID);
    EXPECT(vdi_client_set_free(NULL), VD_E_INVALID);
    EXPECT(vdi_server_set_free((VdiServerSet *)&local), VD_E_INVALID);
    TRUE_(vdi_last_error(NULL, 0) > 0);
    VdiServerSet *wrong = vdi_server_set_new();
    EXPECT(vdi_client_set_close((VdiClientSet *)wrong), VD_E_INVALID);
    EXPECT(vdi_server_set_free(wrong), NOERROR);

    /* The DNE state, and bad arguments. */
    VdiClientSet *c = vdi_client_set_new();
    TRUE_(c != NULL);
    EXPECT(vdi_client_set_get_configuration(c, 0, &cfg), VD_E_PROTOCOL);
    EXPECT(vdi_client_set_close(c), VD_E_PROTOCOL);
    EXPECT(vdi_client_set_signal_abort(c), VD_E_PROTOCOL);
    EXPECT(vdi_client_set_create(c, NULL, &cfg), VD_E_INVALID);
    EXPECT(vdi_client_set_create(c, "x", NULL), VD_E_INVALID);
    cfg.deviceCount = 0;
    EXPECT(vdi_client_set_create(c, "misuse-zero", &cfg), VD_E_NOTSUPPORTED);
    cfg.deviceCount = 1;
    EXPECT(vdi_client_set_create_ex(c, "SQL2", "misuse-inst", &cfg), VD_E_INSTANCE_NAME);
    EXPECT(vdi_client_set_create(c, "bad/name", &cfg), VD_E_INVALID);
    EXPECT(vdi_client_set_free(c), NOERROR);
    EXPECT(vdi_client_set_free(c), VD_E_INVALID); /* freed twice */
    EXPECT(vdi_client_set_create(c, "x", &cfg), VD_E_INVALID); /* call after free */

    /* A live pair. */
    struct pair p;
    join(&p, "a");
    EXPECT(vdi_client_set_create(p.c, "again", &cfg), VD_E_PROTOCOL);
    EXPECT(vdi_server_set_open(p.s, NULL, p.name), VD_E_PROTOCOL);
    VdiClientDevice *again = (VdiClientDevice *)&local;
    EXPECT(vdi_client_set_open_device(p.c, p.name, &again), VD_E_OPEN);
    TRUE_(again == NULL);

    /* Buffers. */
    uint8_t *b1 = NULL, *b2 = NULL;
    EXPECT(vdi_server_set_allocate_buffer(p.s, &b1, 65536, 0), NOERROR);
    EXPECT(vdi_server_set_allocate_buffer(p.s, &b2, 65536, 0), NOERROR);
    EXPECT(vdi_server_set_allocate_buffer(p.s, NULL, 65536, 0), VD_E_INVALID);
    TRUE_(vdi_server_set_is_shared_buffer(p.s, b1) == 1);
    TRUE_(vdi_server_set_is_shared_buffer(p.s, (uint8_t *)&local) == 0);
    TRUE_(vdi_server_set_is_shared_buffer(NULL, b1) == 0);
    EXPECT(vdi_server_set_free_buffer(p.s, b2, 65536), NOERROR);
    EXPECT(vdi_server_set_free_buffer(p.s, b2, 65536), VD_E_INVALID); /* freed twice */
    EXPECT(vdi_server_set_free_buffer(p.s, (uint8_t *)&local, 4), VD_E_INVALID);

    /* Commands. */
    VDS_Command w;
    memset(&w, 0, sizeof w);
    w.commandCode = VDC_Write;
    w.size = 100;
    w.buffer = b1;
    EXPECT(vdi_server_device_send_command(p.sd[0], NULL), VD_E_INVALID);
    EXPECT(vdi_server_device_send_command(p.sd[0], &w), VD_E_INVALID); /* no routine */
    TRUE_(atomic_load(&calls) == 0);
    w.completionRoutine = routine;
    VDS_Command foreign_buf = w;
    foreign_buf.buffer = (uint8_t *)&local;
    EXPECT(vdi_server_device_send_command(p.sd[1], &foreign_buf), VD_E_INVALID);
    TRUE_(atomic_load(&calls) == 1 && foreign_buf.completionCode == ERROR_INVALID_PARAMETER);
    memset(b1, 7, 100);
    EXPECT(vdi_server_device_send_command(p.sd[0], &w), NOERROR);
    EXPECT(vdi_client_device_get_command(p.cd[1], 0, &cmd), VD_E_TIMEOUT); /* polls */
    EXPECT(vdi_client_device_get_command(p.cd[0], 5000, &cmd), NOERROR);
    TRUE_(cmd && cmd->commandCode == VDC_Write && cmd->size == 100 && cmd->buffer[99] == 7);
    VDC_Command made_up = *cmd;
    EXPECT(vdi_client_device_complete_command(p.cd[0], &made_up, 0, 100, 0), VD_E_INVALID);
    EXPECT(vdi_client_device_complete_command(p.cd[1], cmd, 0, 100, 0), VD_E_INVALID);
    EXPECT(vdi_client_device_complete_command(p.cd[0], cmd, 0, 100, 0), NOERROR);
    EXPECT(vdi_client_device_complete_command(p.cd[0], cmd, 0, 100, 0), VD_E_INVALID); /* twice */
    /* Still readable after completion, until this device's next GetCommand. */
    TRUE_(cmd->commandCode == VDC_Write && cmd->size == 100);

    /* The set from several threads at once. */
    shared_set = p.c;
    pthread_t t[4];
    for (int i = 0; i < 4; i++) pthread_create(&t[i], NULL, hammer, NULL);
    for (int i = 0; i < 4; i++) pthread_join(t[i], NULL);
    TRUE_(atomic_load(&thread_errors) == 0);

    /* The normal end, then calls after it. */
    EXPECT(vdi_server_device_close_device(p.sd[0]), NOERROR);
    EXPECT(vdi_server_device_close_device(p.sd[0]), VD_E_CLOSE);
    EXPECT(vdi_server_device_close_device(p.sd[1]), NOERROR);
    EXPECT(vdi_client_device_get_command(p.cd[0], 5000, &cmd), VD_E_CLOSE);
    EXPECT(vdi_client_device_get_command(p.cd[0], 5000, &cmd), VD_E_CLOSE);
    EXPECT(vdi_client_device_get_command(p.cd[1], 5000, &cmd), VD_E_CLOSE);
    EXPECT(agent_result(&p), NOERROR);
    TRUE_(atomic_load(&calls) == 2 && w.completionCode == ERROR_SUCCESS &&
          w.bytesTransferred == 100);
    EXPECT(vdi_client_set_close(p.c), NOERROR);
    EXPECT(vdi_client_set_close(p.c), VD_E_PROTOCOL);
    EXPECT(vdi_client_set_get_configuration(p.c, 0, &cfg), VD_E_PROTOCOL);
    EXPECT(vdi_client_device_get_command(p.cd[0], 0, &cmd), VD_E_PROTOCOL);
    EXPECT(vdi_server_set_close(p.s), NOERROR);
    EXPECT(vdi_server_set_close(p.s), VD_E_PROTOCOL);
    VDS_Command flush;
    memset(&flush, 0, sizeof flush);
    flush.commandCode = VDC_Flush;
    flush.completionRoutine = routine;
    EXPECT(vdi_server_device_send_command(p.sd[0], &flush), VD_E_PROTOCOL);
    TRUE_(flush.completionCode == ERROR_INVALID_HANDLE); /* the routine ran, at once */
    /* The buffer went with Close: no longer this set's. */
    EXPECT(vdi_server_device_send_command(p.sd[0], &w), VD_E_INVALID);
    EXPECT(vdi_client_set_free(p.c), NOERROR);
    EXPECT(vdi_client_device_get_command(p.cd[0], 0, &cmd), VD_E_INVALID); /* freed with it */
    EXPECT(vdi_server_set_free(p.s), NOERROR);
    EXPECT(vdi_server_set_free(p.s), VD_E_INVALID);

    /* A client set freed without Close, with a command outstanding: the set is closed
       and aborted; the server's outstanding command comes back once with 995. */
    struct pair q;
    join(&q, "b");
    atomic_store(&calls, 0);
    uint8_t *b3 = NULL;
    EXPECT(vdi_server_set_allocate_buffer(q.s, &b3, 65536, 0), NOERROR);
    VDS_Command r;
    memset(&r, 0, sizeof r);
    r.commandCode = VDC_Read;
    r.size = 65536;
    r.buffer = b3;
    r.completionRoutine = routine;
    EXPECT(vdi_server_device_send_command(q.sd[1], &r), NOERROR);
    EXPECT(vdi_client_device_get_command(q.cd[1], 5000, &cmd), NOERROR);
    EXPECT(vdi_client_set_free(q.c), VD_E_OPEN);
    EXPECT(agent_result(&q), VD_E_ABORT);
    TRUE_(atomic_load(&calls) == 1 && atomic_load(&aborted_calls) == 1);
    EXPECT(vdi_server_device_send_command(q.sd[0], &r), VD_E_ABORT);
    TRUE_(atomic_load(&calls) == 2 && r.completionCode == ERROR_OPERATION_ABORTED);
    EXPECT(vdi_server_set_free(q.s), NOERROR); /* closes: Close after an abort is NOERROR */

    printf("failures=%d\n", failures);
    return failures == 0 ? 0 : 1;
}
