// A client written against the Linux SDK's classes (include/sqlvdi/vdi.h), in the shape
// of Microsoft's Linux sample: umask(0), new ClientVirtualDeviceSet, a zeroed VDConfig
// with one device, Create, start the engine (the sample starts sqlcmd here),
// GetConfiguration(10000), OpenDevice with the set's name, then GetCommand/CompleteCommand
// for Read/Write/Flush/ClearError until VD_E_CLOSE, Close. Our own text.
//
//   pipe_client B|R FILE SETNAME [--stack] [--timeout T] [-- ENGINE ARGV...]
//
// --stack keeps the set in a local object instead of on the heap (as BackupX does);
// --timeout is GetCommand's time-out (the sample's is 90). Exit 0 only on VD_E_CLOSE
// and a successful engine.
#include "vdi.h"
#include "vdierror.h"

#include <errno.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>

// Neither SDK header defines these; a client defines them itself.
#define NOERROR 0
#define INFINITE 0xFFFFFFFF

extern char **environ;

static long long now_us() {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000000 + t.tv_nsec / 1000;
}

static int transfer(ClientVirtualDeviceSet *vds, char *name, bool backup, const char *path,
                    time_t timeout, char **engine, pid_t *pid) {
    VDConfig config;
    memset(&config, 0, sizeof(config));
    config.deviceCount = 1;
    int hr = vds->Create(name, &config);
    if (hr != NOERROR) {
        printf("VDS::Create fails: x%X\n", hr);
        return 1;
    }
    if (engine && engine[0] && posix_spawn(pid, engine[0], NULL, NULL, engine, environ) != 0) {
        printf("cannot start the engine\n");
        vds->Close();
        return 1;
    }
    hr = vds->GetConfiguration(10000, &config);
    if (hr != NOERROR) {
        printf("VDS::GetConfiguration fails: x%X\n", hr);
        if (hr == VD_E_TIMEOUT) printf("Timeout. Was the engine running?\n");
        vds->Close();
        return 1;
    }
    printf("Features returned by the engine: 0x%x\n", config.features);
    ClientVirtualDevice *vd = NULL;
    hr = vds->OpenDevice(name, &vd);
    if (hr != NOERROR) {
        printf("VDS::OpenDevice fails: x%X\n", hr);
        vds->Close();
        return 1;
    }
    FILE *fh = fopen(path, backup ? "wb" : "rb");
    if (!fh) {
        printf("cannot open %s\n", path);
        vds->SignalAbort();
        vds->Close();
        return 1;
    }
    VDC_Command *cmd;
    int status;
    long long last = now_us(), gap = 0;
    bool first = true;
    while ((status = vd->GetCommand(timeout, &cmd)) == NOERROR) {
        long long t = now_us();
        if (!first && t - last > gap) gap = t - last;
        first = false;
        int completionCode = ERROR_SUCCESS;
        unsigned long bytesTransferred = 0;
        switch (cmd->commandCode) {
        case VDC_Read:
            bytesTransferred = fread(cmd->buffer, 1, cmd->size, fh);
            if (bytesTransferred != (unsigned long)cmd->size) completionCode = ERROR_HANDLE_EOF;
            break;
        case VDC_Write:
            bytesTransferred = fwrite(cmd->buffer, 1, cmd->size, fh);
            if (bytesTransferred != (unsigned long)cmd->size) completionCode = ERROR_DISK_FULL;
            break;
        case VDC_Flush:
            fflush(fh);
            break;
        case VDC_ClearError:
            break;
        default:
            completionCode = ERROR_NOT_SUPPORTED;
        }
        int rc = vd->CompleteCommand(cmd, completionCode, bytesTransferred, 0);
        if (rc != NOERROR) {
            printf("VD::CompleteCommand fails: x%X\n", rc);
            break;
        }
        // As the sample does: the command is read after it was completed.
        printf("command %d done: %lu bytes, code %d\n", cmd->commandCode, bytesTransferred,
               completionCode);
        last = now_us();
    }
    if (status != VD_E_CLOSE) printf("Unexpected termination: x%X\n", status);
    else printf("The command stream ended normally (VD_E_CLOSE)\n");
    fclose(fh);
    hr = vds->Close();
    printf("close=x%X max_gap_us=%lld\n", hr, gap);
    return status == VD_E_CLOSE && hr == NOERROR ? 0 : 1;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        printf("usage: pipe_client B|R FILE SETNAME [--stack] [--timeout T] [-- ENGINE...]\n");
        return 2;
    }
    bool backup = argv[1][0] == 'B';
    bool stack = false;
    time_t timeout = 90;
    char **engine = NULL;
    for (int i = 4; i < argc; i++) {
        if (strcmp(argv[i], "--") == 0) {
            engine = &argv[i + 1];
            break;
        } else if (strcmp(argv[i], "--stack") == 0) {
            stack = true;
        } else if (strcmp(argv[i], "--timeout") == 0 && i + 1 < argc) {
            timeout = (time_t)atoll(argv[++i]);
        }
    }
    static char name[128];
    snprintf(name, sizeof(name), "%s", argv[3]);
    umask(0);
    pid_t pid = 0;
    int r;
    if (stack) {
        ClientVirtualDeviceSet storage;
        r = transfer(&storage, name, backup, argv[2], timeout, engine, &pid);
    } else {
        ClientVirtualDeviceSet *vds = new ClientVirtualDeviceSet();
        r = transfer(vds, name, backup, argv[2], timeout, engine, &pid);
        delete vds;
    }
    if (pid > 0) {
        int st = 0;
        while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
        }
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            printf("the engine failed\n");
            r = 1;
        }
    }
    printf("exit=%d\n", r);
    return r;
}
