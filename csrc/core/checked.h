// Checked size arithmetic: every product or sum of sizes (element counts, bytes, output
// extents, workspace) goes through these, so a size that does not fit in int64 is a ValueError
// that names what was being sized, never a wrapped value and a buffer overrun.
#pragma once

#include <cstdint>
#include <string>

// Included at the end of core/common.h (it uses ValueError, str_cat and shape_str from there).

namespace cnnkit {

// Largest buffer cnnkit will try to allocate: 2^62 bytes (far beyond any address space; a
// request below it that the machine cannot satisfy is an OutOfMemory at allocation time).
constexpr int64_t kMaxBytes = int64_t(1) << 62;

namespace detail {
// a*b (exact, for messages): a decimal string of an unsigned 128-bit product
inline std::string u128_str(unsigned __int128 v) {
    if (v == 0) return "0";
    std::string s;
    while (v) {
        s.insert(s.begin(), char('0' + int(v % 10)));
        v /= 10;
    }
    return s;
}
}  // namespace detail

// a * b for non-negative sizes; ValueError "<what>: a x b = <exact> does not fit in 64 bits".
inline int64_t mul_size(int64_t a, int64_t b, const std::string& what) {
    int64_t r;
    if (a < 0 || b < 0)
        throw ValueError(str_cat(what, ": negative size (", a, " x ", b, ")"));
    if (__builtin_mul_overflow(a, b, &r))
        throw ValueError(str_cat(what, ": ", a, " x ", b, " = ",
                                 detail::u128_str((unsigned __int128)a * (unsigned __int128)b),
                                 " does not fit in a 64-bit size"));
    return r;
}

inline int64_t add_size(int64_t a, int64_t b, const std::string& what) {
    int64_t r;
    if (a < 0 || b < 0)
        throw ValueError(str_cat(what, ": negative size (", a, " + ", b, ")"));
    if (__builtin_add_overflow(a, b, &r))
        throw ValueError(str_cat(what, ": ", a, " + ", b, " does not fit in a 64-bit size"));
    return r;
}

// Number of elements of a shape; ValueError for a negative dimension or an overflowing product.
inline int64_t checked_numel(const Shape& s, const std::string& what) {
    int64_t n = 1;
    bool over = false;
    for (int64_t d : s) {
        if (d < 0) throw ValueError(str_cat(what, ": negative dimension in shape ", shape_str(s)));
        over |= __builtin_mul_overflow(n, d, &n);
    }
    if (over)
        throw ValueError(str_cat(what, ": shape ", shape_str(s), " has more elements than fit in ",
                                 "a 64-bit size"));
    return n;
}

// Bytes of `numel` elements of `elem` bytes, at most kMaxBytes.
inline int64_t checked_bytes(int64_t numel, int64_t elem, const std::string& what) {
    int64_t b;
    if (numel < 0 || __builtin_mul_overflow(numel, elem, &b))
        throw ValueError(str_cat(what, ": ", numel, " elements x ", elem, " bytes = ",
                                 detail::u128_str((unsigned __int128)numel * (unsigned __int128)elem),
                                 " bytes does not fit in a 64-bit size"));
    if (b > kMaxBytes)
        throw ValueError(str_cat(what, ": ", numel, " elements x ", elem, " bytes = ", b,
                                 " bytes is more than any machine can hold"));
    return b;
}

inline int64_t shape_numel(const Shape& s) { return checked_numel(s, "shape"); }

}  // namespace cnnkit
