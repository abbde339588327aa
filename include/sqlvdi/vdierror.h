/*
 * vdierror.h: the result codes of the Virtual Device Interface, in the shape of the Linux
 * SQL Server VDI SDK's header of the same name (same guard, macro names and values;
 * this text is vdi's own). Every call returns NOERROR (0) or one of these, as an int.
 */
#ifndef VDIERROR_H_
#define VDIERROR_H_

/* An HRESULT-shaped code: severity in bit 31, facility in bits 16..30, code below. */
#define MAKE_HRESULT(sev, fac, code) \
    ((int)(((unsigned long)(sev) << 31) | ((unsigned long)(fac) << 16) | ((unsigned long)(code))))

/* VDI's facility is 0x77: VD_ERROR(n) is 0x80770000 | n. */
#define VD_ERROR(code) MAKE_HRESULT(1, 0x77, code)

#define VD_E_NOTOPEN       VD_ERROR(2)  /* the object is not open */
#define VD_E_TIMEOUT       VD_ERROR(3)  /* the wait timed out */
#define VD_E_ABORT         VD_ERROR(4)  /* the set is aborted: only Close is useful */
#define VD_E_SECURITY      VD_ERROR(5)  /* access to the set was refused */
#define VD_E_INVALID       VD_ERROR(6)  /* an invalid parameter */
#define VD_E_INSTANCE_NAME VD_ERROR(7)  /* unknown instance name */
#define VD_E_NOTSUPPORTED  VD_ERROR(9)  /* the requested configuration is invalid */
#define VD_E_MEMORY        VD_ERROR(10) /* out of memory */
#define VD_E_UNEXPECTED    VD_ERROR(11) /* an unexpected internal error */
#define VD_E_PROTOCOL      VD_ERROR(12) /* not allowed in this state */
#define VD_E_OPEN          VD_ERROR(13) /* all devices are open */
#define VD_E_CLOSE         VD_ERROR(14) /* the device is now closed: the normal end */
#define VD_E_BUSY          VD_ERROR(15) /* resource busy */

/* Not defined by the SDK; documented for SendCommand. These values are vdi's. */
#ifndef VD_E_QUEUE_FULL
#define VD_E_QUEUE_FULL    VD_ERROR(0x10)
#endif
#ifndef VD_E_IO_ERROR
#define VD_E_IO_ERROR      VD_ERROR(0x11)
#endif

#endif /* VDIERROR_H_ */
