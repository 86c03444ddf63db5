// CRC32C (Castagnoli) for iSCSI digests, RFC 7143 §13.1 / Appendix A.4.
// Written from the polynomial definition: reflected polynomial 0x82F63B78, initial value and final
// XOR 0xFFFFFFFF.
#include "CCRC32C.h"
#include <string.h>

#define POLY 0x82F63B78u

static uint32_t table[8][256];
static int table_ready;

static void build_table(void) {
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++) c = (c & 1) ? (c >> 1) ^ POLY : c >> 1;
        table[0][n] = c;
    }
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = table[0][n];
        for (int t = 1; t < 8; t++) {
            c = table[0][c & 0xFF] ^ (c >> 8);
            table[t][n] = c;
        }
    }
    __atomic_store_n(&table_ready, 1, __ATOMIC_RELEASE);
}

static inline void ensure_table(void) {
    // Building twice concurrently is harmless: both writers store identical values.
    if (!__atomic_load_n(&table_ready, __ATOMIC_ACQUIRE)) build_table();
}

uint32_t ccrc32c_extend_portable(uint32_t crc, const void *data, size_t length) {
    ensure_table();
    const unsigned char *p = (const unsigned char *)data;
    uint32_t c = ~crc;
    while (length > 0 && ((uintptr_t)p & 7) != 0) {
        c = table[0][(c ^ *p++) & 0xFF] ^ (c >> 8);
        length--;
    }
    while (length >= 8) {
        uint64_t word;
        memcpy(&word, p, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
        word = __builtin_bswap64(word);
#endif
        word ^= c;
        c = table[7][word & 0xFF] ^ table[6][(word >> 8) & 0xFF] ^ table[5][(word >> 16) & 0xFF] ^
            table[4][(word >> 24) & 0xFF] ^ table[3][(word >> 32) & 0xFF] ^ table[2][(word >> 40) & 0xFF] ^
            table[1][(word >> 48) & 0xFF] ^ table[0][(word >> 56) & 0xFF];
        p += 8;
        length -= 8;
    }
    while (length > 0) {
        c = table[0][(c ^ *p++) & 0xFF] ^ (c >> 8);
        length--;
    }
    return ~c;
}

#if defined(__x86_64__)
#include <nmmintrin.h>

__attribute__((target("sse4.2")))
static uint32_t crc32c_sse42(uint32_t crc, const void *data, size_t length) {
    const unsigned char *p = (const unsigned char *)data;
    uint64_t c = (uint32_t)~crc;
    while (length > 0 && ((uintptr_t)p & 7) != 0) {
        c = _mm_crc32_u8((uint32_t)c, *p++);
        length--;
    }
    while (length >= 8) {
        uint64_t word;
        memcpy(&word, p, 8);
        c = _mm_crc32_u64(c, word);
        p += 8;
        length -= 8;
    }
    while (length > 0) {
        c = _mm_crc32_u8((uint32_t)c, *p++);
        length--;
    }
    return ~(uint32_t)c;
}

static int hw_state; // 0 unknown, 1 yes, 2 no

int ccrc32c_hardware_available(void) {
    int s = __atomic_load_n(&hw_state, __ATOMIC_RELAXED);
    if (s == 0) {
        __builtin_cpu_init();
        s = __builtin_cpu_supports("sse4.2") ? 1 : 2;
        __atomic_store_n(&hw_state, s, __ATOMIC_RELAXED);
    }
    return s == 1;
}

uint32_t ccrc32c_extend_hardware(uint32_t crc, const void *data, size_t length) {
    if (ccrc32c_hardware_available()) return crc32c_sse42(crc, data, length);
    return ccrc32c_extend_portable(crc, data, length);
}
#else
int ccrc32c_hardware_available(void) { return 0; }
uint32_t ccrc32c_extend_hardware(uint32_t crc, const void *data, size_t length) {
    return ccrc32c_extend_portable(crc, data, length);
}
#endif

uint32_t ccrc32c_extend(uint32_t crc, const void *data, size_t length) {
    if (length == 0) return crc;
    return ccrc32c_extend_hardware(crc, data, length);
}
