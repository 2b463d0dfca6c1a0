// The engine compatibility rules of manifest.hpp (no TensorRT or CUDA needed):
//
//   compat_test                 the rule table below
//   compat_test ENGINE_DIR      also: that folder's manifest, which must hold a four-part TensorRT version as
//                               Python writes it ("10.13.0.35"), runs on the same release as running_info()
//                               formats it ("10.13.0", from getInferLibVersion()) on the same GPU and platform
//
// Prints one line per failed case and exits 1 if any failed; tests/test_cpp.py runs both forms.
#include <iostream>
#include <string>
#include <vector>

#include "lru_deploy/manifest.hpp"

namespace {

int failures = 0;

void expect(bool ok, const std::string& what) {
    if (!ok) {
        ++failures;
        std::cout << "FAIL: " << what << "\n";
    }
}

// version_problem(built, running, version_compatible) is empty (runs) or names the reason (refused).
void version_case(const std::string& built, const std::string& running, bool vc, bool runs, const std::string& want) {
    const std::string why = lru_deploy::version_problem(built, running, vc);
    const std::string what = built + " -> " + running + (vc ? " (version-compatible)" : "");
    if (runs)
        expect(why.empty(), what + " should run, got: " + why);
    else
        expect(!why.empty() && why.find(want) != std::string::npos,
               what + " should be refused with \"" + want + "\", got: \"" + why + "\"");
}

lru_deploy::Manifest manifest(const std::string& trt, bool vc, const std::string& platform) {
    lru_deploy::Manifest m;
    m.gpu_name = "NVIDIA H100 80GB HBM3";
    m.compute_capability = "9.0";
    m.trt_version = trt;
    m.hardware_compat = "none";
    m.version_compatible = vc;
    m.platform = platform;
    return m;
}

}  // namespace

int main(int argc, char** argv) {
    using lru_deploy::compatibility_problems;
    // like with like: Python's four parts against getInferLibVersion()'s three
    version_case("10.13.0.35", "10.13.0", false, true, "");
    version_case("10.13.0.35", "10.13.0", true, true, "");
    version_case("10.13.0", "10.13.0.35", false, true, "");
    version_case("10.13.0.35", "10.13.1", false, false, "runs only with the TensorRT release that built it");
    version_case("10.13.0.35", "10.14.1", true, true, "");
    version_case("10.13.0.35", "10.12.0", true, false, "is older than");
    version_case("10.13.0.35", "10.13.0", false, true, "");
    // across majors only 8 -> 10 and 10 -> 11, and only version-compatible engines
    version_case("8.6.1.6", "10.3.0", true, true, "");
    version_case("10.3.0.26", "11.0.0", true, true, "");
    version_case("8.6.1.6", "11.1.0", true, false, "across majors only for 8 -> 10, 10 -> 11");
    version_case("8.6.1.6", "9.3.0", true, false, "across majors only");
    version_case("10.3.0.26", "11.0.0", false, false, "runs only with the TensorRT release");
    version_case("11.0.0.114", "10.16.1", true, false, "is older than");
    version_case("8.5.3.1", "8.6.1", true, false, "starts at 8.6");

    // the platform, as Python's compatibility_problems checks it
    const lru_deploy::RunningInfo here{"NVIDIA H100 80GB HBM3", "9.0", "10.13.0", "linux-x86_64"};
    expect(compatibility_problems(manifest("10.13.0.35", false, "linux-x86_64"), here).empty(),
           "the same GPU, release and platform should run");
    const std::vector<std::string> p = compatibility_problems(manifest("10.13.0.35", false, "linux-aarch64"), here);
    expect(p.size() == 1 && p[0].find("not portable across platforms") != std::string::npos,
           "another platform should be refused (and only for that)");
    expect(compatibility_problems(manifest("10.13.0.35", false, ""), here).empty(),
           "a manifest without a platform is not compared");

    if (argc == 2) {
        try {
            const lru_deploy::Manifest m = lru_deploy::Manifest::load(argv[1]);
            const std::vector<int> v = lru_deploy::version_numbers(m.trt_version);
            expect(v.size() == 4, "the manifest's TensorRT version " + m.trt_version + " should have four parts");
            const std::string three = std::to_string(v.at(0)) + "." + std::to_string(v.at(1)) + "." +
                                      std::to_string(v.at(2));
            const lru_deploy::RunningInfo same{m.gpu_name, m.compute_capability, three, m.platform};
            const std::vector<std::string> q = compatibility_problems(m, same);
            expect(q.empty(), "the folder should run on TensorRT " + three + ": " +
                                  lru_deploy::join_problems("refused:", q));
            std::cout << "manifest " << m.trt_version << " on running " << three << ": "
                      << (q.empty() ? "ok" : "refused") << "\n";
        } catch (const std::exception& e) {
            expect(false, std::string("reading the manifest: ") + e.what());
        }
    }
    std::cout << (failures ? std::to_string(failures) + " failed" : std::string("all passed")) << "\n";
    return failures ? 1 : 0;
}
