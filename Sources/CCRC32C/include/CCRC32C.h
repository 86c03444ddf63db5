#ifndef CCRC32C_H
#define CCRC32C_H
#include <stddef.h>
#include <stdint.h>
/// Placeholder: CRC32C (Castagnoli) is being written.
uint32_t ccrc32c_extend(uint32_t crc, const void *data, size_t length);
#endif
