// A Windows VDI client in the shape of Microsoft's simple.cpp, ported to Linux by
// changing only its COM start-up lines (CoInitializeEx goes, CoCreateInstance becomes
// VdiCoCreateInstance): create the set through the COM interfaces, start the engine,
// GetConfiguration, OpenDevice, GetCommand(INFINITE) until VD_E_CLOSE, Close, Release.
// Our own text.
//
//   simple_com B|R FILE SETNAME [-- ENGINE ARGV...]
#include <vdi/vdi_com.h>

#include <errno.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>

extern char **environ;

static int perform(IClientVirtualDevice *vd, bool backup, FILE *fh) {
    VDC_Command *cmd;
    HRESULT hr;
    while (SUCCEEDED(hr = vd->GetCommand(INFINITE, &cmd))) {
        DWORD bytes = 0, code = ERROR_SUCCESS;
        switch (cmd->commandCode) {
        case VDC_Read:
            bytes = (DWORD)fread(cmd->buffer, 1, cmd->size, fh);
            if (bytes != (DWORD)cmd->size) code = ERROR_HANDLE_EOF;
            break;
        case VDC_Write:
            bytes = (DWORD)fwrite(cmd->buffer, 1, cmd->size, fh);
            if (bytes != (DWORD)cmd->size) code = ERROR_DISK_FULL;
            break;
        case VDC_Flush:
            fflush(fh);
            break;
        case VDC_ClearError:
            break;
        default:
            code = ERROR_NOT_SUPPORTED;
        }
        hr = vd->CompleteCommand(cmd, code, bytes, 0);
        if (!SUCCEEDED(hr)) {
            printf("Completion Failed: x%X\n", hr);
            return 1;
        }
    }
    if (hr != VD_E_CLOSE) {
        printf("Unexpected termination: x%X\n", hr);
        return 1;
    }
    printf("All data was transferred (%s)\n", backup ? "backup" : "restore");
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 4) return 2;
    bool backup = argv[1][0] == 'B';
    char **engine = NULL;
    if (argc > 5 && argv[4][0] == '-' && argv[4][1] == '-') engine = &argv[5];

    // The server interface answers through the same factory.
    IServerVirtualDeviceSet2 *svds = NULL;
    HRESULT hr = VdiCoCreateInstance(CLSID_MSSQL_ServerVirtualDeviceSet, NULL,
                                     CLSCTX_INPROC_SERVER, IID_IServerVirtualDeviceSet2,
                                     (void **)&svds);
    if (!SUCCEEDED(hr) || svds->Open(NULL, L"no-such-set-here") != VD_E_INVALID) {
        printf("the server interface misbehaves\n");
        return 1;
    }
    svds->Release();
    IUnknown *none = NULL;
    if (VdiCoCreateInstance(IID_IClientVirtualDevice, NULL, CLSCTX_INPROC_SERVER,
                            IID_IUnknown, (void **)&none) != REGDB_E_CLASSNOTREG) {
        printf("an unknown class was created\n");
        return 1;
    }

    IClientVirtualDeviceSet2 *vds = NULL;
    hr = VdiCoCreateInstance(CLSID_MSSQL_ClientVirtualDeviceSet, NULL, CLSCTX_INPROC_SERVER,
                             IID_IClientVirtualDeviceSet2, (void **)&vds);
    if (!SUCCEEDED(hr)) {
        printf("Could not create component: x%X\n", hr);
        printf("Check registration of SQLVDI.DLL and value of IID\n");
        return 1;
    }
    VDConfig config;
    memset(&config, 0, sizeof(config));
    config.deviceCount = 1;
    wchar_t wVdsName[128];
    swprintf(wVdsName, 128, L"%s", argv[3]);
    hr = vds->CreateEx(NULL, wVdsName, &config);
    if (!SUCCEEDED(hr)) {
        printf("VDS::Create fails: x%X\n", hr);
        vds->Release();
        return 1;
    }
    pid_t pid = 0;
    if (engine && posix_spawn(&pid, engine[0], NULL, NULL, engine, environ) != 0) {
        printf("cannot start the engine\n");
        return 1;
    }
    int rc = 1;
    hr = vds->GetConfiguration(10000, &config);
    if (!SUCCEEDED(hr)) {
        printf("VDS::Getconfig fails: x%X\n", hr);
    } else {
        IClientVirtualDevice *vd = NULL;
        hr = vds->OpenDevice(wVdsName, &vd);
        if (!SUCCEEDED(hr)) {
            printf("VDS::OpenDevice fails: x%X\n", hr);
        } else {
            FILE *fh = fopen(argv[2], backup ? "wb" : "rb");
            if (fh) {
                rc = perform(vd, backup, fh);
                fclose(fh);
            }
            vd->Release();
        }
    }
    hr = vds->Close();
    if (hr != NOERROR) rc = 1;
    vds->Release();
    if (pid > 0) {
        int st = 0;
        while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
        }
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) rc = 1;
    }
    printf("exit=%d\n", rc);
    return rc;
}
