/*
 * vdi_com.h: the Windows VDI interfaces (IClientVirtualDeviceSet2, IClientVirtualDevice,
 * IServerVirtualDeviceSet2, IServerVirtualDevice) as C++ abstract classes in the Windows
 * slot order (QueryInterface, AddRef, Release first), with wchar_t names, the documented
 * CLSIDs and IIDs, and VdiCoCreateInstance, shaped like CoCreateInstance. Code ported
 * from Windows changes only its COM start-up lines:
 *
 *     IClientVirtualDeviceSet2 *vds;
 *     HRESULT hr = VdiCoCreateInstance(CLSID_MSSQL_ClientVirtualDeviceSet, NULL,
 *                                      CLSCTX_INPROC_SERVER, IID_IClientVirtualDeviceSet2,
 *                                      (void **)&vds);
 *
 * Header-only, over <vdi/vdi_c.h>: link with -lvdi. Names are converted from wchar_t to
 * UTF-8 (an invalid one is VD_E_INVALID). Time-outs are DWORD milliseconds, INFINITE
 * waits forever. A device interface belongs to its set: Release it before the set's last
 * Release; after that its calls return VD_E_INVALID. IsSharedBuffer returns TRUE (1) or
 * FALSE (0), as documented. This text is vdi's own (C++11).
 */
#ifndef VDI_VDI_COM_H
#define VDI_VDI_COM_H

#ifndef __cplusplus
#error "vdi_com.h is C++; C code uses vdi_c.h"
#endif

#include <vdi/vdi_c.h>

#include <atomic>
#include <new>
#include <string.h>
#include <string>
#include <wchar.h>

typedef int32_t HRESULT;
typedef uint32_t DWORD;
typedef uint64_t DWORDLONG;
typedef uint8_t BYTE;
typedef uint32_t ULONG;
typedef int BOOL;
typedef const wchar_t *LPCWSTR;
#ifndef STDMETHODCALLTYPE
#define STDMETHODCALLTYPE
#endif
#ifndef TRUE
#define TRUE 1
#endif
#ifndef FALSE
#define FALSE 0
#endif

struct GUID {
    uint32_t Data1;
    uint16_t Data2;
    uint16_t Data3;
    uint8_t Data4[8];
};
typedef GUID IID;
typedef GUID CLSID;
typedef const GUID &REFIID;
typedef const GUID &REFCLSID;

inline bool IsEqualGUID(REFIID a, REFIID b) { return memcmp(&a, &b, sizeof(GUID)) == 0; }

#ifndef E_NOINTERFACE
#define E_NOINTERFACE ((HRESULT)0x80004002)
#endif
#ifndef E_POINTER
#define E_POINTER ((HRESULT)0x80004003)
#endif
#ifndef E_OUTOFMEMORY
#define E_OUTOFMEMORY ((HRESULT)0x8007000E)
#endif
#ifndef CLASS_E_NOAGGREGATION
#define CLASS_E_NOAGGREGATION ((HRESULT)0x80040110)
#endif
#ifndef REGDB_E_CLASSNOTREG
#define REGDB_E_CLASSNOTREG ((HRESULT)0x80040154)
#endif
#ifndef CLSCTX_INPROC_SERVER
#define CLSCTX_INPROC_SERVER 0x1
#endif

/* The documented identities (vdiguid.h). */
static const IID IID_IUnknown = {0x00000000, 0x0000, 0x0000, {0xC0, 0, 0, 0, 0, 0, 0, 0x46}};
static const IID IID_IClientVirtualDevice = {
    0x40700424, 0x0080, 0x11d2, {0x85, 0x1f, 0x00, 0xc0, 0x4f, 0xc2, 0x17, 0x59}};
static const IID IID_IClientVirtualDeviceSet = {
    0x40700425, 0x0080, 0x11d2, {0x85, 0x1f, 0x00, 0xc0, 0x4f, 0xc2, 0x17, 0x59}};
static const IID IID_IClientVirtualDeviceSet2 = {
    0xd0e6eb07, 0x7a62, 0x11d2, {0x85, 0x73, 0x00, 0xc0, 0x4f, 0xc2, 0x17, 0x59}};
static const IID IID_IServerVirtualDevice = {
    0xb5e7a131, 0xa7bd, 0x11d1, {0x84, 0xc2, 0x00, 0xc0, 0x4f, 0xc2, 0x17, 0x59}};
static const IID IID_IServerVirtualDeviceSet = {
    0xb5e7a132, 0xa7bd, 0x11d1, {0x84, 0xc2, 0x00, 0xc0, 0x4f, 0xc2, 0x17, 0x59}};
static const IID IID_IServerVirtualDeviceSet2 = {
    0xAECBD0D6, 0x24C6, 0x11d3, {0x85, 0xB7, 0x00, 0xC0, 0x4F, 0xC2, 0x17, 0x59}};
#define CLSID_MSSQL_ClientVirtualDeviceSet IID_IClientVirtualDeviceSet
#define CLSID_MSSQL_ServerVirtualDeviceSet IID_IServerVirtualDeviceSet

class IUnknown {
public:
    virtual HRESULT STDMETHODCALLTYPE QueryInterface(REFIID riid, void **ppv) = 0;
    virtual ULONG STDMETHODCALLTYPE AddRef() = 0;
    virtual ULONG STDMETHODCALLTYPE Release() = 0;
protected:
    virtual ~IUnknown() {}
};

class IClientVirtualDevice : public IUnknown {
public:
    virtual HRESULT STDMETHODCALLTYPE GetCommand(DWORD dwTimeOut, VDC_Command **ppCmd) = 0;
    virtual HRESULT STDMETHODCALLTYPE CompleteCommand(VDC_Command *pCmd, DWORD dwCompletionCode,
                                                      DWORD dwBytesTransferred,
                                                      DWORDLONG dwlPosition) = 0;
};

class IClientVirtualDeviceSet : public IUnknown {
public:
    virtual HRESULT STDMETHODCALLTYPE Create(LPCWSTR lpName, VDConfig *pCfg) = 0;
    virtual HRESULT STDMETHODCALLTYPE GetConfiguration(DWORD dwTimeOut, VDConfig *pCfg) = 0;
    virtual HRESULT STDMETHODCALLTYPE OpenDevice(LPCWSTR lpName,
                                                 IClientVirtualDevice **ppVirtualDevice) = 0;
    virtual HRESULT STDMETHODCALLTYPE Close() = 0;
    virtual HRESULT STDMETHODCALLTYPE SignalAbort() = 0;
    virtual HRESULT STDMETHODCALLTYPE OpenInSecondary(LPCWSTR lpSetName) = 0;
    virtual HRESULT STDMETHODCALLTYPE GetBufferHandle(BYTE *pBuffer, DWORD *pBufferHandle) = 0;
    virtual HRESULT STDMETHODCALLTYPE MapBufferHandle(DWORD dwBuffer, BYTE **ppBuffer) = 0;
};

class IClientVirtualDeviceSet2 : public IClientVirtualDeviceSet {
public:
    virtual HRESULT STDMETHODCALLTYPE CreateEx(LPCWSTR lpInstanceName, LPCWSTR lpName,
                                               VDConfig *pCfg) = 0;
    virtual HRESULT STDMETHODCALLTYPE OpenInSecondaryEx(LPCWSTR lpInstanceName,
                                                        LPCWSTR lpSetName) = 0;
};

class IServerVirtualDevice : public IUnknown {
public:
    virtual HRESULT STDMETHODCALLTYPE SendCommand(VDS_Command *pCmd) = 0;
    virtual HRESULT STDMETHODCALLTYPE CloseDevice() = 0;
};

class IServerVirtualDeviceSet2 : public IUnknown {
public:
    virtual HRESULT STDMETHODCALLTYPE Open(LPCWSTR lpInstanceName, LPCWSTR lpSetName) = 0;
    virtual HRESULT STDMETHODCALLTYPE GetConfiguration(VDConfig *pCfg) = 0;
    virtual HRESULT STDMETHODCALLTYPE BeginConfiguration(DWORD dwFeatures, DWORD dwBlockSize,
                                                         DWORD dwAlignment,
                                                         DWORD dwMaxTransferSize,
                                                         DWORD dwTimeout) = 0;
    virtual HRESULT STDMETHODCALLTYPE EndConfiguration() = 0;
    virtual HRESULT STDMETHODCALLTYPE RequestBuffers(DWORD dwSize, DWORD dwAlignment,
                                                     DWORD dwCount) = 0;
    virtual HRESULT STDMETHODCALLTYPE QueryAvailableBuffers(DWORD dwSize, DWORD dwAlignment,
                                                            DWORD *pCount) = 0;
    virtual HRESULT STDMETHODCALLTYPE ExecuteCompletionAgent() = 0;
    virtual HRESULT STDMETHODCALLTYPE OpenDevice(LPCWSTR lpName,
                                                 IServerVirtualDevice **ppVirtualDevice) = 0;
    virtual HRESULT STDMETHODCALLTYPE AllocateBuffer(BYTE **ppBuffer, DWORD dwSize,
                                                     DWORD dwAlignment) = 0;
    virtual HRESULT STDMETHODCALLTYPE FreeBuffer(BYTE *pBuffer, DWORD dwSize) = 0;
    virtual HRESULT STDMETHODCALLTYPE IsSharedBuffer(BYTE *pBuffer) = 0;
    virtual HRESULT STDMETHODCALLTYPE SignalAbort() = 0;
    virtual HRESULT STDMETHODCALLTYPE Close() = 0;
};

namespace vdi_com {

/* UTF-8 from a wide name; false if it is not valid Unicode. NULL gives an empty optional. */
inline bool utf8(LPCWSTR w, std::string &out) {
    out.clear();
    for (; *w; ++w) {
        uint32_t c = (uint32_t)*w;
        if (c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF)) return false;
        if (c < 0x80) {
            out += (char)c;
        } else if (c < 0x800) {
            out += (char)(0xC0 | (c >> 6));
            out += (char)(0x80 | (c & 0x3F));
        } else if (c < 0x10000) {
            out += (char)(0xE0 | (c >> 12));
            out += (char)(0x80 | ((c >> 6) & 0x3F));
            out += (char)(0x80 | (c & 0x3F));
        } else {
            out += (char)(0xF0 | (c >> 18));
            out += (char)(0x80 | ((c >> 12) & 0x3F));
            out += (char)(0x80 | ((c >> 6) & 0x3F));
            out += (char)(0x80 | (c & 0x3F));
        }
    }
    return true;
}

/* Calls f(const char*) with the UTF-8 name (NULL for a NULL name). */
template <class F> inline HRESULT with_name(LPCWSTR w, F f) {
    if (!w) return f((const char *)0);
    std::string s;
    if (!utf8(w, s)) return VD_E_INVALID;
    return f(s.c_str());
}

template <class I> class Unknown : public I {
public:
    ULONG STDMETHODCALLTYPE AddRef() { return ++refs; }
    ULONG STDMETHODCALLTYPE Release() {
        ULONG n = --refs;
        if (n == 0) delete this;
        return n;
    }
protected:
    std::atomic<ULONG> refs{1};
    HRESULT answer(REFIID riid, void **ppv, const IID &a, const IID &b) {
        if (!ppv) return E_POINTER;
        *ppv = 0;
        if (IsEqualGUID(riid, IID_IUnknown) || IsEqualGUID(riid, a) || IsEqualGUID(riid, b)) {
            AddRef();
            *ppv = this;
            return 0;
        }
        return E_NOINTERFACE;
    }
};

class ClientDevice : public Unknown<IClientVirtualDevice> {
public:
    explicit ClientDevice(VdiClientDevice *d) : dev(d) {}
    HRESULT STDMETHODCALLTYPE QueryInterface(REFIID riid, void **ppv) {
        return answer(riid, ppv, IID_IClientVirtualDevice, IID_IClientVirtualDevice);
    }
    HRESULT STDMETHODCALLTYPE GetCommand(DWORD t, VDC_Command **pp) {
        return vdi_client_device_get_command(dev, (int64_t)t, pp);
    }
    HRESULT STDMETHODCALLTYPE CompleteCommand(VDC_Command *c, DWORD code, DWORD bytes,
                                              DWORDLONG pos) {
        return vdi_client_device_complete_command(dev, c, code, bytes, pos);
    }
private:
    VdiClientDevice *dev;
};

class ClientSet : public Unknown<IClientVirtualDeviceSet2> {
public:
    ClientSet() : set(vdi_client_set_new()) {}
    ~ClientSet() { vdi_client_set_free(set); }
    bool ok() const { return set != 0; }
    HRESULT STDMETHODCALLTYPE QueryInterface(REFIID riid, void **ppv) {
        return answer(riid, ppv, IID_IClientVirtualDeviceSet, IID_IClientVirtualDeviceSet2);
    }
    HRESULT STDMETHODCALLTYPE Create(LPCWSTR name, VDConfig *cfg) { return CreateEx(0, name, cfg); }
    HRESULT STDMETHODCALLTYPE CreateEx(LPCWSTR inst, LPCWSTR name, VDConfig *cfg) {
        std::string i;
        if (inst && !utf8(inst, i)) return VD_E_INVALID;
        return with_name(name, [&](const char *n) {
            return vdi_client_set_create_ex(set, inst ? i.c_str() : 0, n, cfg);
        });
    }
    HRESULT STDMETHODCALLTYPE GetConfiguration(DWORD t, VDConfig *cfg) {
        return vdi_client_set_get_configuration(set, (int64_t)t, cfg);
    }
    HRESULT STDMETHODCALLTYPE OpenDevice(LPCWSTR name, IClientVirtualDevice **pp) {
        if (!pp) return VD_E_INVALID;
        *pp = 0;
        return with_name(name, [&](const char *n) {
            VdiClientDevice *d = 0;
            HRESULT hr = vdi_client_set_open_device(set, n, &d);
            if (hr == 0) {
                *pp = new (std::nothrow) ClientDevice(d);
                if (!*pp) hr = E_OUTOFMEMORY;
            }
            return hr;
        });
    }
    HRESULT STDMETHODCALLTYPE Close() { return vdi_client_set_close(set); }
    HRESULT STDMETHODCALLTYPE SignalAbort() { return vdi_client_set_signal_abort(set); }
    HRESULT STDMETHODCALLTYPE OpenInSecondary(LPCWSTR name) { return OpenInSecondaryEx(0, name); }
    HRESULT STDMETHODCALLTYPE OpenInSecondaryEx(LPCWSTR inst, LPCWSTR name) {
        std::string i;
        if (inst && !utf8(inst, i)) return VD_E_INVALID;
        return with_name(name, [&](const char *n) {
            return vdi_client_set_open_in_secondary_ex(set, inst ? i.c_str() : 0, n);
        });
    }
    HRESULT STDMETHODCALLTYPE GetBufferHandle(BYTE *p, DWORD *h) {
        return vdi_client_set_get_buffer_handle(set, p, h);
    }
    HRESULT STDMETHODCALLTYPE MapBufferHandle(DWORD h, BYTE **pp) {
        return vdi_client_set_map_buffer_handle(set, h, pp);
    }
private:
    VdiClientSet *set;
};

class ServerDevice : public Unknown<IServerVirtualDevice> {
public:
    explicit ServerDevice(VdiServerDevice *d) : dev(d) {}
    HRESULT STDMETHODCALLTYPE QueryInterface(REFIID riid, void **ppv) {
        return answer(riid, ppv, IID_IServerVirtualDevice, IID_IServerVirtualDevice);
    }
    HRESULT STDMETHODCALLTYPE SendCommand(VDS_Command *c) {
        return vdi_server_device_send_command(dev, c);
    }
    HRESULT STDMETHODCALLTYPE CloseDevice() { return vdi_server_device_close_device(dev); }
private:
    VdiServerDevice *dev;
};

class ServerSet : public Unknown<IServerVirtualDeviceSet2> {
public:
    ServerSet() : set(vdi_server_set_new()) {}
    ~ServerSet() { vdi_server_set_free(set); }
    bool ok() const { return set != 0; }
    HRESULT STDMETHODCALLTYPE QueryInterface(REFIID riid, void **ppv) {
        return answer(riid, ppv, IID_IServerVirtualDeviceSet2, IID_IServerVirtualDeviceSet2);
    }
    HRESULT STDMETHODCALLTYPE Open(LPCWSTR inst, LPCWSTR name) {
        std::string i;
        if (inst && !utf8(inst, i)) return VD_E_INVALID;
        return with_name(name, [&](const char *n) {
            return vdi_server_set_open(set, inst ? i.c_str() : 0, n);
        });
    }
    HRESULT STDMETHODCALLTYPE GetConfiguration(VDConfig *cfg) {
        return vdi_server_set_get_configuration(set, cfg);
    }
    HRESULT STDMETHODCALLTYPE BeginConfiguration(DWORD f, DWORD b, DWORD a, DWORD m, DWORD t) {
        return vdi_server_set_begin_configuration(set, f, b, a, m, t);
    }
    HRESULT STDMETHODCALLTYPE EndConfiguration() { return vdi_server_set_end_configuration(set); }
    HRESULT STDMETHODCALLTYPE RequestBuffers(DWORD s, DWORD a, DWORD n) {
        return vdi_server_set_request_buffers(set, s, a, n);
    }
    HRESULT STDMETHODCALLTYPE QueryAvailableBuffers(DWORD s, DWORD a, DWORD *n) {
        return vdi_server_set_query_available_buffers(set, s, a, n);
    }
    HRESULT STDMETHODCALLTYPE ExecuteCompletionAgent() {
        return vdi_server_set_execute_completion_agent(set);
    }
    HRESULT STDMETHODCALLTYPE OpenDevice(LPCWSTR name, IServerVirtualDevice **pp) {
        if (!pp) return VD_E_INVALID;
        *pp = 0;
        return with_name(name, [&](const char *n) {
            VdiServerDevice *d = 0;
            HRESULT hr = vdi_server_set_open_device(set, n, &d);
            if (hr == 0) {
                *pp = new (std::nothrow) ServerDevice(d);
                if (!*pp) hr = E_OUTOFMEMORY;
            }
            return hr;
        });
    }
    HRESULT STDMETHODCALLTYPE AllocateBuffer(BYTE **pp, DWORD s, DWORD a) {
        return vdi_server_set_allocate_buffer(set, pp, s, a);
    }
    HRESULT STDMETHODCALLTYPE FreeBuffer(BYTE *p, DWORD s) {
        return vdi_server_set_free_buffer(set, p, s);
    }
    HRESULT STDMETHODCALLTYPE IsSharedBuffer(BYTE *p) {
        return vdi_server_set_is_shared_buffer(set, p) ? TRUE : FALSE;
    }
    HRESULT STDMETHODCALLTYPE SignalAbort() { return vdi_server_set_signal_abort(set); }
    HRESULT STDMETHODCALLTYPE Close() { return vdi_server_set_close(set); }
private:
    VdiServerSet *set;
};

} /* namespace vdi_com */

/*
 * CoCreateInstance's shape: rclsid is CLSID_MSSQL_ClientVirtualDeviceSet or
 * CLSID_MSSQL_ServerVirtualDeviceSet; riid one of that object's interfaces. No
 * aggregation; the context is ignored (everything is in-process).
 */
inline HRESULT VdiCoCreateInstance(REFCLSID rclsid, IUnknown *pUnkOuter, DWORD dwClsContext,
                                   REFIID riid, void **ppv) {
    (void)dwClsContext;
    if (!ppv) return E_POINTER;
    *ppv = 0;
    if (pUnkOuter) return CLASS_E_NOAGGREGATION;
    IUnknown *obj = 0;
    if (IsEqualGUID(rclsid, CLSID_MSSQL_ClientVirtualDeviceSet)) {
        vdi_com::ClientSet *s = new (std::nothrow) vdi_com::ClientSet();
        if (s && !s->ok()) { s->Release(); s = 0; }
        obj = s;
    } else if (IsEqualGUID(rclsid, CLSID_MSSQL_ServerVirtualDeviceSet)) {
        vdi_com::ServerSet *s = new (std::nothrow) vdi_com::ServerSet();
        if (s && !s->ok()) { s->Release(); s = 0; }
        obj = s;
    } else {
        return REGDB_E_CLASSNOTREG;
    }
    if (!obj) return E_OUTOFMEMORY;
    HRESULT hr = obj->QueryInterface(riid, ppv);
    obj->Release();
    return hr;
}

#endif /* VDI_VDI_COM_H */
