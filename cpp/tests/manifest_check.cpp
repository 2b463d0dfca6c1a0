// Reads an engine folder's manifest with manifest.hpp (no TensorRT needed) and prints what an app would use,
// one key=value per line; tests/test_engines.py compares it with the manifest that Python wrote.
#include <iostream>

#include "lru_deploy/manifest.hpp"

namespace {

std::string names(const std::vector<lru_deploy::TensorSpec>& ts) {
    std::string s;
    for (const auto& t : ts) s += (s.empty() ? "" : ",") + t.name;
    return s;
}

std::string verdict(const std::vector<std::string>& problems) {
    return problems.empty() ? "ok" : lru_deploy::join_problems("refused:", problems);
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 2) {
        std::cerr << "usage: manifest_check ENGINE_DIR\n";
        return 2;
    }
    try {
        using namespace lru_deploy;
        Manifest m = Manifest::load(argv[1]);
        std::cout << "inputs.prefill=" << names(m.prefill.inputs) << "\n"
                  << "outputs.prefill=" << names(m.prefill.outputs) << "\n"
                  << "inputs.step=" << names(m.step.inputs) << "\n"
                  << "outputs.step=" << names(m.step.outputs) << "\n"
                  << "state_shape=" << m.n_layers << "x2x" << m.d_hidden << "\n"
                  << "vocab_size=" << m.vocab_size << "\n"
                  << "d_output=" << m.d_output << "\n"
                  << "prefill_path=" << m.prefill_path << "\n"
                  << "max_seq=" << m.max_seq << "\n"
                  << "max_batch=" << m.max_batch << "\n"
                  << "gpu=" << m.gpu_name << "\n"
                  << "compute_capability=" << m.compute_capability << "\n"
                  << "tensorrt=" << m.trt_version << "\n"
                  << "hardware_compat=" << m.hardware_compat << "\n"
                  << "platform=" << m.platform << "\n";
        std::string same = verdict(compatibility_problems(m, {m.gpu_name, m.compute_capability, m.trt_version, m.platform}));
        std::string t4 = verdict(compatibility_problems(m, {"Tesla T4", "7.5", m.trt_version, m.platform}));
        for (auto& c : t4)
            if (c == '\n') c = ' ';
        std::cout << "compat_same=" << same << "\n" << "compat_t4=" << t4 << "\n";
        const std::string x = m.prefill.inputs.at(0).name;
        std::vector<int64_t> st{m.max_batch, m.n_layers, 2, m.d_hidden};
        std::cout << "profile_ok="
                  << verdict(profile_problems("prefill", m.prefill_profile, {{x, {m.max_batch, m.max_seq}}, {"state", st}}))
                  << "\n";
        std::string bad = verdict(profile_problems("prefill", m.prefill_profile, {{x, {m.max_batch + 1, 1}}}));
        for (auto& c : bad)
            if (c == '\n') c = ' ';
        std::cout << "profile_bad=" << bad << "\n";
    } catch (const std::exception& e) {
        std::cerr << "error: " << e.what() << "\n";
        return 1;
    }
    return 0;
}
