// Shared macros for the whole core: host/device qualifiers, error checks, and the exception
// types that the bindings map to Python's ValueError / RuntimeError.
#pragma once

#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#if defined(__CUDACC__)
#define CNN_HD __host__ __device__ __forceinline__
#else
#define CNN_HD inline
#endif

namespace cnnkit {

// Bad input from the user (wrong shape, bad hyper-parameter): maps to Python ValueError.
class ValueError : public std::invalid_argument {
  public:
    explicit ValueError(const std::string& msg) : std::invalid_argument(msg) {}
};

// Anything else that went wrong at run time (CUDA failure, out of memory): RuntimeError.
class RuntimeError : public std::runtime_error {
  public:
    explicit RuntimeError(const std::string& msg) : std::runtime_error(msg) {}
};

// An allocation the machine cannot satisfy: maps to Python MemoryError.
class OutOfMemory : public std::runtime_error {
  public:
    explicit OutOfMemory(const std::string& msg) : std::runtime_error(msg) {}
};

using Shape = std::vector<int64_t>;

inline std::string shape_str(const Shape& s) {
    std::ostringstream os;
    os << "(";
    for (size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
    if (s.size() == 1) os << ",";
    os << ")";
    return os.str();
}


namespace detail {
inline void append(std::ostringstream&) {}
template <typename T, typename... Rest>
void append(std::ostringstream& os, const T& v, const Rest&... rest) {
    os << v;
    append(os, rest...);
}
}  // namespace detail

template <typename... Args>
std::string str_cat(const Args&... args) {
    std::ostringstream os;
    detail::append(os, args...);
    return os.str();
}

}  // namespace cnnkit

#include "core/checked.h"  // shape_numel and the other checked size arithmetic

// Throws cnnkit::ValueError with the message (user error: shapes, arguments).
#define CNN_CHECK_ARG(cond, ...)                                                        \
    do {                                                                                \
        if (!(cond)) throw ::cnnkit::ValueError(::cnnkit::str_cat(__VA_ARGS__));        \
    } while (0)

// Throws cnnkit::RuntimeError with file:line (internal invariant or system failure).
#define CNN_CHECK(cond, ...)                                                            \
    do {                                                                                \
        if (!(cond))                                                                    \
            throw ::cnnkit::RuntimeError(::cnnkit::str_cat(__VA_ARGS__, " [", __FILE__, \
                                                           ":", __LINE__, "]"));        \
    } while (0)
