#ifndef CCRC32C_H
#define CCRC32C_H
#include <stddef.h>
#include <stdint.h>

/// CRC32C (Castagnoli, polynomial 0x1EDC6F41, reflected 0x82F63B78), as used by iSCSI header and data
/// digests (RFC 7143 §13.1, examples in Appendix A.4 "CRC Examples").
///
/// `crc` is the CRC of the bytes before `data` (0 for the first chunk); the result is the CRC of all bytes
/// so far, so a digest over several buffers is `ccrc32c_extend(ccrc32c_extend(0, a, n), b, m)`.
/// Uses the SSE4.2 crc32 instruction when the CPU has it, a slicing-by-8 table otherwise.
uint32_t ccrc32c_extend(uint32_t crc, const void *data, size_t length);

/// The portable table implementation (always available; for tests and benchmarks).
uint32_t ccrc32c_extend_portable(uint32_t crc, const void *data, size_t length);

/// The hardware implementation; returns the portable result when the CPU lacks it.
uint32_t ccrc32c_extend_hardware(uint32_t crc, const void *data, size_t length);

/// 1 when `ccrc32c_extend` uses a CPU instruction.
int ccrc32c_hardware_available(void);
#endif
