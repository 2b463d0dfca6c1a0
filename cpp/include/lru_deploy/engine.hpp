// lru-deploy engines in a C++17 app: a header-only helper over the TensorRT runtime API (TensorRT 10 and 11).
//
//   lru_deploy::Engines eng("engines/default/h100-80gb-hbm3-fp32");   // checks GPU, TensorRT, I/O contract
//   eng.reset(1);                                                        // one sequence, zero state on the GPU
//   std::vector<float> logits = eng.prefill(ids, seq);                   // [1, seq, d_output] (split by max_seq)
//   logits = eng.step({next_id});                                        // [1, d_output]
//
// The state never leaves the GPU: each call reads one of two ping-pong buffers and writes the other (input and
// output never share a buffer). Tensor names, shapes and dtypes come from the folder's manifest.json (the I/O
// contract); every shape is checked against the engine's optimization profile before enqueue; the step is
// captured in a CUDA graph where the engine allows (one per ping-pong direction, each from an execution context
// of its own that stays bound to that direction's buffers). Errors throw
// lru_deploy::Error with a message that names the problem and the fix.
#pragma once

#include <NvInferRuntime.h>
#include <cuda_runtime_api.h>

#include <climits>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iostream>
#include <iterator>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "lru_deploy/manifest.hpp"

namespace lru_deploy {

// A CUDA error as the user can act on it. The runtime reports "driver version is insufficient" also where no
// driver is installed at all; cudaDriverGetVersion gives 0 then.
inline std::string cuda_message(cudaError_t e) {
    int driver = -1;
    if (cudaDriverGetVersion(&driver) == cudaSuccess && driver == 0)
        return "no NVIDIA driver is installed (the CUDA driver library could not be found)";
    if (e == cudaErrorInsufficientDriver && driver > 0)
        return "the NVIDIA driver supports CUDA " + std::to_string(driver / 1000) + "." +
               std::to_string(driver % 1000 / 10) + ", older than the CUDA runtime " +
               std::to_string(CUDART_VERSION / 1000) + "." + std::to_string(CUDART_VERSION % 1000 / 10) +
               " this program was built with: update the driver or build with an older CUDA toolkit";
    return cudaGetErrorString(e);
}

inline void cuda_check(cudaError_t e, const char* what) {
    if (e != cudaSuccess) throw Error(std::string("CUDA error in ") + what + ": " + cuda_message(e));
}

class TrtLogger : public nvinfer1::ILogger {
public:
    explicit TrtLogger(Severity level = Severity::kWARNING) : level_(level) {}
    void log(Severity severity, const char* msg) noexcept override {
        if (severity <= level_) std::cerr << "[TensorRT] " << msg << "\n";
    }

private:
    Severity level_;
};

// The running GPU and TensorRT, as compatibility_problems() compares them with the manifest.
inline RunningInfo running_info(int device) {
    cudaDeviceProp p{};
    cuda_check(cudaGetDeviceProperties(&p, device), "cudaGetDeviceProperties");
    const int v = getInferLibVersion();  // major * 10000 + minor * 100 + patch (TensorRT 10 and later)
    return {p.name, std::to_string(p.major) + "." + std::to_string(p.minor),
            std::to_string(v / 10000) + "." + std::to_string((v / 100) % 100) + "." + std::to_string(v % 100),
            current_platform()};
}

// A CUDA stream and a CUDA graph executable that free themselves, also when a constructor throws midway.
class Stream {
public:
    Stream() { cuda_check(cudaStreamCreateWithFlags(&s_, cudaStreamNonBlocking), "cudaStreamCreateWithFlags"); }
    ~Stream() {
        if (s_) cudaStreamDestroy(s_);
    }
    Stream(const Stream&) = delete;
    Stream& operator=(const Stream&) = delete;
    cudaStream_t get() const { return s_; }

private:
    cudaStream_t s_ = nullptr;
};

class GraphExec {
public:
    GraphExec() = default;
    ~GraphExec() { reset(); }
    GraphExec(const GraphExec&) = delete;
    GraphExec& operator=(const GraphExec&) = delete;
    void reset(cudaGraphExec_t e = nullptr) {
        if (e_) cudaGraphExecDestroy(e_);
        e_ = e;
    }
    cudaGraphExec_t get() const { return e_; }
    explicit operator bool() const { return e_ != nullptr; }

private:
    cudaGraphExec_t e_ = nullptr;
};

// Device memory that grows on demand; cudaMalloc's 256-byte alignment is what TensorRT requires.
class DeviceBuffer {
public:
    DeviceBuffer() = default;
    DeviceBuffer(const DeviceBuffer&) = delete;
    DeviceBuffer& operator=(const DeviceBuffer&) = delete;
    DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(o.ptr_), bytes_(o.bytes_) {
        o.ptr_ = nullptr;
        o.bytes_ = 0;
    }
    ~DeviceBuffer() {
        if (ptr_) cudaFree(ptr_);
    }
    void* ensure(size_t bytes) {
        if (bytes > bytes_ || !ptr_) {
            if (ptr_) cudaFree(ptr_);
            ptr_ = nullptr;
            bytes_ = 0;
            cuda_check(cudaMalloc(&ptr_, bytes < 256 ? 256 : bytes), "cudaMalloc");
            bytes_ = bytes;
        }
        return ptr_;
    }
    void* get() const { return ptr_; }

private:
    void* ptr_ = nullptr;
    size_t bytes_ = 0;
};

class Engines {
public:
    explicit Engines(const std::string& folder, int device = 0, bool cuda_graphs = true)
        : m_(Manifest::load(folder)), use_graphs_(cuda_graphs) {
        cuda_check(cudaSetDevice(device), "cudaSetDevice");
        stream_ = std::make_unique<Stream>();
        const std::vector<std::string> problems = compatibility_problems(m_, running_info(device));
        if (!problems.empty())
            throw Error(join_problems("engine folder " + folder + " cannot run here:", problems,
                                      "rebuild the engines on this machine: lru-deploy build " +
                                          (m_.export_dir.empty() ? std::string("EXPORT_DIR") : m_.export_dir)));
        runtime_.reset(nvinfer1::createInferRuntime(logger_));
        if (!runtime_) throw Error("TensorRT: createInferRuntime failed");
        if (m_.version_compatible) runtime_->setEngineHostCodeAllowed(true);  // a lean runtime rides in the plan
        load(graphs_[0], folder + "/" + m_.prefill_path, "prefill", m_.prefill);
        load(graphs_[1], folder + "/" + m_.step_path, "step", m_.step);
        x_name_ = m_.prefill.inputs.at(0).name;
        max_seq_ = graphs_[0].profile.at(x_name_).max.at(1);
        // The state buffers serve both graphs, so both must take the same batches (lru-deploy build gives them
        // one --batch range); each call is still checked against its own graph's profile.
        const std::pair<int64_t, int64_t> pb = batch_range(graphs_[0]), sb = batch_range(graphs_[1]);
        if (pb != sb)
            throw Error("the engines in " + folder + " take different batch sizes: prefill " +
                        std::to_string(pb.first) + ".." + std::to_string(pb.second) + ", step " +
                        std::to_string(sb.first) + ".." + std::to_string(sb.second) +
                        "; the state passes between them\nhint: build both from one range: lru-deploy build "
                        "EXPORT_DIR --batch MIN:OPT:MAX");
        max_batch_ = sb.second;
        for (size_t i = 1; i < m_.step.inputs.size(); ++i) {
            const TensorSpec& in = m_.step.inputs[i];
            if (m_.step.outputs.at(i).name != in.name + "_out")
                throw Error("manifest: state output " + m_.step.outputs[i].name + " does not pair with " + in.name);
            state_names_.push_back(in.name);
            state_row_.push_back(row_elems(in, 1));
        }
        slots_.resize(state_names_.size() * 2);
        for (size_t i = 0; i < state_names_.size(); ++i)
            for (int s = 0; s < 2; ++s) slot(i, s).ensure(static_cast<size_t>(max_batch_ * state_row_[i]) * 4);
    }

    ~Engines() {
        if (stream_) cudaStreamSynchronize(stream_->get());  // members then free themselves
    }
    Engines(const Engines&) = delete;
    Engines& operator=(const Engines&) = delete;

    const Manifest& manifest() const { return m_; }
    int64_t max_seq() const { return max_seq_; }      // longest prefill one call takes; longer ones are split
    int64_t max_batch() const { return max_batch_; }
    int64_t batch() const { return batch_; }

    // Start `batch` new sequences: the state (and mean pooling's sum and count) set to zero on the GPU.
    void reset(int64_t batch) {
        if (batch < 1 || batch > max_batch_)
            throw Error("batch " + std::to_string(batch) + " is outside the engines' profile 1.." +
                        std::to_string(max_batch_) + "\nhint: rebuild with lru-deploy build ... --batch 1:1:" +
                        std::to_string(batch));
        batch_ = batch;
        for (size_t i = 0; i < state_names_.size(); ++i)
            cuda_check(cudaMemsetAsync(slot(i, cur_).get(), 0, static_cast<size_t>(batch_ * state_row_[i]) * 4,
                                       stream()), "cudaMemsetAsync");
        cuda_check(cudaStreamSynchronize(stream()), "cudaStreamSynchronize");
    }

    // Token models: ids int64 [batch, seq] row-major -> outputs [batch, seq, d_output] (or [batch, d_output] when
    // the model pools or was exported with prefill outputs = last). The state carries on from the last call.
    std::vector<float> prefill(const std::vector<int64_t>& ids, int64_t seq) {
        require(m_.tokens(), "prefill(ids) needs a token model; this one takes float inputs (prefill_inputs)");
        return prefill_any(ids.data(), ids.size(), 1, seq);
    }
    // Continuous models: inputs float32 [batch, seq, d_input] row-major.
    std::vector<float> prefill_inputs(const std::vector<float>& inputs, int64_t seq) {
        require(!m_.tokens(), "prefill_inputs() needs a continuous-input model; this one takes token ids");
        return prefill_any(inputs.data(), inputs.size(), static_cast<size_t>(m_.d_input), seq);
    }
    // One position: ids int64 [batch] -> outputs [batch, d_output].
    std::vector<float> step(const std::vector<int64_t>& ids) {
        require(m_.tokens(), "step(ids) needs a token model; this one takes float inputs (step_inputs)");
        require(static_cast<int64_t>(ids.size()) == batch_, "step: want one id per sequence of the batch");
        return run(1, ids.data(), sizeof(int64_t), 1);
    }
    std::vector<float> step_inputs(const std::vector<float>& inputs) {
        require(!m_.tokens(), "step_inputs() needs a continuous-input model; this one takes token ids");
        require(static_cast<int64_t>(inputs.size()) == batch_ * m_.d_input, "step: want [batch, d_input] floats");
        return run(1, inputs.data(), sizeof(float) * static_cast<size_t>(m_.d_input), 1);
    }
    // The current state [batch, n_layers, 2, d_hidden], copied to the host (apps rarely need it).
    std::vector<float> state() {
        std::vector<float> h(static_cast<size_t>(batch_ * state_row_.at(0)));
        cuda_check(cudaMemcpyAsync(h.data(), slot(0, cur_).get(), h.size() * 4, cudaMemcpyDeviceToHost, stream()),
                   "cudaMemcpyAsync");
        cuda_check(cudaStreamSynchronize(stream()), "cudaStreamSynchronize");
        return h;
    }

private:
    // One engine. The step has one execution context per ping-pong direction (context[s] reads the state from
    // slot s and writes slot 1 - s), so each context stays bound to one set of addresses and the CUDA graph
    // captured from it stays valid; the prefill uses context[0] only. Contexts of one engine share its
    // optimization profile 0, which TensorRT allows for contexts that do not run concurrently (ours run in turn
    // on one stream).
    struct Graph {
        std::string name;
        std::unique_ptr<nvinfer1::ICudaEngine> engine;                // declared first: destroyed last
        std::unique_ptr<nvinfer1::IExecutionContext> context[2];
        Profile profile;  // read from the engine itself
        DeviceBuffer x, out;
        GraphExec exec[2];
        std::map<std::string, void*> exec_addrs[2];
        int64_t exec_batch = -1;
    };

    TrtLogger logger_;
    Manifest m_;
    std::unique_ptr<Stream> stream_;
    std::unique_ptr<nvinfer1::IRuntime> runtime_;
    Graph graphs_[2];
    std::string x_name_;
    std::vector<std::string> state_names_;
    std::vector<int64_t> state_row_;
    std::vector<DeviceBuffer> slots_;  // [state tensor i][ping-pong s] at 2 * i + s
    int cur_ = 0;                      // the slot holding the latest state
    int64_t max_seq_ = 0, max_batch_ = 0, batch_ = 0;
    bool use_graphs_;

    // The batch sizes every input of a graph's profile admits (axis 0 of each).
    static std::pair<int64_t, int64_t> batch_range(const Graph& g) {
        int64_t lo = 0, hi = INT64_MAX;
        for (const auto& kv : g.profile) {
            lo = std::max(lo, kv.second.min.at(0));
            hi = std::min(hi, kv.second.max.at(0));
        }
        return {lo, hi};
    }
    cudaStream_t stream() const { return stream_->get(); }
    static void require(bool ok, const std::string& msg) {
        if (!ok) throw Error(msg);
    }
    DeviceBuffer& slot(size_t i, int s) { return slots_[2 * i + static_cast<size_t>(s)]; }

    // Elements per batch row of a tensor, `seq` standing for the seq axis.
    static int64_t row_elems(const TensorSpec& t, int64_t seq) {
        int64_t n = 1;
        for (size_t a = 1; a < t.shape.size(); ++a) n *= t.shape[a] == "seq" ? seq : std::stoll(t.shape[a]);
        return n;
    }
    std::vector<int64_t> dims_of(const TensorSpec& t, int64_t seq) const {
        std::vector<int64_t> d;
        for (const auto& s : t.shape) d.push_back(s == "batch" ? batch_ : s == "seq" ? seq : std::stoll(s));
        return d;
    }
    static nvinfer1::Dims to_dims(const std::vector<int64_t>& v) {
        nvinfer1::Dims d{};
        d.nbDims = static_cast<int32_t>(v.size());
        for (size_t i = 0; i < v.size(); ++i) d.d[i] = static_cast<decltype(d.d[0] + 0)>(v[i]);
        return d;
    }
    static std::vector<int64_t> from_dims(const nvinfer1::Dims& d) {
        return std::vector<int64_t>(d.d, d.d + d.nbDims);
    }

    void load(Graph& g, const std::string& path, const std::string& name, const GraphContract& c) {
        g.name = name;
        std::ifstream f(path, std::ios::binary);
        if (!f) throw Error("cannot read " + path + "\nhint: the engine folder is incomplete; build it again");
        std::vector<char> blob((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
        g.engine.reset(runtime_->deserializeCudaEngine(blob.data(), blob.size()));
        if (!g.engine)
            throw Error("TensorRT could not deserialize " + path + "\nhint: rebuild the engines on this machine");
        std::vector<std::string> problems;
        std::map<std::string, std::pair<bool, nvinfer1::DataType>> io;
        for (int32_t i = 0; i < g.engine->getNbIOTensors(); ++i) {
            const char* n = g.engine->getIOTensorName(i);
            io[n] = {g.engine->getTensorIOMode(n) == nvinfer1::TensorIOMode::kINPUT, g.engine->getTensorDataType(n)};
        }
        auto want = [&](const TensorSpec& t, bool input) {
            auto it = io.find(t.name);
            if (it == io.end()) {
                problems.push_back(name + ": no tensor " + t.name);
                return;
            }
            if (it->second.first != input) problems.push_back(name + ": " + t.name + " has the wrong direction");
            nvinfer1::DataType dt = t.dtype == "int64" ? nvinfer1::DataType::kINT64 : nvinfer1::DataType::kFLOAT;
            if (it->second.second != dt) problems.push_back(name + ": " + t.name + " is not " + t.dtype);
            io.erase(it);
        };
        for (const auto& t : c.inputs) want(t, true);
        for (const auto& t : c.outputs) want(t, false);
        for (const auto& kv : io) problems.push_back(name + ": unexpected tensor " + kv.first);
        if (!problems.empty())
            throw Error(join_problems("the " + name + " engine does not follow the I/O contract of its manifest:",
                                      problems, "build the engines again from a current export"));
        for (int k = 0; k < (name == "step" ? 2 : 1); ++k) {
            g.context[k].reset(g.engine->createExecutionContext());
            if (!g.context[k]) throw Error("TensorRT could not create an execution context (out of GPU memory?)");
        }
        for (const auto& t : c.inputs) {
            const char* n = t.name.c_str();
            g.profile[t.name] = {from_dims(g.engine->getProfileShape(n, 0, nvinfer1::OptProfileSelector::kMIN)),
                                 from_dims(g.engine->getProfileShape(n, 0, nvinfer1::OptProfileSelector::kOPT)),
                                 from_dims(g.engine->getProfileShape(n, 0, nvinfer1::OptProfileSelector::kMAX))};
        }
    }

    template <typename T>
    std::vector<float> prefill_any(const T* data, size_t n, size_t per_pos, int64_t seq) {
        require(batch_ > 0, "call reset(batch) before prefill");
        require(seq >= 1 && n == static_cast<size_t>(batch_ * seq) * per_pos,
                "prefill: want batch * seq" + std::string(per_pos > 1 ? " * d_input" : "") + " values");
        const bool per_position = m_.prefill.outputs.at(0).shape.size() == 3;
        const size_t d_out = static_cast<size_t>(m_.d_output);
        std::vector<float> result(per_position ? static_cast<size_t>(batch_ * seq) * d_out : 0);
        std::vector<T> chunk;
        for (int64_t start = 0; start < seq; start += max_seq_) {
            const int64_t c = std::min(max_seq_, seq - start);
            chunk.resize(static_cast<size_t>(batch_ * c) * per_pos);
            for (int64_t b = 0; b < batch_; ++b)
                std::memcpy(chunk.data() + static_cast<size_t>(b * c) * per_pos,
                            data + static_cast<size_t>(b * seq + start) * per_pos,
                            static_cast<size_t>(c) * per_pos * sizeof(T));
            std::vector<float> o = run(0, chunk.data(), per_pos * sizeof(T), c);
            if (!per_position) {
                result = std::move(o);  // pooled: the last call covers the whole sequence
                continue;
            }
            for (int64_t b = 0; b < batch_; ++b)
                std::memcpy(result.data() + static_cast<size_t>(b * seq + start) * d_out,
                            o.data() + static_cast<size_t>(b * c) * d_out, static_cast<size_t>(c) * d_out * 4);
        }
        return result;
    }

    // One enqueue of graph gi (0 prefill, 1 step) on x_host [batch, seq] positions of pos_bytes each.
    std::vector<float> run(int gi, const void* x_host, size_t pos_bytes, int64_t seq) {
        require(batch_ > 0, "call reset(batch) first");
        Graph& g = graphs_[gi];
        const GraphContract& c = gi == 0 ? m_.prefill : m_.step;
        std::map<std::string, std::vector<int64_t>> shapes;
        for (const auto& t : c.inputs) shapes[t.name] = dims_of(t, seq);
        std::vector<std::string> problems = profile_problems(g.name, g.profile, shapes);
        if (!problems.empty())
            throw Error(join_problems("shapes outside the " + g.name + " engine's optimization profile:", problems,
                                      "send smaller batches or rebuild with a wider --batch/--seq range"));
        const int in = cur_, out = 1 - cur_;
        const int64_t rows = gi == 0 ? batch_ : max_batch_;  // step buffers never move: CUDA graphs stay valid
        std::map<std::string, void*> addrs;
        addrs[x_name_] = g.x.ensure(static_cast<size_t>(rows * seq) * pos_bytes);
        cuda_check(cudaMemcpyAsync(addrs[x_name_], x_host, static_cast<size_t>(batch_ * seq) * pos_bytes,
                                   cudaMemcpyHostToDevice, stream()), "cudaMemcpyAsync");
        const TensorSpec& o = c.outputs.at(0);
        const size_t out_elems = static_cast<size_t>(batch_ * row_elems(o, seq));
        addrs[o.name] = g.out.ensure(static_cast<size_t>(rows * row_elems(o, seq)) * 4);
        for (size_t i = 0; i < state_names_.size(); ++i) {
            addrs[state_names_[i]] = slot(i, in).get();
            addrs[state_names_[i] + "_out"] = slot(i, out).get();
        }
        execute(g, shapes, addrs, in);
        std::vector<float> host(out_elems);
        cuda_check(cudaMemcpyAsync(host.data(), addrs[o.name], out_elems * 4, cudaMemcpyDeviceToHost, stream()),
                   "cudaMemcpyAsync");
        cuda_check(cudaStreamSynchronize(stream()), "cudaStreamSynchronize");
        cur_ = out;
        return host;
    }

    void execute(Graph& g, const std::map<std::string, std::vector<int64_t>>& shapes,
                 const std::map<std::string, void*>& addrs, int in) {
        const bool graph = use_graphs_ && g.name == "step";
        nvinfer1::IExecutionContext& ctx = *g.context[g.name == "step" ? in : 0];
        if (graph) {
            if (g.exec_batch != batch_) {  // a CUDA graph holds the shapes it was captured with
                for (auto& e : g.exec) e.reset();
                g.exec_batch = batch_;
            }
            if (g.exec[in] && g.exec_addrs[in] == addrs) {  // ctx is still bound to exactly these addresses
                cuda_check(cudaGraphLaunch(g.exec[in].get(), stream()), "cudaGraphLaunch");
                return;
            }
        }
        for (const auto& kv : shapes)
            if (!ctx.setInputShape(kv.first.c_str(), to_dims(kv.second)))
                throw Error("TensorRT refused the shape of " + kv.first + " for the " + g.name + " engine");
        for (const auto& kv : addrs)
            if (!ctx.setTensorAddress(kv.first.c_str(), kv.second))
                throw Error("TensorRT refused the buffer of " + kv.first + " for the " + g.name + " engine");
        if (!ctx.enqueueV3(stream()))
            throw Error("TensorRT failed to run the " + g.name + " engine (see TensorRT's messages above)");
        if (!graph) return;
        // As trtexec does: one plain enqueue with these shapes and addresses (above), finished before the capture.
        cuda_check(cudaStreamSynchronize(stream()), "cudaStreamSynchronize");
        cuda_check(cudaStreamBeginCapture(stream(), cudaStreamCaptureModeThreadLocal), "cudaStreamBeginCapture");
        const bool ok = ctx.enqueueV3(stream());
        cudaGraph_t captured = nullptr;
        const cudaError_t end = cudaStreamEndCapture(stream(), &captured);
        cudaGraphExec_t exec = nullptr;
        if (ok && end == cudaSuccess && captured && cudaGraphInstantiateWithFlags(&exec, captured, 0) == cudaSuccess) {
            g.exec[in].reset(exec);
            g.exec_addrs[in] = addrs;
        } else {
            cudaGetLastError();  // clear the capture error; step with plain enqueues from now on
            use_graphs_ = false;
            std::cerr << "lru_deploy: the step engine cannot be captured in a CUDA graph; using plain enqueues\n";
        }
        if (captured) cudaGraphDestroy(captured);
    }
};

}  // namespace lru_deploy
