// The one Catch2 main of the project, compiled once. Besides running the
// tests it appends "PASSED FAILED" (test cases) to the file named by
// $TEST_TALLY, so `make test` can add up every binary's counts.
#include <signal.h>

#include <cstdio>
#include <cstdlib>

#if __has_include(<catch2/catch_all.hpp>)
#include <catch2/catch_all.hpp>
using ListenerBase = Catch::EventListenerBase;
#else
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>
using ListenerBase = Catch::TestEventListenerBase;
#endif

namespace {

class TallyListener : public ListenerBase {
public:
    using ListenerBase::ListenerBase;

    void testRunEnded(Catch::TestRunStats const& stats) override {
        const char* path = std::getenv("TEST_TALLY");
        if (path == nullptr || *path == '\0') return;
        if (std::FILE* f = std::fopen(path, "a")) {
            std::fprintf(f, "%llu %llu\n", static_cast<unsigned long long>(stats.totals.testCases.passed),
                         static_cast<unsigned long long>(stats.totals.testCases.failed));
            std::fclose(f);
        }
    }
};

}  // namespace

CATCH_REGISTER_LISTENER(TallyListener)

int main(int argc, char* argv[]) {
    // A server that closes on us must fail a test, not kill the test binary.
    signal(SIGPIPE, SIG_IGN);
    return Catch::Session().run(argc, argv);
}
