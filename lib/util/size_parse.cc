#include "util/size_parse.h"

#include <cerrno>
#include <cstddef>
#include <string_view>
#include <vector>

namespace libblock {
namespace {

bool IsSpace(char c) {  // isspace() in the C locale, as strtoull skips
  return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r';
}
bool IsDigit(char c) { return c >= '0' && c <= '9'; }
int HexValue(char c) {
  if (IsDigit(c)) return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

int SuffixShift(char c) {
  switch (c) {
    case 'b': case 'B': return 0;
    case 'k': case 'K': return 10;
    case 'm': case 'M': return 20;
    case 'g': case 'G': return 30;
    case 't': case 'T': return 40;
    case 'p': case 'P': return 50;
    case 'e': case 'E': return 60;
    default: return -1;
  }
}

// strtoull's parse from `p`: whitespace, a sign, then digits of `base` (16 takes an optional
// "0x" prefix when a hex digit follows it). Sets *end past the digits (to `p` when there
// are none), *negative, and *overflow when the magnitude needs more than 64 bits.
uint64_t ParseUnsigned(const char* p, int base, const char** end, bool* negative, bool* overflow) {
  const char* start = p;
  while (IsSpace(*p)) ++p;
  *negative = false;
  *overflow = false;
  if (*p == '+' || *p == '-') *negative = *p++ == '-';
  if (base == 16 && p[0] == '0' && (p[1] == 'x' || p[1] == 'X') && HexValue(p[2]) >= 0) p += 2;
  const char* digits = p;
  uint64_t v = 0;
  for (;; ++p) {
    int d = base == 16 ? HexValue(*p) : (IsDigit(*p) ? *p - '0' : -1);
    if (d < 0) break;
    if (v > (UINT64_MAX - static_cast<uint64_t>(d)) / static_cast<uint64_t>(base)) *overflow = true;
    v = v * static_cast<uint64_t>(base) + static_cast<uint64_t>(d);
  }
  *end = p == digits ? start : p;
  return v;
}

// Unsigned big integers, little-endian 32-bit limbs: only what rounding a decimal fraction
// to a double needs.
class BigNum {
 public:
  explicit BigNum(uint32_t v = 0) { if (v) limbs_.push_back(v); }
  void MulAdd(uint32_t mul, uint32_t add) {
    uint64_t carry = add;
    for (uint32_t& l : limbs_) {
      uint64_t t = static_cast<uint64_t>(l) * mul + carry;
      l = static_cast<uint32_t>(t);
      carry = t >> 32;
    }
    if (carry) limbs_.push_back(static_cast<uint32_t>(carry));
  }
  void Double() { MulAdd(2, 0); }
  bool IsZero() const { return limbs_.empty(); }
  int Compare(const BigNum& o) const {
    if (limbs_.size() != o.limbs_.size()) return limbs_.size() < o.limbs_.size() ? -1 : 1;
    for (size_t i = limbs_.size(); i-- > 0;) {
      if (limbs_[i] != o.limbs_[i]) return limbs_[i] < o.limbs_[i] ? -1 : 1;
    }
    return 0;
  }
  void Subtract(const BigNum& o) {  // requires *this >= o
    int64_t borrow = 0;
    for (size_t i = 0; i < limbs_.size(); ++i) {
      int64_t t = static_cast<int64_t>(limbs_[i]) - borrow -
                  (i < o.limbs_.size() ? static_cast<int64_t>(o.limbs_[i]) : 0);
      borrow = t < 0;
      limbs_[i] = static_cast<uint32_t>(t + (borrow ? (int64_t{1} << 32) : 0));
    }
    while (!limbs_.empty() && limbs_.back() == 0) limbs_.pop_back();
  }

 private:
  std::vector<uint32_t> limbs_;
};

// A decimal fraction 0.DIGITS rounded to the nearest double (ties to even), as a 64-bit
// fixed-point fraction: floor(double * 2^64), taken modulo 2^64 (1.0 gives 0). Sets
// *underflow when the fraction is not zero but below the smallest normal double, where
// strtod reports ERANGE.
uint64_t FractionFixedPoint(std::string_view digits, bool* underflow) {
  *underflow = false;
  while (!digits.empty() && digits.back() == '0') digits.remove_suffix(1);
  if (digits.empty()) return 0;
  size_t zeros = 0;
  while (zeros < digits.size() && digits[zeros] == '0') ++zeros;
  // 10^-309 < 2^-1022: below the normal range whatever follows.
  if (zeros >= 309) {
    *underflow = true;
    return 0;
  }
  // Decimals of more than 800 significant digits round as their first 800 followed by a
  // non-zero digit: a midpoint between two doubles has at most 767 significant digits.
  std::string_view significant = digits.substr(zeros);
  bool sticky = false;
  if (significant.size() > 800) {
    sticky = true;  // trailing zeros were stripped, so what is cut off is not all zeros
    significant = significant.substr(0, 800);
  }
  BigNum n, b(1);
  for (size_t i = 0; i < zeros; ++i) b.MulAdd(10, 0);
  for (char c : significant) {
    n.MulAdd(10, static_cast<uint32_t>(c - '0'));
    b.MulAdd(10, 0);
  }
  if (sticky) {
    n.MulAdd(10, 1);
    b.MulAdd(10, 0);
  }
  // f = n / b. Scale n by 2^k so that b <= n*2^k < 2b: f is in [2^-k, 2^(1-k)).
  int k = 0;
  while (n.Compare(b) < 0) {
    n.Double();
    ++k;
  }
  if (k > 1022) {
    *underflow = true;
    return 0;
  }
  // 53 significant bits by long division, then round to nearest, ties to even.
  uint64_t m = 0;
  for (int i = 0; i < 53; ++i) {
    int bit = n.Compare(b) >= 0;
    if (bit) n.Subtract(b);
    m = m * 2 + static_cast<uint64_t>(bit);
    n.Double();  // now twice the remainder
  }
  int c = n.Compare(b);  // 2 * remainder against the divisor
  if (c > 0 || (c == 0 && (m & 1))) ++m;
  // double = m * 2^-(k+52); times 2^64 = m * 2^(12-k), modulo 2^64.
  int shift = 12 - k;
  if (shift >= 0) return shift >= 64 ? 0 : m << shift;
  return -shift >= 64 ? 0 : m >> -shift;
}

}  // namespace

ParsedSize ParseQemuSize(const char* text) {
  ParsedSize r;
  // As QEMU: every error but one found on the way sets `end`; then any character left makes
  // the input invalid, whatever the error was.
  auto finish = [&r](const char* end, int error) {
    r.error = *end ? EINVAL : error;
    if (r.error) r.value = 0;
    return r;
  };
  bool negative = false, overflow = false;
  const char* end = text;
  uint64_t val = ParseUnsigned(text, 10, &end, &negative, &overflow);
  if (end == text) return finish(text, EINVAL);
  if (overflow) return finish(end, ERANGE);
  if (negative) return finish(text, EINVAL);
  uint64_t valf = 0;
  bool hex = false;
  if (val == 0 && (*end == 'x' || *end == 'X')) {
    val = ParseUnsigned(text, 16, &end, &negative, &overflow);
    if (overflow) return finish(end, ERANGE);
    if (*end == '.') return finish(text, EINVAL);
    hex = true;
  } else if (*end == '.') {
    const char* digits = end + 1;
    const char* p = digits;
    while (IsDigit(*p)) ++p;
    if (p == digits) {
      ++end;  // "1." and "1.k": no fraction digits, strtod fails and the '.' is skipped
    } else {
      // strtod takes an exponent when digits follow [eE][+-]: QEMU refuses it.
      const char* e = p;
      if (*e == 'e' || *e == 'E') {
        ++e;
        if (*e == '+' || *e == '-') ++e;
        if (IsDigit(*e)) return finish(text, EINVAL);
      }
      bool underflow = false;
      valf = FractionFixedPoint(std::string_view(digits, static_cast<size_t>(p - digits)), &underflow);
      end = p;
      if (underflow) {
        // QEMU treats strtod's ERANGE as a failed fraction and skips one more character.
        // At the end of the text that would step past it: the input is refused instead.
        if (!*end) return finish(text, EINVAL);
        ++end;
      }
    }
  }
  int shift = SuffixShift(*end);
  if (shift >= 0) {
    ++end;
    r.deprecated_hex_suffix = hex;
  } else {
    shift = 0;
  }
  if (shift == 0) {
    if (valf != 0) return finish(text, EINVAL);  // a fraction of a byte
    r.value = val;
    return finish(end, 0);
  }
  // 64.64 fixed point times 2^shift, rounded half up; overflow past 64 bits is out of range.
  uint64_t high = val >> (64 - shift);
  uint64_t low = val << shift;
  uint64_t frac_int = valf >> (64 - shift);
  uint64_t frac_rest = valf << shift;
  uint64_t sum = low + frac_int;
  if (sum < low) ++high;
  uint64_t rounded = sum + (frac_rest >> 63);
  if (rounded < sum) ++high;
  if (high != 0) return finish(end, ERANGE);
  r.value = rounded;
  return finish(end, 0);
}

}  // namespace libblock
