// A client in the shape of Microsoft's Linux sample (vdipipesample.cpp) and, with more
// than one device, of the multi-threaded Windows sample (mthread.cpp): create the set,
// popen("sqlcmd ... -Q \"BACKUP DATABASE db TO VIRTUAL_DEVICE='set'[, VIRTUAL_DEVICE='setN']
// WITH ...\""), GetConfiguration, then per device (one thread each) GetCommand /
// CompleteCommand until VD_E_CLOSE, Close, and print what sqlcmd printed. Built with g++
// against include/sqlvdi/vdi.h and linked with -lsqlvdi. Our own text.
//
//   sqlcmd_client B|R D|L DB FILE [DEVICES] [EXTRA WITH OPTIONS]
//
// The set's name is $VDI_SET if set, else made from the pid. Device i >= 1 is named
// <set><i> (as mthread does) and its data goes to FILE.<i>. Exit 0 only when every device
// ended with VD_E_CLOSE, Close succeeded and sqlcmd exited 0.
//
// Built with one of -DBREAK_NEVER_COMPLETE, -DBREAK_COMPLETE_TWICE, -DBREAK_WRONG_BYTES,
// -DBREAK_IGNORE_CLEARERROR, -DBREAK_CLOSE_OPEN, -DBREAK_SECONDS_TIMEOUT,
// -DBREAK_LOOP_AFTER_CLOSE, -DBREAK_CLAIMS_SUCCESS, -DBREAK_DATA or -DBREAK_ACCEPT_UNKNOWN it
// is a broken client,
// one protocol rule broken each, for vdi check-client's tests.
#include "vdi.h"
#include "vdierror.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define NOERROR 0
#define ERROR_FILEMARK_DETECTED 1101L

// $VDI_MODE: tape or disk makes the client offer VDF_LikeTape or VDF_LikeDisk.
static bool tape, disk;

static ClientVirtualDeviceSet *vds;
static char setName[128];
static bool backup;
static const char *basePath;

struct Worker {
    int index;
    pthread_t thread;
    int result;
    unsigned long long bytes;
};

static void *serve(void *arg) {
    Worker *w = (Worker *)arg;
    char name[160];
    if (w->index == 0) snprintf(name, sizeof(name), "%s", setName);
    else snprintf(name, sizeof(name), "%s%d", setName, w->index);
    char path[4096];
    if (w->index == 0) snprintf(path, sizeof(path), "%s", basePath);
    else snprintf(path, sizeof(path), "%s.%d", basePath, w->index);
    ClientVirtualDevice *vd = NULL;
    int hr = vds->OpenDevice(name, &vd);
    if (hr != NOERROR) {
        printf("device %d: VDS::OpenDevice(%s) fails: x%X\n", w->index, name, hr);
        vds->SignalAbort();
        w->result = 1;
        return NULL;
    }
    FILE *fh = fopen(path, backup ? (disk ? "w+b" : "wb") : "rb");
    if (!fh) {
        printf("device %d: cannot open %s\n", w->index, path);
        vds->SignalAbort();
        w->result = 1;
        return NULL;
    }
    VDC_Command *cmd;
    int status;
    // Milliseconds, as documented (the sample's 90 is a sample bug); generous, so that a
    // loaded machine does not decide the outcome.
#ifdef BREAK_SECONDS_TIMEOUT
    const time_t timeout = 90; // "seconds", as the sample's comment says: 90 ms
#else
    const time_t timeout = 60000;
#endif
    while ((status = vd->GetCommand(timeout, &cmd)) == NOERROR) {
        int completionCode = ERROR_SUCCESS;
        unsigned long bytesTransferred = 0;
        int64_t position = 0;
        if (disk && (cmd->commandCode == VDC_Read || cmd->commandCode == VDC_Write))
            fseeko(fh, (off_t)cmd->position, SEEK_SET);
        switch (cmd->commandCode) {
        case VDC_Rewind:
            fseeko(fh, 0, SEEK_SET);
            break;
        case VDC_WriteMark:
            // A soft filemark: the end of this device's data (one set per device).
            break;
        case VDC_GetPosition:
            position = (int64_t)ftello(fh);
            break;
        case VDC_SetPosition:
            if (fseeko(fh, (off_t)cmd->position,
                       cmd->size == VDC_End ? SEEK_END : cmd->size == VDC_Current ? SEEK_CUR : SEEK_SET) != 0)
                completionCode = ERROR_NOT_SUPPORTED;
            position = (int64_t)ftello(fh);
            break;
        case VDC_Read:
            bytesTransferred = fread(cmd->buffer, 1, cmd->size, fh);
            if (bytesTransferred != (unsigned long)cmd->size)
                completionCode = tape ? ERROR_FILEMARK_DETECTED : ERROR_HANDLE_EOF;
#ifdef BREAK_DATA
            if (bytesTransferred > 100) cmd->buffer[bytesTransferred / 2] ^= 0x5a;
#endif
            break;
        case VDC_Write:
            bytesTransferred = fwrite(cmd->buffer, 1, cmd->size, fh);
            if (bytesTransferred != (unsigned long)cmd->size) completionCode = ERROR_DISK_FULL;
#ifdef BREAK_WRONG_BYTES
            bytesTransferred -= 1;
#endif
            break;
        case VDC_Flush:
            fflush(fh);
#ifdef BREAK_NEVER_COMPLETE
            continue;
#endif
            break;
        case VDC_ClearError:
#ifdef BREAK_IGNORE_CLEARERROR
            continue;
#endif
            break;
        default:
#ifdef BREAK_ACCEPT_UNKNOWN
            break; // "done", whatever it was
#endif
            completionCode = ERROR_NOT_SUPPORTED;
        }
        w->bytes += bytesTransferred;
        int rc = vd->CompleteCommand(cmd, completionCode, bytesTransferred, position);
#ifdef BREAK_COMPLETE_TWICE
        if (cmd->commandCode == VDC_Flush) vd->CompleteCommand(cmd, completionCode, bytesTransferred, 0);
#endif
        if (rc != NOERROR) {
            printf("device %d: VD::CompleteCommand fails: x%X\n", w->index, rc);
            break;
        }
#ifdef BREAK_CLOSE_OPEN
        if (cmd->commandCode == VDC_Write) {
            fclose(fh);
            return NULL; // on to Close, the device still open
        }
#endif
    }
#ifdef BREAK_LOOP_AFTER_CLOSE
    for (int i = 0; i < 20 && status == VD_E_CLOSE; i++) status = vd->GetCommand(10, &cmd);
#endif
    fclose(fh);
    if (status != VD_E_CLOSE) {
        printf("device %d: Unexpected termination: x%X\n", w->index, status);
        vds->SignalAbort();
        w->result = 1;
    } else {
        printf("device %d: ended normally (VD_E_CLOSE), %llu bytes\n", w->index, w->bytes);
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 5) {
        printf("usage: sqlcmd_client B|R D|L DB FILE [DEVICES] [EXTRA WITH OPTIONS]\n");
        return 2;
    }
    backup = argv[1][0] == 'B';
    bool log = argv[2][0] == 'L';
    const char *db = argv[3];
    basePath = argv[4];
    int devices = argc > 5 ? atoi(argv[5]) : 1;
    const char *extra = argc > 6 ? argv[6] : "";
    if (devices < 1 || devices > 64) {
        printf("DEVICES must be 1 to 64\n");
        return 2;
    }
    const char *env = getenv("VDI_SET");
    if (env && *env) snprintf(setName, sizeof(setName), "%s", env);
    else snprintf(setName, sizeof(setName), "sample-%d", (int)getpid());

    const char *mode = getenv("VDI_MODE");
    tape = mode && strcmp(mode, "tape") == 0;
    disk = mode && strcmp(mode, "disk") == 0;

    umask(0);
    vds = new ClientVirtualDeviceSet();
    VDConfig config;
    memset(&config, 0, sizeof(config));
    config.deviceCount = devices;
    if (tape) config.features = VDF_LikeTape;
    if (disk) config.features = VDF_LikeDisk;
    int hr = vds->Create(setName, &config);
    if (hr != NOERROR) {
        printf("VDS::Create fails: x%X\n", hr);
        return 1;
    }

    // The T-SQL is issued only after Create, as the sample does.
    static char sql[16384];
    int n = snprintf(sql, sizeof(sql), "sqlcmd -S . -U sa -P secret -b -Q \"%s %s %s %s VIRTUAL_DEVICE='%s'",
                     backup ? "BACKUP" : "RESTORE", log ? "LOG" : "DATABASE", db,
                     backup ? "TO" : "FROM", setName);
    for (int i = 1; i < devices; i++)
        n += snprintf(sql + n, sizeof(sql) - n, ", VIRTUAL_DEVICE='%s%d'", setName, i);
    snprintf(sql + n, sizeof(sql) - n, " WITH %s, MAXTRANSFERSIZE=1048576%s%s\" 2>&1",
             backup ? "FORMAT" : "REPLACE", *extra ? ", " : "", extra);
    FILE *sqlcmd = popen(sql, "r");
    if (!sqlcmd) {
        printf("cannot start sqlcmd\n");
        vds->Close();
        return 1;
    }

    int result = 0;
    hr = vds->GetConfiguration(10000, &config);
    if (hr != NOERROR) {
        printf("VDS::GetConfiguration fails: x%X\n", hr);
        if (hr == VD_E_TIMEOUT) printf("Timeout. Was Microsoft SQLServer running?\n");
        result = 1;
    } else {
        printf("Features returned by SQL Server: 0x%x\n", config.features);
        Worker *workers = new Worker[devices];
        for (int i = 0; i < devices; i++) {
            workers[i].index = i;
            workers[i].result = 0;
            workers[i].bytes = 0;
            pthread_create(&workers[i].thread, NULL, serve, &workers[i]);
        }
        for (int i = 0; i < devices; i++) {
            pthread_join(workers[i].thread, NULL);
            result |= workers[i].result;
        }
        delete[] workers;
    }
    hr = vds->Close();
    if (hr != NOERROR) {
        printf("VDS::Close fails: x%X\n", hr);
        result = 1;
    }

    // sqlcmd's output is read only after Close, as the sample does.
    char line[4096];
    while (fgets(line, sizeof(line), sqlcmd)) printf("sqlcmd: %s", line);
    int st = pclose(sqlcmd);
    int code = WIFEXITED(st) ? WEXITSTATUS(st) : 255;
    printf("sqlcmd exit=%d\n", code);
    if (code != 0) result = 1;
#ifdef BREAK_CLAIMS_SUCCESS
    result = 0; // whatever happened
#endif
    printf("exit=%d\n", result);
    return result;
}
