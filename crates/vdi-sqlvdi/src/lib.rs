//! libsqlvdi.so (work in progress: the SDK's symbols follow).
