// The layer schema: each layer type is described once, here in C++ -- its type name, its
// arguments (name, kind, default, valid range), its parameter and buffer shapes as a function
// of the arguments, and its factory. The bindings expose it generically, the file loader
// validates and sizes files from it, and the Python classes are thin facades over it.
// docs/architecture.md says how to add a layer.
#pragma once

#include <functional>
#include <map>
#include <string>
#include <vector>

#include "nn/layer.h"

namespace cnnkit {
namespace nn {



struct ArgSpec {
    ArgSpec(std::string n, ArgKind k, Arg d) : name(std::move(n)), kind(k), def(std::move(d)) {}
    std::string name;
    ArgKind kind;
    Arg def;                           // the default (unused when required)
    bool required = false;
    bool nullable = false;             // may be None (the schema's normalize resolves it)
    double lo = 0, hi = 0;             // valid range of an Int, of each Pair entry, of a Float
    bool lo_open = false, hi_open = false;
    std::vector<std::string> choices;  // a Choice's values; strings a Pair also accepts
};

struct LayerSchema {
    explicit LayerSchema(std::string t) : type(std::move(t)) {}
    std::string type;
    std::vector<ArgSpec> args;
    // Cross-argument checks and derived values (e.g. stride defaults to kernel_size); throws
    // ValueError("<Type>: ...").
    std::function<void(Args&)> normalize;
    std::function<std::vector<ParamSpec>(const Args&)> params;   // trainable, state_dict order
    std::function<std::vector<ParamSpec>(const Args&)> buffers;  // running statistics
    std::function<LayerPtr(const Args&)> make;
};

// Every layer type, in registration order (nn/layer_list.h).
const std::vector<LayerSchema>& layer_schemas();
// ValueError naming the known types when `type` is not one.
const LayerSchema& layer_schema(const std::string& type);

// `given` checked against the schema (unknown names, missing required ones, kinds, ranges),
// defaults filled in, normalized: the complete arguments a layer is built from and saved with.
Args complete_args(const LayerSchema& schema, const Args& given);
// Parameter and buffer shapes for complete arguments, sizes checked (ValueError "Linear:
// weight (4, 4611686018427387904) ...") and the total bounded, before anything is allocated.
std::vector<ParamSpec> checked_state_specs(const LayerSchema& schema, const Args& args,
                                           int64_t* total_floats = nullptr);
// complete_args + checked_state_specs + the factory: every layer is built through here.
LayerPtr make_layer(const std::string& type, const Args& given);

// Accessors for complete arguments (the schema guarantees presence and kind).
int64_t arg_int(const Args& a, const std::string& name);
std::pair<int64_t, int64_t> arg_pair(const Args& a, const std::string& name);
double arg_float(const Args& a, const std::string& name);
bool arg_bool(const Args& a, const std::string& name);
const std::string& arg_str(const Args& a, const std::string& name);

// Spec helpers for schema tables.
constexpr double kMaxSize = 4611686018427387904.0;  // 2^62: any larger size is not a size
ArgSpec int_req(const std::string& name, double lo, double hi = kMaxSize);
ArgSpec int_arg(const std::string& name, int64_t def, double lo, double hi = kMaxSize);
ArgSpec pair_req(const std::string& name, double lo, double hi = kMaxSize);
ArgSpec pair_arg(const std::string& name, int64_t def, double lo, double hi = kMaxSize);
ArgSpec float_arg(const std::string& name, double def, double lo, double hi, bool lo_open = false,
                  bool hi_open = false);
ArgSpec bool_arg(const std::string& name, bool def);
ArgSpec choice_arg(const std::string& name, const std::string& def,
                   std::vector<std::string> choices);

}  // namespace nn
}  // namespace cnnkit
