// The SDK's sizes and offsets, as a client compiled against include/sqlvdi/vdi.h sees
// them (linux-sdk.md 1.3): checked at compile time and printed for the test.
#include "vdi.h"
#include "vdierror.h"

#include <stddef.h>
#include <stdio.h>

static_assert(sizeof(VDConfig) == 44, "VDConfig");
static_assert(sizeof(VDC_Command) == 24, "VDC_Command");
static_assert(offsetof(VDC_Command, position) == 8, "VDC_Command.position");
static_assert(offsetof(VDC_Command, buffer) == 16, "VDC_Command.buffer");
static_assert(sizeof(VDS_Command) == 56, "VDS_Command");
static_assert(offsetof(VDS_Command, outPosition) == 16, "outPosition");
static_assert(offsetof(VDS_Command, buffer) == 24, "buffer");
static_assert(offsetof(VDS_Command, completionRoutine) == 32, "completionRoutine");
static_assert(offsetof(VDS_Command, completionContext) == 40, "completionContext");
static_assert(offsetof(VDS_Command, completionCode) == 48, "completionCode");
static_assert(offsetof(VDS_Command, bytesTransferred) == 52, "bytesTransferred");
static_assert(sizeof(ClientVirtualDeviceSet) == 8, "the set object");
static_assert(sizeof(ClientVirtualDevice) == 8, "the device object");
static_assert(sizeof(enum VDFeatures) == 4, "VDFeatures");
static_assert(sizeof(time_t) == 8 && sizeof(unsigned long) == 8, "LP64");
static_assert(VD_E_CLOSE == -2139684850, "VD_E_CLOSE");

int main() {
    printf("VDConfig=%zu VDC_Command=%zu VDS_Command=%zu set=%zu device=%zu\n", sizeof(VDConfig),
           sizeof(VDC_Command), sizeof(VDS_Command), sizeof(ClientVirtualDeviceSet),
           sizeof(ClientVirtualDevice));
    printf("VD_E_NOTOPEN=%d VD_E_TIMEOUT=%d VD_E_ABORT=%d VD_E_SECURITY=%d VD_E_INVALID=%d "
           "VD_E_INSTANCE_NAME=%d VD_E_NOTSUPPORTED=%d VD_E_MEMORY=%d VD_E_UNEXPECTED=%d "
           "VD_E_PROTOCOL=%d VD_E_OPEN=%d VD_E_CLOSE=%d VD_E_BUSY=%d VD_E_QUEUE_FULL=%d "
           "VD_E_IO_ERROR=%d\n",
           VD_E_NOTOPEN, VD_E_TIMEOUT, VD_E_ABORT, VD_E_SECURITY, VD_E_INVALID,
           VD_E_INSTANCE_NAME, VD_E_NOTSUPPORTED, VD_E_MEMORY, VD_E_UNEXPECTED, VD_E_PROTOCOL,
           VD_E_OPEN, VD_E_CLOSE, VD_E_BUSY, VD_E_QUEUE_FULL, VD_E_IO_ERROR);
    return 0;
}
