//! Cross-process tests of vdi (see tests/ and the vdi-peer binary).
