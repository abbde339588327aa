/*
 * vdi.h: the client interface of the Virtual Device Interface in the shape of the Linux
 * SQL Server VDI SDK's header of the same name: the same structures (byte for byte on
 * x86-64 Linux), enums and classes, so that code written for the SDK builds unchanged
 * against it and links with -lsqlvdi (vdi's libsqlvdi.so). This text is vdi's own.
 *
 * C++ only (the SDK's classes); C code uses <vdi/vdi_c.h> instead.
 * Time-outs (time_t) are milliseconds; a negative value or INFINITE (0xFFFFFFFF) waits
 * forever; 0 polls. Like the SDK's, this header does not define INFINITE or NOERROR:
 * code that uses them defines them itself (NOERROR is 0).
 */
#ifndef __vdi_h__
#define __vdi_h__

#pragma once

#ifdef __cplusplus
extern "C" {
#endif

#pragma pack(push, _vdi_h_)

#include <stdint.h>
#include <time.h>

#ifndef ERROR_SUCCESS
#define ERROR_SUCCESS 0L
#endif
#ifndef ERROR_ARENA_TRASHED
#define ERROR_ARENA_TRASHED 7L
#endif
#ifndef ERROR_HANDLE_EOF
#define ERROR_HANDLE_EOF 38L
#endif
#ifndef ERROR_HANDLE_DISK_FULL
#define ERROR_HANDLE_DISK_FULL 39L
#endif
#ifndef ERROR_NOT_SUPPORTED
#define ERROR_NOT_SUPPORTED 50L
#endif
#ifndef ERROR_DISK_FULL
#define ERROR_DISK_FULL 112L
#endif
#ifndef ERROR_OPERATION_ABORTED
#define ERROR_OPERATION_ABORTED 995L
#endif

#pragma pack(8)

/* The set's configuration: the client fills the first seven fields, the server the rest. */
struct VDConfig {
    uint32_t deviceCount;
    uint32_t features;
    uint32_t prefixZoneSize;
    uint32_t alignment;
    uint32_t softFileMarkBlockSize;
    uint32_t EOMWarningSize;
    uint32_t serverTimeOut;
    uint32_t blockSize;
    uint32_t maxIODepth;
    uint32_t maxTransferSize;
    uint32_t bufferAreaSize;
};

enum VDFeatures {
    VDF_Removable = 0x1,
    VDF_Rewind = 0x02,
    VDF_Position = 0x10,
    VDF_SkipBlocks = 0x20,
    VDF_ReversePosition = 0x40,
    VDF_Discard = 0x80,
    VDF_FileMarks = 0x100,
    VDF_RandomAccess = 0x200,
    VDF_SnapshotPrepare = 0x400,
    VDF_EnumFrozenFiles = 0x800,
    VDF_VSSWriter = 0x1000,
    VDF_RequestComplete = 0x2000,
    VDF_WriteMedia = 0x10000,
    VDF_ReadMedia = 0x20000,
    VDF_CompleteEnabled = 0x40000,
    VDF_LatchStats = 0x80000000,
    VDF_LikePipe = 0,
    VDF_LikeTape = VDF_FileMarks | VDF_Removable | VDF_Rewind | VDF_Position | VDF_SkipBlocks |
                   VDF_ReversePosition,
    VDF_LikeDisk = VDF_RandomAccess
};

enum VDCommands {
    VDC_Read = 1,
    VDC_Write = 2,
    VDC_ClearError = 3,
    VDC_Rewind = 4,
    VDC_WriteMark = 5,
    VDC_SkipMarks = 6,
    VDC_SkipBlocks = 7,
    VDC_Load = 8,
    VDC_GetPosition = 9,
    VDC_SetPosition = 10,
    VDC_Discard = 11,
    VDC_Flush = 12,
    VDC_Snapshot = 13,
    VDC_MountSnapshot = 14,
    VDC_PrepareToFreeze = 15,
    VDC_FileInfoBegin = 16,
    VDC_FileInfoEnd = 17,
    VDC_GetError = 18,
    VDC_Complete = 19
};

enum VDWhence { VDC_Beginning = 0, VDC_Current, VDC_End };

/* A command as the client sees it: read it, use the buffer, complete it. */
struct VDC_Command {
    int32_t commandCode;
    int32_t size;
    int64_t position;
    uint8_t *buffer;
};

/* A command as the server sends it. */
struct VDS_Command {
    int32_t commandCode;
    int32_t size;
    int64_t inPosition;
    int64_t outPosition;
    uint8_t *buffer;
    uint8_t *completionRoutine;
    uint8_t *completionContext;
    int32_t completionCode;
    int32_t bytesTransferred;
};

#ifdef __cplusplus
class CVDS;
class CVD;
class ClientVirtualDeviceSet;

/* One device of a set; objects come from ClientVirtualDeviceSet::OpenDevice. */
class ClientVirtualDevice {
public:
    ClientVirtualDevice();
    ~ClientVirtualDevice();
    int GetCommand(time_t timeOut, VDC_Command **ppCmd);
    int CompleteCommand(VDC_Command *pCmd, int completionCode, unsigned long bytesTransferred,
                        int64_t position);

private:
    CVD *cvd;
    friend class ClientVirtualDeviceSet;
};

/* A virtual device set, as the backup application creates and serves it. */
class ClientVirtualDeviceSet {
public:
    int Create(char *name, VDConfig *cfg);
    int GetConfiguration(time_t timeout, VDConfig *cfg);
    int OpenDevice(char *name, ClientVirtualDevice **ppVirtualDevice);
    int Close();
    int SignalAbort();
    int OpenInSecondary(char *setName);
    int GetBufferHandle(uint8_t *pBuffer, unsigned int *pBufferHandle);
    int MapBufferHandle(int dwBuffer, uint8_t **ppBuffer);
    void RegisterDeviceClosed();
    ClientVirtualDeviceSet();
    ~ClientVirtualDeviceSet();

private:
    CVDS *cvds;
};
#endif /* __cplusplus */

#pragma pack(pop, _vdi_h_)

#ifdef __cplusplus
}
#endif

#endif /* __vdi_h__ */
