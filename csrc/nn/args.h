// Layer arguments as the schema (nn/schema.h) describes them: a small tagged value per
// argument, and the complete set a layer is built from and saved with.
#pragma once

#include <cstdint>
#include <map>
#include <string>

namespace cnnkit {
namespace nn {

enum class ArgKind { Int, Pair, Float, Bool, Choice };
const char* arg_kind_name(ArgKind k);

// One argument value. Int: i[0]; Pair: (i[0], i[1]) or, where the spec allows strings, s
// ("same"); Float: f; Bool: i[0]; Choice: s. `none` marks an optional argument left unset.
struct Arg {
    ArgKind kind = ArgKind::Int;
    int64_t i[2] = {0, 0};
    double f = 0.0;
    std::string s;
    bool none = false;

    static Arg integer(int64_t v);
    static Arg pair(int64_t a, int64_t b);
    static Arg number(double v);
    static Arg boolean(bool v);
    static Arg choice(const std::string& v);
    static Arg null(ArgKind k);
};

using Args = std::map<std::string, Arg>;

}  // namespace nn
}  // namespace cnnkit
