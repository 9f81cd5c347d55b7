// QEMU's size syntax (qemu_strtosz, QEMU 7.2): what qemu-img accepts for sizes, offsets and
// lengths on its command line and for "size" options, with the same value for every input.
//
//   [whitespace][+]DIGITS[.FRACTION][SUFFIX]   or   [whitespace][+]0xHEXDIGITS[SUFFIX]
//
// SUFFIX is one of b/B (bytes), k/K, m/M, g/G, t/T, p/P, e/E (powers of 1024). A fraction
// needs a suffix other than bytes (unless it is zero: "1.0" is 1, as is "1."). The value is
// computed as QEMU computes it, in exact integer arithmetic here:
//   - the fraction is rounded to the nearest double (as strtod rounds it), taken as a 64-bit
//     binary fixed-point fraction (truncated), multiplied by the suffix, and the result
//     rounded half up: "0.0000000001T" is 110 (109.95...), "0.0005k" is 1, "0.0004k" 0;
//   - a fraction that rounds to 1.0 ("1.99999999999999999999k") contributes nothing, as in
//     qemu-img 7.2 on x86-64, where 2^64 converts to a 64-bit 0;
//   - a fraction that underflows the double range (more than ~307 zeros after the point)
//     contributes nothing and, as in QEMU, the character after the fraction is skipped;
//   - an exponent in the fraction ("1.5e3") is invalid, but "1.5e" is 1.5 EiB;
//   - a multiplier suffix on a hex number is accepted and flagged (QEMU warns it is
//     deprecated); a fraction on a hex number is invalid;
//   - a '-' sign is invalid, except that a negative number too large for 64 bits is out of
//     range, as QEMU's order of checks has it;
//   - results of 2^64 or more are out of range; trailing characters make any input invalid,
//     an out-of-range one included ("18446744073709551616k").
// No floating-point arithmetic is used.
#ifndef LIBBLOCK_UTIL_SIZE_PARSE_H_
#define LIBBLOCK_UTIL_SIZE_PARSE_H_

#include <cstdint>

namespace libblock {

struct ParsedSize {
  int error = 0;                       // 0, EINVAL (malformed) or ERANGE (out of range)
  uint64_t value = 0;                  // valid when error == 0
  bool deprecated_hex_suffix = false;  // "0x10k": accepted, QEMU warns
};

// Parses NUL-terminated `text` (not NULL).
ParsedSize ParseQemuSize(const char* text);

}  // namespace libblock

#endif  // LIBBLOCK_UTIL_SIZE_PARSE_H_
