// The layer registry and the generic argument checks every layer goes through (constructors
// from Python and the file loader alike).
#include "nn/schema.h"

#include <cmath>
#include <sstream>

namespace cnnkit {
namespace nn {

#define CNNKIT_LAYER(T) LayerSchema schema_##T();
#include "nn/layer_list.h"
#undef CNNKIT_LAYER

const char* arg_kind_name(ArgKind k) {
    switch (k) {
        case ArgKind::Int: return "int";
        case ArgKind::Pair: return "pair";
        case ArgKind::Float: return "float";
        case ArgKind::Bool: return "bool";
        case ArgKind::Choice: return "choice";
    }
    return "?";
}

// ---- values ---------------------------------------------------------------------------------

Arg Arg::integer(int64_t v) {
    Arg a;
    a.kind = ArgKind::Int;
    a.i[0] = v;
    return a;
}
Arg Arg::pair(int64_t x, int64_t y) {
    Arg a;
    a.kind = ArgKind::Pair;
    a.i[0] = x;
    a.i[1] = y;
    return a;
}
Arg Arg::number(double v) {
    Arg a;
    a.kind = ArgKind::Float;
    a.f = v;
    return a;
}
Arg Arg::boolean(bool v) {
    Arg a;
    a.kind = ArgKind::Bool;
    a.i[0] = v ? 1 : 0;
    return a;
}
Arg Arg::choice(const std::string& v) {
    Arg a;
    a.kind = ArgKind::Choice;
    a.s = v;
    return a;
}
Arg Arg::null(ArgKind k) {
    Arg a;
    a.kind = k;
    a.none = true;
    return a;
}

// ---- spec helpers ---------------------------------------------------------------------------

ArgSpec int_req(const std::string& name, double lo, double hi) {
    ArgSpec s(name, ArgKind::Int, Arg::integer(0));
    s.required = true;
    s.lo = lo;
    s.hi = hi;
    return s;
}
ArgSpec int_arg(const std::string& name, int64_t def, double lo, double hi) {
    ArgSpec s = int_req(name, lo, hi);
    s.required = false;
    s.def = Arg::integer(def);
    return s;
}
ArgSpec pair_req(const std::string& name, double lo, double hi) {
    ArgSpec s(name, ArgKind::Pair, Arg::pair(0, 0));
    s.required = true;
    s.lo = lo;
    s.hi = hi;
    return s;
}
ArgSpec pair_arg(const std::string& name, int64_t def, double lo, double hi) {
    ArgSpec s = pair_req(name, lo, hi);
    s.required = false;
    s.def = Arg::pair(def, def);
    return s;
}
ArgSpec float_arg(const std::string& name, double def, double lo, double hi, bool lo_open,
                  bool hi_open) {
    ArgSpec s(name, ArgKind::Float, Arg::number(def));
    s.lo = lo;
    s.hi = hi;
    s.lo_open = lo_open;
    s.hi_open = hi_open;
    return s;
}
ArgSpec bool_arg(const std::string& name, bool def) {
    return ArgSpec(name, ArgKind::Bool, Arg::boolean(def));
}
ArgSpec choice_arg(const std::string& name, const std::string& def,
                   std::vector<std::string> choices) {
    ArgSpec s(name, ArgKind::Choice, Arg::choice(def));
    s.choices = std::move(choices);
    return s;
}

// ---- registry -------------------------------------------------------------------------------

const std::vector<LayerSchema>& layer_schemas() {
    static const std::vector<LayerSchema> all = [] {
        std::vector<LayerSchema> v;
#define CNNKIT_LAYER(T) v.push_back(schema_##T());
#include "nn/layer_list.h"
#undef CNNKIT_LAYER
        return v;
    }();
    return all;
}

const LayerSchema& layer_schema(const std::string& type) {
    for (const LayerSchema& s : layer_schemas())
        if (s.type == type) return s;
    std::ostringstream known;
    for (const LayerSchema& s : layer_schemas()) known << (known.tellp() ? ", " : "") << s.type;
    throw ValueError(str_cat("unknown layer type '", type, "' (known: ", known.str(), ")"));
}

// ---- checking -------------------------------------------------------------------------------

namespace {

std::string fmt_num(double v) {
    if (std::fabs(v) < 9.2e18 && v == std::floor(v)) return std::to_string(int64_t(v));
    std::ostringstream os;
    os << v;
    return os.str();
}

std::string range_str(const ArgSpec& s) {
    return str_cat(s.lo_open ? "(" : "[", fmt_num(s.lo), ", ", fmt_num(s.hi), s.hi_open ? ")" : "]");
}

bool in_range(const ArgSpec& s, double v) {
    if (std::isnan(v)) return false;
    if (s.lo_open ? !(v > s.lo) : !(v >= s.lo)) return false;
    if (s.hi_open ? !(v < s.hi) : !(v <= s.hi)) return false;
    return true;
}

std::string value_str(const Arg& a) {
    if (a.none) return "None";
    switch (a.kind) {
        case ArgKind::Int: return std::to_string(a.i[0]);
        case ArgKind::Pair:
            return a.s.empty() ? str_cat("(", a.i[0], ", ", a.i[1], ")") : str_cat("'", a.s, "'");
        case ArgKind::Float: return fmt_num(a.f);
        case ArgKind::Bool: return a.i[0] ? "True" : "False";
        case ArgKind::Choice: return str_cat("'", a.s, "'");
    }
    return "?";
}

void check_value(const LayerSchema& schema, const ArgSpec& s, const Arg& a) {
    const std::string where = str_cat(schema.type, ": ", s.name);
    if (a.none) {
        CNN_CHECK_ARG(s.nullable, where, " must not be None");
        return;
    }
    CNN_CHECK_ARG(a.kind == s.kind, where, " must be ", arg_kind_name(s.kind), ", got ",
                  arg_kind_name(a.kind));
    switch (s.kind) {
        case ArgKind::Int:
            CNN_CHECK_ARG(in_range(s, double(a.i[0])), where, " must be in ", range_str(s),
                          ", got ", a.i[0]);
            break;
        case ArgKind::Pair:
            if (!a.s.empty()) {
                bool ok = false;
                std::string all;
                for (const auto& c : s.choices) {
                    ok |= c == a.s;
                    all += (all.empty() ? "'" : ", '") + c + "'";
                }
                CNN_CHECK_ARG(ok, where, " must be an int, a pair of ints",
                              all.empty() ? "" : " or one of " + all, ", got ", value_str(a));
            } else {
                CNN_CHECK_ARG(in_range(s, double(a.i[0])) && in_range(s, double(a.i[1])), where,
                              " must be in ", range_str(s), ", got ", value_str(a));
            }
            break;
        case ArgKind::Float:
            CNN_CHECK_ARG(in_range(s, a.f), where, " must be in ", range_str(s), ", got ",
                          fmt_num(a.f));
            break;
        case ArgKind::Bool: break;
        case ArgKind::Choice: {
            bool ok = false;
            std::string all;
            for (const auto& c : s.choices) {
                ok |= c == a.s;
                all += (all.empty() ? "'" : ", '") + c + "'";
            }
            CNN_CHECK_ARG(ok, where, " must be one of ", all, ", got '", a.s, "'");
            break;
        }
    }
}

}  // namespace

Args complete_args(const LayerSchema& schema, const Args& given) {
    for (const auto& kv : given) {
        bool known = false;
        for (const ArgSpec& s : schema.args) known |= s.name == kv.first;
        if (!known) {
            std::string names;
            for (const ArgSpec& s : schema.args) names += (names.empty() ? "" : ", ") + s.name;
            throw ValueError(str_cat(schema.type, ": unknown argument '", kv.first, "' (",
                                     names.empty() ? "it takes none" : "arguments: " + names,
                                     ")"));
        }
    }
    Args out;
    for (const ArgSpec& s : schema.args) {
        auto it = given.find(s.name);
        if (it == given.end()) {
            CNN_CHECK_ARG(!s.required, schema.type, ": missing required argument '", s.name, "'");
            out[s.name] = s.nullable ? Arg::null(s.kind) : s.def;
            continue;
        }
        check_value(schema, s, it->second);
        out[s.name] = it->second;
    }
    if (schema.normalize) schema.normalize(out);
    return out;
}

std::vector<ParamSpec> checked_state_specs(const LayerSchema& schema, const Args& args,
                                           int64_t* total_floats) {
    std::vector<ParamSpec> all;
    if (schema.params) all = schema.params(args);
    if (schema.buffers)
        for (ParamSpec& b : schema.buffers(args)) all.push_back(std::move(b));
    int64_t total = 0;
    for (const ParamSpec& p : all) {
        const std::string what = str_cat(schema.type, ": ", p.name, " of shape ", shape_str(p.shape));
        const int64_t n = checked_numel(p.shape, what);
        checked_bytes(n, sizeof(float), what);
        total = add_size(total, n, str_cat(schema.type, ": total parameters"));
    }
    checked_bytes(total, sizeof(float), str_cat(schema.type, ": parameters and buffers"));
    if (total_floats) *total_floats = total;
    return all;
}

LayerPtr make_layer(const std::string& type, const Args& given) {
    const LayerSchema& schema = layer_schema(type);
    Args args = complete_args(schema, given);
    checked_state_specs(schema, args);
    LayerPtr l = schema.make(args);
    l->set_schema(&schema, args);
    return l;
}

// ---- accessors ------------------------------------------------------------------------------

namespace {
const Arg& get(const Args& a, const std::string& name, ArgKind kind) {
    auto it = a.find(name);
    CNN_CHECK(it != a.end() && it->second.kind == kind, "argument '", name, "' missing");
    return it->second;
}
}  // namespace

int64_t arg_int(const Args& a, const std::string& name) { return get(a, name, ArgKind::Int).i[0]; }
std::pair<int64_t, int64_t> arg_pair(const Args& a, const std::string& name) {
    const Arg& v = get(a, name, ArgKind::Pair);
    return {v.i[0], v.i[1]};
}
double arg_float(const Args& a, const std::string& name) { return get(a, name, ArgKind::Float).f; }
bool arg_bool(const Args& a, const std::string& name) { return get(a, name, ArgKind::Bool).i[0] != 0; }
const std::string& arg_str(const Args& a, const std::string& name) {
    return get(a, name, ArgKind::Choice).s;
}

}  // namespace nn
}  // namespace cnnkit
