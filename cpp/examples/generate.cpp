// Generate text with the bundled byte-level model's TensorRT engines:
//
//   lru_generate ENGINE_DIR [--prompt TEXT] [--max-new-tokens N] [--temperature T] [--top-k K] [--seed S]
//                [--no-cuda-graph]
//
// The prompt's UTF-8 bytes are the token ids; one prefill call (split by the engine's max seq if longer),
// then one step per new byte with the state left on the GPU. Standard output carries the prompt and the
// generated text; timings go to standard error. Sampling uses std::mt19937_64, so for the same seed the text
// differs from the Python runtime's (numpy's generator); with --temperature 0 (greedy) it should agree.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <iostream>
#include <random>
#include <string>
#include <vector>

#include "lru_deploy/engine.hpp"

namespace {

int64_t sample(const float* logits, int64_t n, double temperature, int top_k, std::mt19937_64& rng) {
    const double u = std::uniform_real_distribution<double>(0.0, 1.0)(rng);  // drawn every time
    if (temperature <= 0) return std::max_element(logits, logits + n) - logits;
    std::vector<double> z(logits, logits + n);
    for (auto& v : z) v /= temperature;
    if (top_k > 0 && top_k < n) {
        std::vector<double> sorted(z);
        std::nth_element(sorted.begin(), sorted.begin() + (n - top_k), sorted.end());
        const double kth = sorted[static_cast<size_t>(n - top_k)];
        for (auto& v : z)
            if (v < kth) v = -INFINITY;
    }
    const double mx = *std::max_element(z.begin(), z.end());
    double total = 0;
    for (auto& v : z) total += (v = std::exp(v - mx));
    double acc = 0;
    for (int64_t i = 0; i < n; ++i) {
        acc += z[static_cast<size_t>(i)] / total;
        if (u < acc) return i;
    }
    return n - 1;
}

double ms_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

int main(int argc, char** argv) {
    std::string dir, prompt = "def ";
    int max_new = 200, top_k = 20;
    double temperature = 0.8;
    unsigned long long seed = 0;
    bool graphs = true;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        auto next = [&]() -> std::string {
            if (i + 1 >= argc) {
                std::cerr << "error: " << a << " needs a value\n";
                std::exit(2);
            }
            return argv[++i];
        };
        if (a == "--prompt") prompt = next();
        else if (a == "--max-new-tokens") max_new = std::stoi(next());
        else if (a == "--temperature") temperature = std::stod(next());
        else if (a == "--top-k") top_k = std::stoi(next());
        else if (a == "--seed") seed = std::stoull(next());
        else if (a == "--no-cuda-graph") graphs = false;
        else if (dir.empty() && a.rfind("--", 0) != 0) dir = a;
        else {
            std::cerr << "error: unknown argument " << a << "\n";
            return 2;
        }
    }
    if (dir.empty()) {
        std::cerr << "usage: lru_generate ENGINE_DIR [--prompt TEXT] [--max-new-tokens N] [--temperature T] "
                     "[--top-k K] [--seed S] [--no-cuda-graph]\n";
        return 2;
    }
    try {
        auto t0 = std::chrono::steady_clock::now();
        lru_deploy::Engines eng(dir, 0, graphs);
        const lru_deploy::Manifest& m = eng.manifest();
        if (!m.tokens() || m.pooling != "none")
            throw lru_deploy::Error("this example needs a token model with pooling none (like the bundled model)");
        if (prompt.empty()) throw lru_deploy::Error("the prompt is empty");
        const double load_ms = ms_since(t0);
        std::vector<int64_t> ids;
        for (unsigned char c : prompt) ids.push_back(c);
        const int64_t seq = static_cast<int64_t>(ids.size());
        std::mt19937_64 rng(seed);
        eng.reset(1);
        t0 = std::chrono::steady_clock::now();
        std::vector<float> logits = eng.prefill(ids, seq);
        const double prefill_ms = ms_since(t0);
        const float* last = logits.data() + (logits.size() > static_cast<size_t>(m.d_output)
                                                 ? static_cast<size_t>(seq - 1) * static_cast<size_t>(m.d_output) : 0);
        std::cout << prompt << std::flush;
        t0 = std::chrono::steady_clock::now();
        for (int i = 0; i < max_new; ++i) {
            const int64_t tok = sample(last, m.d_output, temperature, top_k, rng);
            std::cout << static_cast<char>(tok) << std::flush;
            if (i + 1 < max_new) {
                logits = eng.step({tok});
                last = logits.data();
            }
        }
        const double gen_ms = ms_since(t0);
        std::cout << "\n";
        std::cerr << "engines " << dir << " (" << m.precision << ", " << m.gpu_name << "): loaded in " << load_ms
                  << " ms; prefill " << seq << " tokens in " << prefill_ms << " ms; " << max_new << " new tokens in "
                  << gen_ms << " ms (" << (max_new > 0 ? 1000.0 * max_new / gen_ms : 0.0) << " tokens/s, "
                  << (max_new > 1 ? 1000.0 * gen_ms / max_new : 0.0) << " us per token incl. sampling)\n";
    } catch (const std::exception& e) {
        std::cerr << "error: " << e.what() << "\n";
        return 1;
    }
    return 0;
}
