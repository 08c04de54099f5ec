// An LD_PRELOAD library for the behaviour suite: accept4(2) that fails with
// a chosen errno while the test says so, and calls the real one otherwise.
//
// It shows the server a kernel short of memory (ENOBUFS, ENOMEM) or of
// descriptors (EMFILE) without making the machine short of anything. The
// client stays in the listen backlog, as it would for real: a server that
// retried at once would spin. The test names a control file in
// $ACCEPT_SHIM_CONTROL (accept_shim.hpp); without it this library does nothing.
//
// Built without sanitizers, and loaded into sanitized servers too: there the
// sanitizer's own accept4 interceptor is what dlsym(RTLD_NEXT) finds, and
// the test sets ASAN_OPTIONS=verify_asan_link_order=0 (ASan otherwise
// refuses to start when a preloaded library comes before its runtime).
#include <dlfcn.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "accept_shim.hpp"

namespace {

using Accept4 = int (*)(int, sockaddr*, socklen_t*, int);

// A broken test setup must not pass for a server that never failed: say why, and abort.
[[noreturn]] void die(const char* call, const char* what) {
    std::fprintf(stderr, "accept_shim: %s %s: %s\n", call, what, std::strerror(errno));
    std::abort();
}

accept_shim::Control* open_control() {
    const char* path = std::getenv(accept_shim::kControlVariable);
    if (!path || !*path) return nullptr;
    const int fd = ::open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0) die("open", path);
    void* mapped = ::mmap(nullptr, sizeof(accept_shim::Control), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (mapped == MAP_FAILED) die("mmap", path);
    ::close(fd);  // the mapping stays (never unmapped: it lives as long as the process)
    return static_cast<accept_shim::Control*>(mapped);
}

Accept4 real_accept4() {
    void* next = ::dlsym(RTLD_NEXT, "accept4");
    if (!next) {
        std::fprintf(stderr, "accept_shim: dlsym(RTLD_NEXT, \"accept4\"): %s\n", ::dlerror());
        std::abort();
    }
    return reinterpret_cast<Accept4>(next);
}

}  // namespace

extern "C" int accept4(int fd, sockaddr* address, socklen_t* length, int flags) {
    // Looked up on the first call (thread-safe statics), long after the
    // dynamic loader and any sanitizer runtime have started.
    static accept_shim::Control* const control = open_control();
    static const Accept4 next = real_accept4();
    if (control) {
        if (const int error = control->fail_with.load(); error != 0) {
            control->failed.fetch_add(1);
            errno = error;
            return -1;
        }
        control->passed.fetch_add(1);
    }
    return next(fd, address, length, flags);
}
