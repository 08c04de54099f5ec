// What the behaviour suite and its LD_PRELOAD library (accept_shim.cpp)
// share: a small file, mapped by both, through which the test makes the
// server's accept4 fail on demand and reads how often the server called it.
#pragma once

#include <atomic>
#include <cstdint>

namespace accept_shim {

// The variable naming the control file in the server's environment.
inline constexpr const char* kControlVariable = "ACCEPT_SHIM_CONTROL";

// The control file's contents. Lock-free atomics work across processes that
// map the same file (MAP_SHARED).
struct Control {
    std::atomic<std::int32_t> fail_with{0};  // errno for accept4 to fail with; 0: call the real accept4
    std::atomic<std::uint64_t> failed{0};    // calls answered with fail_with
    std::atomic<std::uint64_t> passed{0};    // calls handed to the real accept4
};
static_assert(std::atomic<std::int32_t>::is_always_lock_free && std::atomic<std::uint64_t>::is_always_lock_free);

}  // namespace accept_shim
