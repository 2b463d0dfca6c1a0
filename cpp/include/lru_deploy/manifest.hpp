// lru-deploy engine folders in C++17, without TensorRT or CUDA: a minimal JSON reader, the engine manifest
// (manifest.json, format "lru-deploy-engines-v1"), and the checks the runtime makes before it loads anything:
// GPU / TensorRT / platform compatibility (the rules of lru_deploy/trt_env.py) and optimization-profile bounds.
// engine.hpp builds the TensorRT runtime on top of this; this header alone compiles anywhere.
#pragma once

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace lru_deploy {

// Every error of this library: one message naming the problem(s) and what to do.
class Error : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

inline std::string join_problems(const std::string& head, const std::vector<std::string>& problems,
                                 const std::string& hint = "") {
    std::string s = head;
    for (const auto& p : problems) s += "\n  - " + p;
    if (!hint.empty()) s += "\nhint: " + hint;
    return s;
}

// ------------------------------------------------------------------ a minimal JSON reader
namespace json {

struct Value {
    enum class Type { Null, Bool, Number, String, Array, Object };
    Type type = Type::Null;
    bool boolean = false;
    double number = 0.0;
    std::string text;
    std::vector<Value> items;       // Array elements, or Object values (keys in `keys`, same order)
    std::vector<std::string> keys;

    bool has(const std::string& key) const {
        if (type != Type::Object) return false;
        for (const auto& k : keys)
            if (k == key) return true;
        return false;
    }
    const Value& operator[](const std::string& key) const {
        if (type == Type::Object)
            for (size_t i = 0; i < keys.size(); ++i)
                if (keys[i] == key) return items[i];
        throw Error("manifest: no entry \"" + key + "\"");
    }
    const Value& operator[](size_t i) const {
        if (type != Type::Array || i >= items.size()) throw Error("manifest: index out of range");
        return items[i];
    }
    size_t size() const { return items.size(); }
    bool is_null() const { return type == Type::Null; }
    const std::string& str() const {
        if (type != Type::String) throw Error("manifest: expected a string");
        return text;
    }
    int64_t integer() const {
        if (type != Type::Number) throw Error("manifest: expected a number");
        return static_cast<int64_t>(number);
    }
    bool flag() const { return type == Type::Bool ? boolean : false; }
};

class Parser {
public:
    explicit Parser(const std::string& s) : s_(s) {}
    Value parse() {
        Value v = value();
        ws();
        if (i_ != s_.size()) fail("trailing characters");
        return v;
    }

private:
    const std::string& s_;
    size_t i_ = 0;

    [[noreturn]] void fail(const std::string& what) const {
        throw Error("manifest: invalid JSON at byte " + std::to_string(i_) + ": " + what);
    }
    void ws() {
        while (i_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[i_]))) ++i_;
    }
    char peek() {
        ws();
        if (i_ >= s_.size()) fail("unexpected end");
        return s_[i_];
    }
    void expect(char c) {
        if (peek() != c) fail(std::string("expected '") + c + "'");
        ++i_;
    }
    bool literal(const char* word) {
        size_t n = std::char_traits<char>::length(word);
        if (s_.compare(i_, n, word) != 0) return false;
        i_ += n;
        return true;
    }
    Value value() {
        Value v;
        char c = peek();
        if (c == '{') {
            v.type = Value::Type::Object;
            ++i_;
            if (peek() == '}') { ++i_; return v; }
            for (;;) {
                if (peek() != '"') fail("expected a key");
                v.keys.push_back(string());
                expect(':');
                v.items.push_back(value());
                if (peek() == ',') { ++i_; continue; }
                expect('}');
                return v;
            }
        }
        if (c == '[') {
            v.type = Value::Type::Array;
            ++i_;
            if (peek() == ']') { ++i_; return v; }
            for (;;) {
                v.items.push_back(value());
                if (peek() == ',') { ++i_; continue; }
                expect(']');
                return v;
            }
        }
        if (c == '"') {
            v.type = Value::Type::String;
            v.text = string();
            return v;
        }
        if (literal("true")) { v.type = Value::Type::Bool; v.boolean = true; return v; }
        if (literal("false")) { v.type = Value::Type::Bool; return v; }
        if (literal("null")) return v;
        const char* start = s_.c_str() + i_;
        char* end = nullptr;
        v.number = std::strtod(start, &end);
        if (end == start) fail("unexpected character");
        v.type = Value::Type::Number;
        i_ += static_cast<size_t>(end - start);
        return v;
    }
    void utf8(std::string& out, unsigned cp) {
        if (cp < 0x80) out += static_cast<char>(cp);
        else if (cp < 0x800) { out += static_cast<char>(0xC0 | (cp >> 6)); out += static_cast<char>(0x80 | (cp & 0x3F)); }
        else if (cp < 0x10000) {
            out += static_cast<char>(0xE0 | (cp >> 12));
            out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
            out += static_cast<char>(0x80 | (cp & 0x3F));
        } else {
            out += static_cast<char>(0xF0 | (cp >> 18));
            out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
            out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
            out += static_cast<char>(0x80 | (cp & 0x3F));
        }
    }
    unsigned hex4() {
        if (i_ + 4 > s_.size()) fail("short \\u escape");
        unsigned cp = static_cast<unsigned>(std::stoul(s_.substr(i_, 4), nullptr, 16));
        i_ += 4;
        return cp;
    }
    std::string string() {
        expect('"');
        std::string out;
        while (i_ < s_.size() && s_[i_] != '"') {
            char c = s_[i_++];
            if (c != '\\') { out += c; continue; }
            if (i_ >= s_.size()) fail("bad escape");
            char e = s_[i_++];
            switch (e) {
                case 'n': out += '\n'; break;
                case 't': out += '\t'; break;
                case 'r': out += '\r'; break;
                case 'b': out += '\b'; break;
                case 'f': out += '\f'; break;
                case 'u': {
                    unsigned cp = hex4();
                    if (cp >= 0xD800 && cp < 0xDC00 && s_.compare(i_, 2, "\\u") == 0) {
                        i_ += 2;
                        cp = 0x10000 + ((cp - 0xD800) << 10) + (hex4() - 0xDC00);
                    }
                    utf8(out, cp);
                    break;
                }
                default: out += e;  // \" \\ \/
            }
        }
        if (i_ >= s_.size()) fail("unterminated string");
        ++i_;
        return out;
    }
};

inline Value parse(const std::string& text) { return Parser(text).parse(); }

}  // namespace json

// ------------------------------------------------------------------ the engine manifest

struct TensorSpec {
    std::string name, dtype;          // dtype: "float32" | "int64"
    std::vector<std::string> shape;   // "batch", "seq" or a number
};

struct GraphContract {
    std::vector<TensorSpec> inputs, outputs;
};

struct ProfileRange {
    std::vector<int64_t> min, opt, max;
};
using Profile = std::map<std::string, ProfileRange>;  // input name -> range

struct RunningInfo {
    std::string gpu_name, compute_capability, trt_version;  // "NVIDIA H100 80GB HBM3", "9.0", "10.3.0"
    std::string platform;  // "linux-x86_64" (current_platform()); empty: not compared
};

// The platform as the Python side writes it into the manifest (platform.system() and platform.machine(),
// lower case): "linux-x86_64", "linux-aarch64", "windows-amd64", "windows-arm64"; empty where this header does not
// know the system or the CPU (then the platform is not compared).
inline std::string current_platform() {
#if defined(__linux__) && (defined(__x86_64__) || defined(_M_X64))
    return "linux-x86_64";
#elif defined(__linux__) && defined(__aarch64__)
    return "linux-aarch64";
#elif defined(_WIN32) && defined(_M_X64)
    return "windows-amd64";
#elif defined(_WIN32) && defined(_M_ARM64)
    return "windows-arm64";
#else
    return "";
#endif
}

struct Manifest {
    std::string folder, name, precision, prefill_outputs;
    std::string prefill_path, step_path;
    std::string gpu_name, compute_capability, trt_version, hardware_compat, export_dir, platform;
    bool version_compatible = false, tf32 = false;
    int64_t n_layers = 0, d_hidden = 0, d_model = 0, d_output = 0, vocab_size = 0, d_input = 0;
    std::string pooling;
    int64_t max_seq = 0, max_batch = 0;
    GraphContract prefill, step;
    Profile prefill_profile, step_profile;

    bool tokens() const { return vocab_size > 0; }
    const GraphContract& contract(const std::string& graph) const { return graph == "prefill" ? prefill : step; }

    static Manifest load(const std::string& folder) {
        std::ifstream f(folder + "/manifest.json");
        if (!f) throw Error("no manifest.json in " + folder + "\nhint: pass the folder `lru-deploy build` wrote");
        std::stringstream ss;
        ss << f.rdbuf();
        json::Value j = json::parse(ss.str());
        if (!j.has("format") || j["format"].str() != "lru-deploy-engines-v1")
            throw Error(folder + " is not an lru-deploy engine folder (manifest format is not lru-deploy-engines-v1)");
        Manifest m;
        m.folder = folder;
        m.name = j["name"].str();
        m.precision = j["precision"].str();
        m.prefill_outputs = j.has("prefill_outputs") ? j["prefill_outputs"].str() : "all";
        m.prefill_path = j["engines"]["prefill"]["path"].str();
        m.step_path = j["engines"]["step"]["path"].str();
        m.gpu_name = j["gpu"]["name"].str();
        m.compute_capability = j["gpu"]["compute_capability"].str();
        m.trt_version = j["tensorrt"]["version"].str();
        m.hardware_compat = j.has("hardware_compat") ? j["hardware_compat"].str() : "none";
        m.platform = j.has("platform") ? j["platform"].str() : "";
        m.version_compatible = j.has("version_compatible") && j["version_compatible"].flag();
        m.tf32 = j.has("tf32") && j["tf32"].flag();
        m.export_dir = j.has("source") && j["source"].has("export_dir") ? j["source"]["export_dir"].str() : "";
        const json::Value& c = j["config"];
        m.n_layers = c["n_layers"].integer();
        m.d_hidden = c["d_hidden"].integer();
        m.d_model = c["d_model"].integer();
        m.d_output = c["d_output"].integer();
        m.vocab_size = c.has("vocab_size") && !c["vocab_size"].is_null() ? c["vocab_size"].integer() : 0;
        m.d_input = c.has("d_input") && !c["d_input"].is_null() ? c["d_input"].integer() : 0;
        m.pooling = c["pooling"].str();
        m.max_seq = j["max_seq"].integer();
        m.max_batch = j["batch"][2].integer();
        m.prefill = read_contract(j["contract"]["prefill"]);
        m.step = read_contract(j["contract"]["step"]);
        m.prefill_profile = read_profile(j["profiles"]["prefill"]);
        m.step_profile = read_profile(j["profiles"]["step"]);
        return m;
    }

private:
    static std::vector<TensorSpec> read_tensors(const json::Value& list) {
        std::vector<TensorSpec> out;
        for (const auto& t : list.items) {
            TensorSpec s{t["name"].str(), t["dtype"].str(), {}};
            for (const auto& d : t["shape"].items)
                s.shape.push_back(d.type == json::Value::Type::String ? d.text : std::to_string(d.integer()));
            out.push_back(s);
        }
        return out;
    }
    static GraphContract read_contract(const json::Value& g) { return {read_tensors(g["inputs"]), read_tensors(g["outputs"])}; }
    static std::vector<int64_t> ints(const json::Value& a) {
        std::vector<int64_t> v;
        for (const auto& x : a.items) v.push_back(x.integer());
        return v;
    }
    static Profile read_profile(const json::Value& p) {
        Profile out;
        for (size_t i = 0; i < p.keys.size(); ++i)
            out[p.keys[i]] = {ints(p.items[i]["min"]), ints(p.items[i]["opt"]), ints(p.items[i]["max"])};
        return out;
    }
};

// ------------------------------------------------------------------ checks (the rules of lru_deploy/trt_env.py)

inline std::vector<int> version_numbers(const std::string& v) {
    std::vector<int> out;
    int cur = -1;
    for (char c : v) {
        if (std::isdigit(static_cast<unsigned char>(c))) cur = (cur < 0 ? 0 : cur * 10) + (c - '0');
        else if (cur >= 0) { out.push_back(cur); cur = -1; }
    }
    if (cur >= 0) out.push_back(cur);
    return out;
}

// major.minor.patch of a TensorRT version, missing parts 0: the manifest holds Python's four-part
// trt.__version__ ("10.13.0.35"), running_info() the three parts of getInferLibVersion() ("10.13.0"); both name
// the same release.
inline std::vector<int> release(const std::string& v) {
    std::vector<int> r = version_numbers(v);
    r.resize(3, 0);
    return r;
}

// Why an engine built with TensorRT `built` cannot run with TensorRT `running`; empty when it can (the rule of
// lru_deploy/trt_env.py's version_problem). Compared as major.minor.patch. A plain engine runs only with the
// release that built it. A version-compatible one (built with 8.6 or later) runs with the same or a later release
// of its major, and across majors only from 8 to 10 and from 10 to 11 (NVIDIA's support matrix).
inline std::string version_problem(const std::string& built, const std::string& running, bool version_compatible) {
    const std::vector<int> b = release(built), r = release(running);
    if (!version_compatible) {
        if (b != r)
            return "built with TensorRT " + built + ", this is TensorRT " + running + "; an engine runs only with "
                   "the TensorRT release that built it unless built with --version-compatible";
        return "";
    }
    if (b < std::vector<int>{8, 6, 0})
        return "marked version-compatible but built with TensorRT " + built + "; version compatibility starts at 8.6";
    if (r < b)
        return "TensorRT " + running + " is older than the " + built + " that built this version-compatible "
               "engine (it runs on the same or a later TensorRT only)";
    const bool cross_ok = (b[0] == 8 && r[0] == 10) || (b[0] == 10 && r[0] == 11);
    if (r[0] != b[0] && !cross_ok)
        return "built with TensorRT " + built + ", this is TensorRT " + running + ": a version-compatible engine "
               "runs on later releases of its own major and across majors only for 8 -> 10, 10 -> 11";
    return "";
}

// Why an engine folder cannot run on this GPU, TensorRT and platform; empty when it can. TensorRT: see
// version_problem. GPU: only the GPU model that built it by default; hardware_compat "same-cc" any GPU of the
// same compute capability, "ampere+" compute capability 8.0 and newer. Platform: engines are not portable.
inline std::vector<std::string> compatibility_problems(const Manifest& m, const RunningInfo& r) {
    std::vector<std::string> problems;
    const std::string why = version_problem(m.trt_version, r.trt_version, m.version_compatible);
    if (!why.empty()) problems.push_back(why);
    std::vector<int> rcc = version_numbers(r.compute_capability), bcc = version_numbers(m.compute_capability);
    if (m.hardware_compat == "ampere+") {
        if (rcc < std::vector<int>{8, 0})
            problems.push_back("built for Ampere and newer GPUs (hardware_compat ampere+), but " + r.gpu_name +
                               " has compute capability " + r.compute_capability + " (needs 8.0 or newer)");
    } else if (m.hardware_compat == "same-cc") {
        if (rcc != bcc)
            problems.push_back("built for compute capability " + m.compute_capability +
                               " (hardware_compat same-cc), but " + r.gpu_name + " has compute capability " +
                               r.compute_capability);
    } else if (m.hardware_compat == "none") {
        if (rcc != bcc || r.gpu_name != m.gpu_name)
            problems.push_back("built for " + m.gpu_name + " (compute capability " + m.compute_capability +
                               "), this GPU is " + r.gpu_name + " (compute capability " + r.compute_capability +
                               "); without --hardware-compat an engine runs only on the GPU model that built it");
    } else {
        problems.push_back("unknown hardware_compat \"" + m.hardware_compat + "\" in the manifest");
    }
    if (!m.platform.empty() && !r.platform.empty() && m.platform != r.platform)
        problems.push_back("built on " + m.platform + ", this is " + r.platform +
                           "; engines are not portable across platforms");
    return problems;
}

// Every input shape outside an engine's optimization profile; empty when all fit.
inline std::vector<std::string> profile_problems(const std::string& graph, const Profile& profile,
                                                 const std::map<std::string, std::vector<int64_t>>& shapes) {
    std::vector<std::string> problems;
    for (const auto& kv : shapes) {
        auto it = profile.find(kv.first);
        if (it == profile.end()) {
            problems.push_back(kv.first + ": the " + graph + " engine has no input of that name");
            continue;
        }
        const ProfileRange& p = it->second;
        if (kv.second.size() != p.min.size()) {
            problems.push_back(kv.first + ": rank " + std::to_string(kv.second.size()) + ", the " + graph +
                               " engine takes rank " + std::to_string(p.min.size()));
            continue;
        }
        for (size_t a = 0; a < kv.second.size(); ++a) {
            int64_t d = kv.second[a];
            if (d < p.min[a] || d > p.max[a]) {
                std::string axis = a == 0 ? "batch"
                                   : (graph == "prefill" && a == 1 && (kv.first == "input_ids" || kv.first == "inputs"))
                                       ? "seq" : "axis " + std::to_string(a);
                problems.push_back(kv.first + ": " + axis + " is " + std::to_string(d) + ", the " + graph +
                                   " engine's profile allows " + std::to_string(p.min[a]) + ".." +
                                   std::to_string(p.max[a]));
            }
        }
    }
    return problems;
}

}  // namespace lru_deploy
